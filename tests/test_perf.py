"""`benchmark perf` machinery: interleaving, medians, measure selection, the result files. No timing assertions
(performance is measured by the command, never by tests)."""
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from benchmark.errors import UserError
from benchmark.perf import end_to_end, parse_measures, report, timing

REPO = Path(__file__).resolve().parent.parent


def test_round_orders_rotate_so_no_side_always_runs_first():
    orders = timing.round_orders(["a", "b", "c"], 6)
    assert all(sorted(o) == ["a", "b", "c"] for o in orders)
    assert [o[0] for o in orders] == ["a", "b", "c", "a", "b", "c"]


def test_interleave_times_every_callable_per_round_in_rotating_order(monkeypatch):
    clock, calls = [0.0], []

    def fake_clock():
        return clock[0]

    def work(name, seconds):
        def f():
            calls.append(name)
            clock[0] += seconds
        return f

    monkeypatch.setattr(timing.time, "perf_counter", fake_clock)
    samples = timing.interleave({"fast": work("fast", 1.0), "slow": work("slow", 3.0)}, repeats=4, warmup=1,
                                per_call={"slow": 3})
    assert calls == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2     # warm-up, then rotating rounds
    assert samples == {"fast": [1.0] * 4, "slow": [1.0] * 4}                    # seconds per step
    with pytest.raises(ValueError):
        timing.interleave({"x": lambda: None}, repeats=0)


def test_summary_and_ratio_use_medians_and_minimums():
    assert timing.summary([0.3, 0.1, 0.2, 0.9]) == {"median_ms": 250.0, "min_ms": 100.0, "n": 4}
    assert timing.ratio([2.0, 4.0, 6.0], [4.0, 8.0, 1.0]) == {"median": 1.0, "min": 2.0}


