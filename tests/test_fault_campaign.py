"""Fault and bad-input campaign (issue 13): nothing silently wrong, no row lost, no run stuck, no traceback.

One healthy smoke FLIP run (trained once, in this process) is copied into each test's own results folder and
damaged there; the tests that need training of their own keep it to a few smoke steps.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark import REPO_ROOT
from benchmark.cli import main
from benchmark.results import read_json

SMOKE = ["--scale", "smoke", "--cluster", "debug"]


@pytest.fixture(scope="module")
def methods_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    for name in ("clip", "flip"):
        shutil.copytree(REPO_ROOT / "methods" / name, root / name)
    return root


@pytest.fixture
def in_methods(methods_root, monkeypatch):
    monkeypatch.setenv("MASKBENCH_METHODS", str(methods_root))
    return methods_root


@pytest.fixture(scope="module")
def finished(methods_root, tmp_path_factory) -> Path:
    """A results folder holding one finished smoke FLIP run (seed 0)."""
    results = tmp_path_factory.mktemp("finished") / "results"
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKBENCH_METHODS", str(methods_root))
    try:
        assert main(["run", "--methods", "flip", *SMOKE, "--results", str(results), "--no-report"]) == 0
    finally:
        mp.undo()
    return results


def _copy(finished: Path, tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(finished, results)
    return results


def _run(method: str = "flip", results: Path | None = None, seed: int = 0) -> Path:
    return Path(results) / "smoke" / method / f"seed{seed}"


def _table(results: Path) -> pd.DataFrame:
    return pd.read_csv(results / "smoke" / "results.csv")


# ---- 5. results.csv rebuilt from the run folders on every run, eval and report ----------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("command,damage", [("run", "missing"), ("eval", "truncated"), ("report", "binary")])
def test_results_csv_is_rebuilt_by_run_eval_and_report(finished, in_methods, tmp_path, capsys, command, damage):
    """A kill between metrics.json and the table's rebuild (missing), a table cut short or overwritten: the next
    `run` (which skips the finished run), `eval` and `report` each write the full table again."""
    results = _copy(finished, tmp_path)
    table = results / "smoke" / "results.csv"
    want = _table(results)
    assert len(want) > 20 and set(want["method"]) == {"flip"}
    if damage == "missing":
        table.unlink()
    elif damage == "truncated":
        table.write_bytes(table.read_bytes()[:300])
    else:
        table.write_bytes(bytes(range(256)) * 8)
    argv = {"run": ["run", "--methods", "flip", *SMOKE, "--no-report"],
            "eval": ["eval", "--methods", "flip", "--scale", "smoke"],
            "report": ["report", "--scale", "smoke", "--reports", str(tmp_path / "reports")]}[command]
    assert main([*argv, "--results", str(results)]) == 0, capsys.readouterr().err
    got = _table(results)
    pd.testing.assert_frame_equal(got[["method", "task", "metric"]], want[["method", "task", "metric"]])


# ---- 6. one unreadable eval file costs only its own rows, and is named ------------------------------------------
@pytest.mark.slow
def test_an_unreadable_eval_file_costs_only_its_rows_and_is_named(finished, in_methods, tmp_path, capsys):
    results = _copy(finished, tmp_path)
    other = _run("clip", results)                               # another method's run, its files garbled
    shutil.copytree(_run("flip", results), other)
    for ev in (other / "evals").glob("*.json"):
        data = read_json(ev)
        data["run"]["method"] = "clip"
        ev.write_text(json.dumps(data))
    bad = other / "evals" / "vqa.json"
    bad.write_bytes(bad.read_bytes()[:40])
    (other / "evals" / "linear_probe.json").write_bytes(b"\xff\xfe\x00garbage")
    (_run("flip", results) / ".." / ".." / "results.csv").resolve().unlink()
    assert main(["run", "--methods", "flip", *SMOKE, "--no-report", "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert f"{bad} is unreadable" in err and "linear_probe.json is unreadable" in err
    assert "benchmark eval --methods clip --seeds 0" in err            # the fix
    got = _table(results)
    flip, clip = got[got["method"] == "flip"], got[got["method"] == "clip"]
    assert len(flip) == len(_table(finished))
    assert set(clip["task"]) == set(flip["task"]) - {"vqa", "linear_probe"} and len(clip) > 0


# ---- 7. the log rewrite on resume is atomic and a cut last line is tolerated --------------------------------------
def _train_clip(run_dir: Path, steps: int, smoke_scale):
    from benchmark.data.train_data import load_training_data
    from benchmark.discovery import build_method, discover
    from benchmark.train import TrainPlan, train
    method = build_method(discover(REPO_ROOT / "methods")["clip"], smoke_scale, cfg={})
    plan = TrainPlan(steps=steps, batch_size=8, seed=0, optim=smoke_scale.optim, checkpoint_every=2, log_every=1)
    return train(method, method, load_training_data(smoke_scale), plan, run_dir, "cpu", progress_bar=False)


def test_a_cut_last_log_line_does_not_stop_the_resume_and_the_rewrite_is_atomic(tmp_path, smoke_scale,
                                                                                monkeypatch):
    from benchmark import checkpoint
    log = tmp_path / "train.jsonl"
    _train_clip(tmp_path, 2, smoke_scale)
    rows = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # a kill while the log was being rewritten (or a line written) leaves a cut line at the end
    log.write_text(log.read_text() + json.dumps({"step": 3, "loss": 1.0})[:15])
    # a kill in the middle of the rewrite itself: the old log stays whole
    before = log.read_bytes()

    def killed(fd):
        raise KeyboardInterrupt("killed during the rewrite")
    monkeypatch.setattr(checkpoint.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        _train_clip(tmp_path, 4, smoke_scale)
    assert log.read_bytes() == before
    assert not list(tmp_path.glob(".train.jsonl.*"))
    monkeypatch.undo()
    _train_clip(tmp_path, 4, smoke_scale)                     # resumes from step 2
    rows = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


# ---- 3. declared ranges and choices of every method's config keys, checked by discovery ----------------------------
@pytest.mark.parametrize("setting,needles", [
    ("flip.unmasked_tune_fraction=5", ["flip.unmasked_tune_fraction=5.0 is outside [0, 1)"]),
    ("maskclip_dong.ema_momentum=1.5", ["maskclip_dong.ema_momentum=1.5 is outside [0, 1]"]),
    ("maskclip_dong.ema_momentum=-1", ["maskclip_dong.ema_momentum=-1.0 is outside [0, 1]"]),
    ("maskclip_weers.decoder_layers=-3", ["maskclip_weers.decoder_layers=-3 is outside [1, 64]"]),
    ("maskclip_dong.decoder_heads=0", ["maskclip_dong.decoder_heads=0 is outside [1, 256]"]),
    ("maskclip_dong.decoder_width=1000000000000", ["decoder_width=1000000000000 is outside [1, 8192]"]),
    ("uta.mask_mode=bogus", ["uta.mask_mode='bogus' is not one of random, reversed_block, complementary"]),
    ("uta.teacher_checkpoint=/nonexistent.pt", ["/nonexistent.pt' does not name an existing file"]),
])
def test_out_of_range_config_values_are_refused_before_anything_is_written(tmp_path, capsys, setting, needles):
    results = tmp_path / "results"
    method = setting.split(".")[0]
    code = main(["run", "--methods", f"flip,{method}", *SMOKE, "--results", str(results), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in [*needles, "--set", "config.yaml"]:
        assert needle in err, (needle, err)
    assert not results.exists()


def test_every_numeric_or_choice_key_of_the_shipped_methods_declares_its_range():
    from benchmark.discovery import discover
    infos = discover(REPO_ROOT / "methods")
    missing = [f"{name}.{key}" for name, info in infos.items() for key, value in info.defaults.items()
               if not isinstance(value, bool) and key not in info.ranges and key != "teacher_run"]
    assert not missing, f"declare these under ranges: in the method's config.yaml: {missing}"


@pytest.mark.parametrize("config,needle", [
    ("defaults: {depth: 2}\nranges: {depth: {min: 3}}\n", "depth=2 is outside [3, inf)"),
    ("defaults: {depth: 2}\nscales: {smoke: {depth: 9}}\nranges: {depth: {max: 4}}\n", "depth=9 is outside"),
    ("defaults: {depth: 2}\nranges: {width: {min: 1}}\n", "ranges.width names no key of 'defaults'"),
    ("defaults: {depth: 2}\nranges: {depth: {least: 1}}\n", "ranges.depth must be a list of choices or a mapping"),
    ("defaults: {mode: a}\nranges: {mode: [b, c]}\n", "mode='a' is not one of b, c"),
    ("defaults: {w: 6, h: 4}\nranges: {w: {multiple_of: h}}\n", "w=6 must be a multiple of h=4"),
])
def test_a_method_whose_own_values_break_its_declared_ranges_is_broken(tmp_path, config, needle):
    from benchmark.discovery import discover
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "method.py").write_text((REPO_ROOT / "methods" / "clip" / "method.py").read_text())
    (tmp_path / "m" / "config.yaml").write_text(config)
    info = discover(tmp_path)["m"]
    assert not info.ok and needle in info.error, info.error


# ---- 8. the whole sweep is validated before the first run trains; a locked run is skipped, the others go on -------
def test_a_refusal_that_left_a_config_does_not_block_the_corrected_command(finished, in_methods, tmp_path, capsys):
    """A run refused after its config.json was written (before this campaign: a method's own late check) holds no
    training: the corrected command replaces the record instead of calling it 'a different config'."""
    from benchmark.results import write_json
    results = tmp_path / "results"
    write_json(_run("flip", results) / "config.json", {"config_hash": "an-earlier-refused-config", "identity": {}})
    write_json(_run("clip", results) / "config.json", {"config_hash": "another", "identity": {}})
    (_run("clip", results) / "checkpoints").mkdir()                  # this one trained: still refused
    code = main(["run", "--methods", "flip,clip", *SMOKE, "--results", str(results), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and f"{_run('clip', results)} holds a run with a different config" in err, err
    shutil.rmtree(_run("clip", results))
    from benchmark.cli import _refuse_before_writing, _specs
    from benchmark.cli import build_parser
    args = build_parser().parse_args(["run", "--methods", "flip", *SMOKE, "--results", str(results)])
    scale, specs = _specs(args, "smoke")
    _refuse_before_writing(scale, specs, args)                       # no longer refused


def test_a_locked_run_is_skipped_and_reported_while_the_others_go_on(finished, in_methods, tmp_path, capsys):
    import fcntl
    results = _copy(finished, tmp_path)
    held = _run("clip", results)
    held.mkdir(parents=True)
    with open(held / ".lock", "a+") as lock:                          # another process is on clip/seed0
        fcntl.flock(lock, fcntl.LOCK_EX)
        code = main(["run", "--methods", "clip,flip", *SMOKE, "--results", str(results), "--no-report"])
    out, err = capsys.readouterr()
    assert code == 2, err
    rows = {ln.split()[0]: ln for ln in out.splitlines() if "seed 0" in ln}
    assert "locked" in rows["clip"] and "being written by another process" in rows["clip"]
    assert rows["flip"].split()[3] == "done"                           # after the locked one
    assert "run the same command again" in err
    assert not (held / "config.json").exists()


# ---- 9. SystemExit at a method's import is contained --------------------------------------------------------------
def test_a_method_that_exits_at_import_is_reported_broken_and_hides_nothing(tmp_path, monkeypatch, capsys):
    root = tmp_path / "methods"
    shutil.copytree(REPO_ROOT / "methods" / "clip", root / "clip")
    (root / "cli_at_import").mkdir()
    (root / "cli_at_import" / "method.py").write_text(
        "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--lr')\nargs = parser.parse_args()\n")
    monkeypatch.setenv("MASKBENCH_METHODS", str(root))
    # what the folder's parse_args() sees under `python -m benchmark list` (not pytest's own argv, which may be empty)
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "benchmark" / "__main__.py"), "list"])
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "cli_at_import  BROKEN:" in out and "exits when imported (SystemExit: 2 (method.py:4)" in out
    assert "unrecognized arguments" in out and "__main__" in out
    assert out.splitlines()[0].startswith("cli_at_import") and any(ln.startswith("clip ") for ln in out.splitlines())
    res = tmp_path / "results"
    assert main(["run", "--methods", "cli_at_import", *SMOKE, "--results", str(res)]) == 2
    assert "exits when imported" in capsys.readouterr().err and not res.exists()


# ---- 12. seeds are bounded ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["18446744073709551616", "4294967296"])
def test_a_seed_beyond_32_bits_is_refused(tmp_path, capsys, seed):
    res = tmp_path / "results"
    assert main(["run", "--methods", "clip", *SMOKE, "--seeds", seed, "--results", str(res)]) == 2
    err = capsys.readouterr().err
    assert f"--seeds {seed} is too large" in err and "4294967295" in err
    assert not res.exists()


# ---- 1 (and the cache cases of 11, 15). The data cache is verified at load; a damaged one is rebuilt ----------------
@pytest.mark.slow
def test_a_damaged_data_cache_is_found_at_load_and_rebuilt_to_the_same_bytes(tmp_path, monkeypatch, smoke_scale,
                                                                             capsys):
    import numpy as np
    from benchmark.data import embedded
    from benchmark.data.train_data import load_training_data
    from benchmark.evaluation.sets import embedded_folder
    monkeypatch.setenv("MASKBENCH_CACHE", str(tmp_path / "cache"))
    data = load_training_data(smoke_scale)
    folder = embedded_folder(smoke_scale)
    fingerprint, images, tokens = data.fingerprint, data.images.clone(), data.tokens.clone()
    originals = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    decoded = next(folder.glob("train-decoded-px*.npy"))
    token_file = next(folder.glob("tokens-*.npy"))

    def same_size_garble(path: Path, at: int, n: int = 4) -> None:
        raw = bytearray(path.read_bytes())
        raw[at:at + n] = bytes(b ^ 0xFF for b in raw[at:at + n])
        path.write_bytes(bytes(raw))

    damages = {   # what a user or a kill leaves -> the file the warning must name
        "garbled decoded images": (lambda: same_size_garble(decoded, len(decoded.read_bytes()) // 2), decoded),
        "truncated decoded images": (lambda: decoded.write_bytes(decoded.read_bytes()[:1000]), decoded),
        "garbled tokens": (lambda: same_size_garble(token_file, len(token_file.read_bytes()) - 40), token_file),
        "flipped label bytes": (lambda: same_size_garble(folder / "zeroshot_classification.tar", 5000),
                                folder / "zeroshot_classification.tar"),
        "truncated vqa.tar": (lambda: (folder / "vqa.tar").write_bytes((folder / "vqa.tar").read_bytes()[:9000]),
                              folder / "vqa.tar"),
        "no manifest": (lambda: (folder / "manifest.json").unlink(), folder / "manifest.json"),
    }
    for what, (damage, named) in damages.items():
        damage()
        again = load_training_data(smoke_scale)
        assert embedded_folder(smoke_scale) == folder
        err = capsys.readouterr().err
        assert str(named) in err and ("regenerat" in err or "rebuilding" in err), (what, err)
        assert again.fingerprint == fingerprint, what
        assert torch_equal(again.images, images) and torch_equal(again.tokens, tokens), what
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == originals, what
        assert not embedded.damage(folder)
    assert np.array_equal(np.load(decoded), images.numpy().transpose(0, 2, 3, 1))


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))


# ---- 2. provenance per training segment; a resume on changed data is refused ------------------------------------------
class _StopAt:
    """A stop flag raised at step ``n``: the run saves a checkpoint there and stops (as a kill after it would)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n

    def armed(self):
        import contextlib
        return contextlib.nullcontext(self)


def _csv_data(folder: Path, shade: int) -> Path:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,caption"]
    for i in range(48):
        Image.fromarray(np.full((32, 32, 3), (shade + 5 * i) % 256, np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,a grey square number {i}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


@pytest.mark.slow
def test_provenance_per_segment_and_a_resume_on_changed_data_is_refused(in_methods, tmp_path, monkeypatch, capsys):
    from benchmark import runs
    from benchmark.errors import UserError
    results, csv = tmp_path / "results", _csv_data(tmp_path / "data", shade=10)
    spec = runs.RunSpec(method="clip", seed=0, scale="smoke", results=str(results), data=str(csv))
    with pytest.raises(runs.Interrupted):
        runs.execute(spec, progress_bar=False, stop=_StopAt(5))          # stopped after step 5: checkpoint 5
    run = _run("clip", results)
    first = read_json(run / "config.json")
    assert [s["start_step"] for s in first["segments"]] == [0]
    fingerprint = first["segments"][0]["data_fingerprint"]
    assert first["data_fingerprint"] == fingerprint and first["segments"][0]["code_version"]
    # the CSV behind the same --data path now holds other images: refused before anything is written
    _csv_data(tmp_path / "data", shade=99)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    argv = ["run", "--methods", "clip", *SMOKE, "--results", str(results), "--data", str(csv), "--no-report"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run} was trained up to step 5 on data with fingerprint {fingerprint}" in err and "--force" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(UserError, match="the data changed since"):              # inside the run too (Slurm)
        runs.execute(spec, progress_bar=False)
    # the original data back, and the code edited between the kill and the resume
    _csv_data(tmp_path / "data", shade=10)
    monkeypatch.setattr(runs, "code_version", lambda: "0123abc+dirty")
    assert main(argv) == 0, capsys.readouterr().err
    record = read_json(run / "config.json")
    assert [(s["start_step"], s["data_fingerprint"]) for s in record["segments"]] == [(0, fingerprint),
                                                                                      (5, fingerprint)]
    assert record["segments"][0]["code_version"] == first["segments"][0]["code_version"] != "0123abc+dirty"
    assert record["segments"][1]["code_version"] == "0123abc+dirty"


# ---- 11. damaged state files are named with the fix ---------------------------------------------------------------
def test_damaged_run_state_is_named_with_the_fix(finished, in_methods, tmp_path, capsys):
    results = _copy(finished, tmp_path)
    run = _run("flip", results)
    metrics = run / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:200])                       # truncated by a kill
    assert main(["status", "--scale", "smoke", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"{metrics} is damaged" in out and "delete it and run the same `benchmark run` command again" in out
    for argv in (["eval", "--methods", "flip", "--scale", "smoke"], ["run", "--methods", "flip", *SMOKE]):
        assert main([*argv, "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert f"{metrics} is damaged" in err and "delete it" in err, argv
    metrics.unlink()
    config = run / "config.json"
    config.write_bytes(b"\x00\x01garbage")
    assert main(["run", "--methods", "flip", *SMOKE, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert f"{config} is damaged" in err and f"delete the run folder {run} (or pass --force)" in err


def test_a_binary_config_yaml_is_named(tmp_path):
    from benchmark.discovery import discover
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "method.py").write_text((REPO_ROOT / "methods" / "clip" / "method.py").read_text())
    (tmp_path / "m" / "config.yaml").write_bytes(bytes(range(128, 256)))
    info = discover(tmp_path)["m"]
    assert not info.ok and f"{tmp_path / 'm' / 'config.yaml'} is not a text file" in info.error


# ---- 13. a full or read-only disk, a file where a folder belongs: exit 2, nothing half-written ----------------------
def test_a_full_disk_is_exit_2_naming_the_file_and_leaves_nothing_half_written(in_methods, tmp_path, monkeypatch,
                                                                                capsys):
    import torch
    from benchmark import checkpoint
    real = torch.save

    def full_disk(obj, f, *a, **k):
        real(obj, f, *a, **k)            # the bytes went somewhere; then the zip writer saw the short write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1024 vs 960")
    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    results = tmp_path / "results"
    assert main(["run", "--methods", "clip", *SMOKE, "--results", str(results), "--no-report"]) == 2
    err = capsys.readouterr().err
    run = _run("clip", results)
    assert f"no space left on the device of {run / 'checkpoints' / 'step_0000004.pt'}" in err, err
    assert "Traceback" not in err and not (run / "error.json").exists()
    assert not list(run.rglob("*.tmp")) and not list((run / "checkpoints").glob("step_*"))


def _read_only(monkeypatch, root: Path) -> None:
    """Every write under ``root`` fails as on a read-only mount (permission bits cannot show it to root)."""
    import builtins
    import errno
    import os
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def refuse(path):
        if str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, Path)) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *a, **k)

    def mkdir(path, *a, **k):
        refuse(path)
        return real_mkdir(path, *a, **k)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_read_only_results_folder_and_a_file_as_reports_folder_are_exit_2(finished, in_methods, tmp_path,
                                                                             monkeypatch, capsys):
    results = _copy(finished, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*")}
    with monkeypatch.context() as mp:
        _read_only(mp, results)
        for argv in (["run", "--methods", "flip", *SMOKE, "--no-report"], ["eval", "--methods", "flip", "--scale",
                                                                          "smoke"]):
            assert main([*argv, "--results", str(results)]) == 2
            err = capsys.readouterr().err
            assert f"cannot write --results {results}" in err and "read-only file system" in err, (argv, err)
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*")} == before
    a_file = tmp_path / "reports.txt"
    a_file.write_text("not a folder")
    for argv in (["report", "--scale", "smoke"], ["run", "--methods", "flip", *SMOKE]):
        assert main([*argv, "--results", str(results), "--reports", str(a_file)]) == 2
        err = capsys.readouterr().err
        assert f"--reports {a_file}" in err and "is not a folder" in err, (argv, err)


def test_report_of_an_unknown_scale_names_the_scales(tmp_path, capsys):
    assert main(["report", "--scale", "nosuch", "--results", str(tmp_path), "--reports", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown scale 'nosuch'" in err and "smoke" in err and "train first" not in err


# ---- 14. generator workers die with their parent; temporary folders of a killed generation are cleared -------------
def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] not in "ZX"
    except OSError:
        return False


def _kill_and_expect_its_children_gone(parent, within_s: float = 20) -> list[int]:
    """SIGKILL ``parent`` (a Popen) and wait until every child it had is gone; returns the children's pids."""
    import os
    import signal
    import time
    workers = _children(parent.pid)
    assert workers, "nothing to test: the process has no children"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + within_s
    while any(_alive(w) for w in workers):
        assert time.monotonic() < deadline, f"children {[w for w in workers if _alive(w)]} outlived their parent"
        time.sleep(0.2)
    return workers


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_generation_takes_its_workers_along_and_its_temporary_folder_is_cleared(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from benchmark.data import embedded
    root = tmp_path / "embedded"
    code = (f"from pathlib import Path\nfrom benchmark.data import embedded\n"
            f"embedded.ensure(32, 40000, 96, root=Path({str(root)!r}))\n")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_children(parent.pid)) < 2:                  # both workers started
            assert parent.poll() is None and time.monotonic() < deadline, "the generation never started workers"
            time.sleep(0.2)
        _kill_and_expect_its_children_gone(parent)
    finally:
        for w in _children(parent.pid):
            os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
    stale = [d for d in root.iterdir() if d.name.startswith(".v")]
    assert stale, "the killed generation left no temporary folder: nothing was tested"
    embedded.ensure(32, 64, 8, root=root)                      # the next start clears it
    assert not [d for d in root.iterdir() if d.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_launcher_takes_its_local_workers_along(in_methods, tmp_path):
    """SIGKILL (or a Slurm/``timeout`` SIGTERM) of ``run --cluster local`` stops its worker too: a worker left
    behind would go on training its run, unseen, beside the run the next command starts on the same folder."""
    import os
    import signal
    import subprocess
    import sys
    import time
    results = tmp_path / "results"
    child = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--methods", "clip", "--scale", "smoke",
                              "--cluster", "local", "--results", str(results), "--no-report"], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = []
    try:
        deadline = time.monotonic() + 300
        while not (_run("clip", results) / "train.jsonl").exists():     # the worker is training
            assert child.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.2)
        workers = _children(child.pid)                  # killed in `finally` should they outlive it
        _kill_and_expect_its_children_gone(child)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)


# ---- 15. Ctrl-C under --cluster local: the friendly message only ---------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_under_the_local_cluster_prints_no_submitit_traceback(in_methods, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    results = tmp_path / "results"
    child = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--methods", "clip", "--scale", "smoke",
                              "--cluster", "local", "--results", str(results), "--no-report"], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             # a terminal's Ctrl-C: under a shell that started the tests in the background, SIGINT
                             # is ignored, and an ignored signal is inherited (Python then installs no handler)
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (_run("clip", results) / "train.jsonl").exists():     # the worker is training
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        os.killpg(child.pid, signal.SIGINT)                          # Ctrl-C: the whole foreground group
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 130, err
    assert "interrupted; runs resume from their last checkpoint" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
