"""Issue 17: uncertainty in every table, the winner rule, fair compute, no mixing of configurations, and
reports that trace to their runs. Built on hand-made run folders (no training) except where a run is needed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from benchmark import cli
from benchmark.errors import UserError
from benchmark.report import collect, stats, tables, write_reports
from benchmark.results import rebuild_csv

ZS = "zeroshot_classification"
ZS_SET = "embedded/zeroshot_classification"


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _run(results: Path, method: str, seed: int, correct: list[float], identity: dict | None = None,
         compute: dict | None = None, scale: str = "smoke") -> None:
    """A finished run whose zero-shot score is the mean of ``correct`` (saved per item)."""
    run = results / scale / method / f"seed{seed}"
    comp = {"steps": 10, "samples_seen": 320, "train_flops": 1e10, "flops_per_step": 1e9, "wall_time_s": 3.0,
            "images_per_s": 100.0, "match": "flops", **(compute or {})}
    ident = {"method": method, "seed": seed, "match": "flops", "method_config": {}, **(identity or {})}
    _write(run / "config.json", {"config_hash": f"{method}{seed}", "identity": ident, "code_version": "abc"})
    _write(run / "metrics.json", {"compute": comp, "history": [], "stats": {}, "config_hash": f"{method}{seed}",
                                  "machine": {"cpu_count": 2, "torch_threads": 2, "device": "cpu", "gpu": None},
                                  "evals": {"eval_time_s": 1.0}})
    _write(run / "train.jsonl", "".join(json.dumps({"step": s, "loss": 3.0 - s / 10}) + "\n" for s in (1, 5, 10)))
    _write(run / "evals" / f"{ZS}.json",
           {"dataset": ZS_SET, "task": ZS, "metrics": {"acc1": float(np.mean(correct))}, "main_metric": "acc1",
            "chance": 1 / 48, "per_item": correct, "notes": {"colour_only": 1 / 6},
            "run": {"method": method, "seed": seed, "config_hash": f"{method}{seed}", "code_version": "abc"},
            "compute": comp})
    rebuild_csv(results, scale)


def _items(acc: float, n: int = 200, shift: int = 0) -> list[float]:
    k = round(acc * n)
    return [1.0 if (i + shift) % n < k else 0.0 for i in range(n)]


def _summary(results: Path):
    rebuild_csv(results, "smoke")
    res = collect.load(results, "smoke")
    return res, tables.summary_frame(res)


# ---- the statistics ---------------------------------------------------------------------------------------

def test_t_interval_and_bootstrap_are_the_textbook_ones():
    v = [40.0, 44.0, 47.0]
    e = stats.over_seeds(v)
    low, high = st.t.interval(0.95, 2, loc=np.mean(v), scale=st.sem(v))
    assert (e.mean, e.n, e.low, e.high) == (pytest.approx(np.mean(v)), 3, pytest.approx(low), pytest.approx(high))
    assert np.isnan(stats.over_seeds([40.0]).low)                    # n = 1: no interval over seeds
    items = np.array(_items(0.3, 400))
    b = stats.over_items([items])
    se = np.sqrt(0.3 * 0.7 / 400)                                    # the binomial standard error
    assert b.low == pytest.approx(0.3 - 1.96 * se, abs=0.01) and b.high == pytest.approx(0.3 + 1.96 * se, abs=0.01)
    assert stats.over_items([items]) == b                            # seeded: the same runs, the same report
    # paired by seed: the interval of the per-seed differences, not of two independent means
    a, c = {0: 50.0, 1: 60.0, 2: 70.0}, {0: 49.0, 1: 59.2, 2: 68.9}
    d = stats.paired_difference(a, c)
    assert d.n == 3 and d.excludes_zero and d.mean == pytest.approx(np.mean([1.0, 0.8, 1.1]))


# ---- the winner rule and the n = 1 warning ----------------------------------------------------------------

def test_bold_only_where_the_paired_interval_to_the_runner_up_excludes_zero(tmp_path):
    clear, close = tmp_path / "clear", tmp_path / "close"
    for seed, (a, b) in enumerate([(0.50, 0.40), (0.55, 0.44), (0.52, 0.43)]):
        _run(clear, "clip", seed, _items(b))
        _run(clear, "flip", seed, _items(a))
    for seed, (a, b) in enumerate([(0.50, 0.49), (0.45, 0.48), (0.52, 0.47)]):
        _run(close, "clip", seed, _items(b))
        _run(close, "flip", seed, _items(a))
    _, frame = _summary(clear)
    assert tables.best_methods(frame, ZS) == {"flip"}
    assert "interval above 0" in frame.attrs["winners"][ZS][1]
    _, frame = _summary(close)                   # flip's mean is higher, but not beyond the seeds' spread
    assert frame.loc["flip", f"{ZS} mean"] > frame.loc["clip", f"{ZS} mean"]
    assert tables.best_methods(frame, ZS) == set() and "interval includes 0" in frame.attrs["winners"][ZS][1]


def test_one_seed_marks_no_winner_says_so_at_the_top_and_shows_the_items_interval(tmp_path):
    results = tmp_path / "results"
    _run(results, "clip", 0, _items(0.30))
    _run(results, "flip", 0, _items(0.60))
    out = write_reports(results, "smoke", tmp_path / "reports")
    md = (out / "summary.md").read_text()
    assert md.splitlines()[2].startswith("> **Single seed (n = 1): differences between methods are not findings.")
    table = [ln for ln in md.split("## Difference")[0].splitlines() if ln.startswith("|")]
    assert len(table) == 5 and not any("**" in ln for ln in table)   # no bold cell
    b = stats.over_items([np.array(_items(0.60)) * 100])
    assert f"60.0 (n=1; items [{b.low:.1f}, {b.high:.1f}])" in md
    d = stats.over_items([(np.array(_items(0.60)) - np.array(_items(0.30))) * 100])     # paired over items
    assert f"+30.0 (n=1; items [{d.low:+.1f}, {d.high:+.1f}])" in md
    page = (out / "index.html").read_text()
    assert page.index("Single seed") < page.index("<table")         # the warning comes before any table
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    assert csv.loc["flip", f"{ZS} acc1 items low (%)"] == pytest.approx(b.low)


# ---- fair compute -----------------------------------------------------------------------------------------

def test_total_compute_counts_a_required_run_and_the_method_is_marked(tmp_path):
    results = tmp_path / "results"
    _run(results, "clip", 0, _items(0.3))
    _run(results, "uta", 0, _items(0.4), compute={"teacher_pretraining_flops": 1e10,
                                                  "teacher_run": str(results / "smoke" / "clip" / "seed0")})
    _run(results, "ext", 0, _items(0.4), compute={"teacher_pretraining_flops": None, "teacher_run": None,
                                                  "teacher_checkpoint": "/ckpt/teacher.pt"})
    out = write_reports(results, "smoke", tmp_path / "reports")
    csv = pd.read_csv(out / "summary.csv", index_col="method")
    assert csv.loc["uta", "total_flops"] == pytest.approx(2e10) and csv.loc["uta", "train_flops"] == 1e10
    assert csv.loc["clip", "total_flops"] == pytest.approx(1e10) and np.isnan(csv.loc["ext", "total_flops"])
    assert csv.loc["uta", "builds_on"] == "teacher: clip run of the same seed"
    md = (out / "summary.md").read_text()
    header, *_ = [ln for ln in md.splitlines() if ln.startswith("| method")]
    assert "total FLOPs" in header and "builds on" in header
    assert "`ext`, `uta` build(s) on another run" in md and "Ranking rule" in md
    assert "unknown" in next(ln for ln in md.splitlines() if ln.startswith("| ext"))


def test_a_row_trained_on_its_own_budget_is_shown_and_never_ranked(tmp_path):
    results = tmp_path / "results"
    for seed, (wide, flip, clip) in enumerate([(0.70, 0.50, 0.40), (0.72, 0.55, 0.44), (0.71, 0.52, 0.43)]):
        _run(results, "clip@wide", seed, _items(wide), identity={"match": "samples"},
             compute={"match": "samples", "train_flops": 2.3e10})
        _run(results, "flip", seed, _items(flip))
        _run(results, "clip", seed, _items(clip))
    res, frame = _summary(results)
    assert tables.own_budget(res) == ["clip@wide"] and tables.match_mode(res) == "training FLOPs (`--match flops`)"
    # clip@wide has the best mean by far, but it spent more than the budget: flip, best among the matched, is marked
    assert frame.loc["clip@wide", f"{ZS} mean"] > frame.loc["flip", f"{ZS} mean"]
    assert tables.best_methods(frame, ZS) == {"flip"} and "flip − clip" in frame.attrs["winners"][ZS][1]
    md = (write_reports(results, "smoke", tmp_path / "reports") / "summary.md").read_text()
    assert "`clip@wide` trained on a budget of its own" in md and "it is not ranked" in md
    assert md.startswith("# Summary at scale `smoke`, compute matched on training FLOPs (`--match flops`)\n")


# ---- no mixing --------------------------------------------------------------------------------------------

def test_the_report_refuses_to_pool_two_configurations_of_one_method(tmp_path):
    results = tmp_path / "results"
    _run(results, "flip", 0, _items(0.3), identity={"method_config": {"mask_ratio": 0.5}})
    _run(results, "flip", 1, _items(0.3), identity={"method_config": {"mask_ratio": 0.75}})
    _run(results, "flip@mask75", 0, _items(0.3), identity={"method_config": {"mask_ratio": 0.75}})  # a variant
    rebuild_csv(results, "smoke")
    with pytest.raises(UserError, match=r"holds runs of flip with different configurations .*seeds 0.*seeds 1"):
        collect.load(results, "smoke")
    assert cli.main(["report", "--scale", "smoke", "--results", str(results)]) == 2
    assert not (results / "reports").exists()                      # refused before anything is written
    (results / "smoke" / "flip" / "seed1" / "config.json").unlink()
    (results / "smoke" / "flip" / "seed1" / "metrics.json").unlink()
    import shutil
    shutil.rmtree(results / "smoke" / "flip" / "seed1")
    rebuild_csv(results, "smoke")
    res = collect.load(results, "smoke")                            # a variant is its own method: no refusal
    assert {"flip", "flip@mask75"} <= set(res.methods)


def test_run_refuses_another_configuration_beside_a_methods_seeds_before_writing(tmp_path, capsys):
    from benchmark.runs import RunSpec, config_hash, identity
    results = tmp_path / "results"
    seed0 = RunSpec(method="flip", seed=0, scale="smoke", results=str(results))
    ident = identity(seed0)
    _write(seed0.dir / "config.json", {"config_hash": config_hash(ident), "identity": ident, "code_version": "x"})
    _write(seed0.dir / "train.jsonl", json.dumps({"step": 1, "loss": 4.0}) + "\n")     # it trained
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = cli.main(["run", "--methods", "flip", "--scale", "smoke", "--seeds", "1", "--cluster", "debug",
                     "--results", str(results), "--set", "flip.mask_ratio=0.75"])
    err = capsys.readouterr().err
    assert code == 2
    assert "already holds flip seed 0 with another configuration" in err
    assert "method_config.mask_ratio: 0.5 there, 0.75 here" in err
    assert "eval_suite" not in err and "betas" not in err          # only what differs, not a tuple vs its list
    assert "--results" in err and "named variant" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before     # nothing written
    # --force on every seed of the old configuration replaces it: not a mix
    from benchmark.runs import check_siblings
    spec1 = RunSpec(method="flip", seed=1, scale="smoke", results=str(results), overrides={"flip": {"mask_ratio": 0.75}})
    check_siblings(spec1, identity(spec1), replaced={0})
    with pytest.raises(UserError):
        check_siblings(spec1, identity(spec1))
    (seed0.dir / "train.jsonl").unlink()           # a record of a run that never trained holds nothing to mix
    check_siblings(spec1, identity(spec1))


# ---- traceable reports ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_reports_ship_their_runs_and_re_report_from_them_identically(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        _run(results, "clip", seed, _items(0.3 + seed / 50))
        _run(results, "flip", seed, _items(0.4 + seed / 40))
        (results / "smoke" / "flip" / f"seed{seed}" / "model.pt").write_bytes(b"weights")
    out = write_reports(results, "smoke", tmp_path / "committed", command="python -m benchmark run --x")
    shipped = out / "runs" / "smoke"
    names = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    assert "flip/seed0/evals/zeroshot_classification.json" in names and "results.csv" in names
    assert "flip/seed1/train.jsonl" in names and not any(n.endswith(".pt") for n in names)   # no weights
    again = write_reports(out / "runs", "smoke", tmp_path / "again")
    a, b = (pd.read_csv(d / "summary.csv", index_col="method") for d in (out, again))
    pd.testing.assert_frame_equal(a, b)
    md = (out / "summary.md").read_text()
    assert "with `python -m benchmark run --x`" in md and "2 CPU cores, 2 torch threads, cpu" in md
    assert f"--results {out / 'runs'}" in md
    # re-reporting into the same folder from its own copy keeps the copy
    write_reports(out / "runs", "smoke", tmp_path / "committed")
    assert (shipped / "flip" / "seed0" / "metrics.json").exists()


def test_a_users_run_reports_next_to_its_results_by_default(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _run(results, "clip", 0, _items(0.3))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "smoke").mkdir(parents=True)
    (tmp_path / "reports" / "smoke" / "summary.md").write_text("committed")
    rebuild_csv(results, "smoke")
    assert cli.main(["report", "--scale", "smoke", "--results", str(results)]) == 0
    assert (results / "reports" / "smoke" / "summary.md").exists()
    assert (tmp_path / "reports" / "smoke" / "summary.md").read_text() == "committed"
    assert not (results / "reports" / "smoke" / "runs").exists()      # beside its results: nothing to copy


def test_plots_draw_the_colour_only_level_and_a_loss_curve(tmp_path):
    results = tmp_path / "results"
    for seed in (0, 1):
        _run(results, "clip", seed, _items(0.3))
    res, _ = _summary(results)
    from benchmark.report import plots
    assert plots.reference_levels(res, ZS) == [("colour only", pytest.approx(100 / 6))]
    assert len(res.losses) == 6 and res.losses["train_flops"].max() == pytest.approx(1e10)
    fig = plots.loss_vs_flops(res, tmp_path)
    assert fig.path.stat().st_size > 5000