def test_measures_are_validated():
    assert parse_measures("all") == ["p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    assert parse_measures("p3, P1") == ["p1", "p3"]
    for bad in ("p9", "", "p1,x"):
        with pytest.raises(UserError, match="--measures"):
            parse_measures(bad)


def test_masking_fit_recovers_fixed_cost():
    from benchmark.perf.masking import linear_fit
    fixed, rate = linear_fit([10.0, 5.0, 2.5], [120.0, 70.0, 45.0])
    assert fixed == pytest.approx(20.0) and rate == pytest.approx(10.0)


def test_tiny_p1_run_writes_wellformed_json_and_markdown(tmp_path):
    from benchmark import perf
    code = perf.main(Namespace(out=str(tmp_path / "out"), measures="p1,p7", repeats=1, scale="smoke",
                               scratch=str(tmp_path / "scratch")))
    assert code == 0
    data = json.loads((tmp_path / "out" / "perf.json").read_text())
    p1 = data["measures"]["p1"]
    assert p1["maskbench"]["n"] == 1 and p1["open_clip_train"]["n"] == 1
    assert p1["maskbench"]["median_ms"] > 0 and p1["ratio"]["median"] > 0
    assert isinstance(p1["met"], bool)
    assert data["device"]["torch_threads"] == torch.get_num_threads() and data["device"]["cpu"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in data["measures"]["p7"]["skipped"]
    md = (tmp_path / "out" / "perf.md").read_text()
    assert "## P1 trainer speed" in md and "open_clip_train.train.train_one_epoch" in md
    assert "## P7 GPU" in md and data["device"]["cpu"] in md


def test_bad_repeats_is_a_user_error(tmp_path):
    from benchmark import perf
    with pytest.raises(UserError, match="--repeats"):
        perf.main(Namespace(out=str(tmp_path), measures="p1", repeats=0, scale="smoke", scratch=None))


def test_selection_probes_time_only_the_masking_methods_selection(tmp_path):
    from benchmark.discovery import build_method
    from benchmark.perf import harness
    from benchmark.scales import get_scale
    scale, dev = get_scale("smoke"), torch.device("cpu")
    batch = harness.synthetic_pairs(scale, 64).batch(0, 8, 0, dev)
    assert build_method("clip", scale, device=dev).selection_probe(batch, 0.0) is None
    cm = build_method("cluster_masking", scale, device=dev)
    label, call = cm.selection_probe(batch, 0.0)
    sel = call()
    assert "select" in label and sel.keep.shape[0] == 8
    weers = build_method("maskclip_weers", scale, device=dev)
    label, call = weers.selection_probe(batch, 0.0)
    keep, scores = call()
    assert "choose_keep" in label and keep.shape[0] == 8 and scores.shape == (8, weers.n_patches)


def test_end_to_end_breakdown_reads_run_folders_and_the_timing_line(tmp_path):
    assert end_to_end.parse_timing("x\ntiming: data 12.5 s, runs 300.0 s, report 4.2 s\n") == \
        {"data_s": 12.5, "runs_s": 300.0, "report_s": 4.2}
    assert end_to_end.parse_timing("no timing here") == {}
    folder = tmp_path / "pocket" / "clip" / "seed0"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps({"method": "clip", "seed": 0, "history": [{}, {}],
                                                     "compute": {"wall_time_s": 30.0, "steps": 300},
                                                     "evals": {"eval_time_s": 5.0}}))
    import os
    os.utime(folder / "config.json", (1000.0, 1000.0))
    os.utime(folder / "metrics.json", (1040.0, 1040.0))
    (row,) = end_to_end.run_breakdown(tmp_path, "pocket")
    assert row["ms_per_step"] == 100.0 and row["run_s"] == 40.0 and row["overhead_s"] == 5.0
    assert row["periodic_evals"] == 2


def test_report_renders_every_measure_and_failures():
    rep = {"device": {"cpu": "Some CPU", "cpu_cores": 2, "torch": "2", "torch_threads": 2, "device": "cpu"},
           "command": "perf", "elapsed_s": 1.0, "measures": {
               "p4": {"goal": "g", "speedup": {"median": 1.7}, "seconds": 2.0},
               "p5": {"command": "run", "exit_status": 0, "total_s": 500.0, "goal_s": 600, "met": True,
                      "phases": {"data_s": 10.0, "report_s": 3.0}, "totals": {"train_s": 400.0}, "runs": []},
               "p6": {"error": "RuntimeError: boom"},
               "p7": {"skipped": "no CUDA device"}}}
    md = report.render(rep)
    assert "speedup.median | 1.7" in md and "**500 s**" in md and "Failed: `RuntimeError: boom`" in md
    assert "Skipped: no CUDA device" in md


@pytest.mark.slow
def test_memory_child_reports_peak_rss_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-m", "benchmark.perf.memory", "clip", "--scale", "smoke", "--steps", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["method"] == "clip" and row["peak_rss_mib"] >= row["rss_before_model_mib"] > 0


def test_mfu_uses_the_named_devices_peak_and_counted_flops():
    from benchmark.perf import gpu
    assert gpu.peak_bf16("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_bf16("NVIDIA L40S") == 362e12 and gpu.peak_bf16("NVIDIA L4") == 121e12
    assert gpu.peak_bf16("Some Future Accelerator") is None
    # the GPU code path, run on the CPU at smoke scale with a named device
    out = gpu.mfu(torch.device("cpu"), repeats=1, batch_size=4, scale_name="smoke",
                  device_name="NVIDIA H100 80GB HBM3")
    assert out["flops_per_step"] > 0 and 0 < out["mfu"] < 1 and out["met"] is False
    assert out["mfu"] == pytest.approx(out["flops_per_step"] / (out["step"]["median_ms"] / 1e3) / 989.4e12, rel=1e-3)


def test_report_renders_gpu_results():
    m = {"device": "NVIDIA H100 80GB HBM3", "batch": 256, "precision": "bf16", "step": {"median_ms": 300.0,
         "min_ms": 290.0, "n": 5}, "tflop_per_step": 140.0, "achieved_tflops": 466.7, "peak_bf16_tflops": 989.4,
         "mfu": 0.4717, "mfu_best": 0.49, "met": True}
    rep = {"device": {"cpu": "c", "cpu_cores": 16, "torch": "2", "torch_threads": 16, "device": "cuda",
                      "gpu": "NVIDIA H100 80GB HBM3"}, "command": "perf", "elapsed_s": 1.0,
           "measures": {"p7": {"device": "NVIDIA H100 80GB HBM3", "p1": {"error": "x"}, "mfu": m}}}
    md = report.render(rep)
    assert "GPU NVIDIA H100 80GB HBM3" in md and "47.2% / 49.0%" in md and "**met**" in md


def test_measuring_a_subset_keeps_the_other_measures_of_an_existing_report(tmp_path):
    from benchmark import perf
    out = tmp_path / "out"
    out.mkdir()
    old = {"goal": "g", "skipped": "earlier run", "seconds": 1.0}
    (out / "perf.json").write_text(json.dumps({"measures": {"p4": old, "p7": {"skipped": "stale"}}}))
    assert perf.main(Namespace(out=str(out), measures="p7", repeats=1, scale="smoke", scratch=None)) == 0
    data = json.loads((out / "perf.json").read_text())
    assert list(data["measures"]) == ["p4", "p7"] and data["measures"]["p4"] == old
    assert data["measures"]["p7"]["skipped"] != "stale" and data["measures"]["p7"]["measured_at"]
    assert "## P4 evaluation" in (out / "perf.md").read_text()
