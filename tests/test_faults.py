"""Fault injection (issue 9): kills, sweep isolation, bad input, concurrency, security.

Faults that need a real process to die (SIGKILL) or two processes at once run as child processes forked from a
forkserver that has imported the harness once: ``python -m benchmark`` pays ~8 s of imports per start, a fork
milliseconds. Everything else calls ``benchmark.cli.main`` in this process. One healthy smoke run of FLIP (made
inside the failing sweep; random masks, so a resume must restore the RNG too) is the reference every other run is
compared with.
"""
from __future__ import annotations

import ast
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark import REPO_ROOT, checkpoint, discovery
from benchmark.cli import main
from benchmark.results import read_json

SMOKE = ["--scale", "smoke", "--cluster", "debug"]
CKPT_EVERY = 4                             # smoke: a checkpoint every 4 steps
FAULT_AT = 5                               # the step at which the faulty methods fail (after checkpoint 4)

# ---- child processes ------------------------------------------------------------------------------------------------
_CTX = multiprocessing.get_context("forkserver")
_PRELOAD = ["benchmark.cli", "benchmark.launch", "benchmark.runs", "benchmark.status", "benchmark.report",
            "benchmark.evaluation.suite", "benchmark.evaluation.zeroshot_classification",
            "benchmark.evaluation.zeroshot_retrieval", "benchmark.evaluation.linear_probe",
            "benchmark.evaluation.compositionality", "benchmark.evaluation.vqa", "sklearn.linear_model"]


def _cli_in_child(argv: list[str], env: dict, out: str, err: str) -> None:
    """The body of a child: ``python -m benchmark ARGV`` with ``env``, output to files, exit with its status."""
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    from benchmark.cli import main as cli_main
    code = cli_main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


@dataclass
class Child:
    proc: multiprocessing.Process
    out: Path
    err: Path

    def wait(self, timeout: float = 600) -> int:
        self.proc.join(timeout)
        assert not self.proc.is_alive(), f"child still running after {timeout} s:\n{self.stderr[-2000:]}"
        return self.proc.exitcode

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


@pytest.fixture(scope="module")
def start_cli(tmp_path_factory):
    """start_cli(argv, **env) -> Child: the CLI in a new process (forked from a server that imported the harness)."""
    logs = tmp_path_factory.mktemp("child-logs")
    _CTX.set_forkserver_preload(_PRELOAD)
    started: list[Child] = []

    def start(argv, **env) -> Child:
        child = Child(None, logs / f"{len(started)}.out", logs / f"{len(started)}.err")
        child.proc = _CTX.Process(target=_cli_in_child, args=([str(a) for a in argv], env, str(child.out),
                                                               str(child.err)))
        child.proc.start()
        started.append(child)
        return child
    yield start
    for child in started:                                          # a failed test leaves no run going
        if child.proc.is_alive():
            child.proc.kill()
            child.proc.join()
    from multiprocessing import forkserver
    getattr(forkserver._forkserver, "_stop", lambda: None)()       # no server left behind


# ---- method folders for the faults ----------------------------------------------------------------------------------
FAULTY_METHOD = '''
"""CLIP that fails on purpose at optimizer step ``at_step``: raises, or returns a NaN / inf loss."""
from benchmark.method import Method


class Faulty(Method):
    paper = "fault-injection fixture"
    summary = "CLIP that fails at a chosen step"

    def __init__(self, clip, cfg, ctx):
        super().__init__(clip, cfg, ctx)
        self.steps_done = 0

    def training_step(self, batch, progress):
        loss = self.contrastive(self.clip.encode_image(batch["images"]), self.clip.encode_text(batch["texts"]))
        if self.steps_done == self.cfg["at_step"]:
            if self.cfg["fault"] == "raise":
                raise RuntimeError(f"injected fault at step {self.steps_done}")
            loss = loss * float(self.cfg["fault"])
        return {"loss": loss}

    def after_optimizer_step(self, progress):
        super().after_optimizer_step(progress)
        self.steps_done += 1
'''


def _faulty(root: Path, name: str, fault: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "method.py").write_text(FAULTY_METHOD)
    (root / name / "config.yaml").write_text(f"defaults:\n  at_step: {FAULT_AT}\n  fault: {fault}\n")


@pytest.fixture(scope="module")
def methods_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    shutil.copytree(REPO_ROOT / "methods" / "flip", root / "flip")
    _faulty(root, "boom", "raise")
    _faulty(root, "nanloss", "nan")
    return root


@pytest.fixture(scope="module")
def sweep(start_cli, methods_root, tmp_path_factory):
    """A sweep in which one method raises at step 5 and one returns a NaN loss there; FLIP runs after both."""
    root = tmp_path_factory.mktemp("sweep")
    child = start_cli(["run", "--methods", "boom,nanloss,flip", *SMOKE, "--results", root / "results",
                       "--reports", root / "reports"], MASKBENCH_METHODS=str(methods_root))
    code = child.wait()
    return {"code": code, "stdout": child.stdout, "stderr": child.stderr, "results": root / "results",
            "reports": root / "reports" / "smoke", "env": {"MASKBENCH_METHODS": str(methods_root)}}


@pytest.fixture
def in_methods(methods_root, monkeypatch):
    monkeypatch.setenv("MASKBENCH_METHODS", str(methods_root))
    return methods_root


def _run_dir(results: Path, method: str = "flip") -> Path:
    return Path(results) / "smoke" / method / "seed0"


def _record(run: Path) -> dict:
    """Everything a run produced that must not depend on interruptions: metrics (without wall-clock times),
    evaluation results, the training log (without times) and the exported weights."""
    metrics = read_json(run / "metrics.json")
    for key in ("wall_time_s", "images_per_s"):
        metrics["compute"].pop(key)
    metrics["evals"].pop("eval_time_s")
    evals = {p.name: {k: v for k, v in read_json(p).items() if k not in ("run", "compute", "pretrained")}
             for p in sorted((run / "evals").glob("*.json"))}
    log = [{k: v for k, v in json.loads(ln).items() if k != "wall_time_s"}
           for ln in (run / "train.jsonl").read_text().splitlines()]
    model = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    return {"metrics": metrics, "evals": evals, "log": log,
            "model": {k: v.numpy().tobytes() for k, v in model.items()}}


def _assert_same_run(run: Path, reference: Path) -> None:
    got, want = _record(run), _record(reference)
    assert want["evals"] and got["evals"] == want["evals"]
    assert got["metrics"] == want["metrics"]
    assert got["log"] == want["log"]
    assert got["model"].keys() == want["model"].keys()
    assert all(got["model"][k] == want["model"][k] for k in want["model"]), "exported weights differ"


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _latest_step(run: Path) -> int | None:
    last = checkpoint.latest(run / "checkpoints")
    return None if last is None else int(checkpoint.load(last)["step"])


# ---- 1. kills (and 4. concurrency) ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics_and_a_concurrent_run_is_refused(sweep, start_cli, tmp_path):
    """Killed after step a, inside the write of checkpoint b and after step c (drawn from a seeded RNG; with
    FLIP's 15 smoke steps: a = 3, before any checkpoint; b = 12; c = 15, after training and before evaluation),
    then started again: the run finishes with the metrics, log and weights of the uninterrupted run. While that
    last start holds the run, a second `run` of the same run exits 2 and changes nothing."""
    reference = _run_dir(sweep["results"])
    steps = read_json(reference / "metrics.json")["compute"]["steps"]
    rng = random.Random(17)
    a = rng.randint(1, CKPT_EVERY - 1)                          # before the first checkpoint: starts from 0
    b = rng.choice(range(2 * CKPT_EVERY, steps, CKPT_EVERY))    # checkpoint b half written: resumes from b - 4
    c = rng.randint(b - CKPT_EVERY + 1, steps)                  # resumes from the checkpoint at or before c
    results = tmp_path / "results"
    run = _run_dir(results)
    argv = ["run", "--methods", "flip", *SMOKE, "--results", results, "--no-report"]
    for point, expected_latest in ((f"step:{a}", None),
                                   (f"checkpoint:{b}", b - CKPT_EVERY),
                                   (f"step:{c}", c if c == steps else c // CKPT_EVERY * CKPT_EVERY)):
        child = start_cli(argv, MASKBENCH_KILL_AT=point, **sweep["env"])
        assert child.wait() == -9, f"{point}: the fault did not fire\n{child.stderr[-3000:]}"
        assert _latest_step(run) == expected_latest, point
        assert not (run / "metrics.json").exists()
        if point.startswith("checkpoint"):                 # the half-written file is left, never taken
            assert list((run / "checkpoints").glob(f".step_{b:07d}.pt.*.tmp"))
            assert not (run / "checkpoints" / f"step_{b:07d}.pt").exists()
    final = start_cli(argv, **sweep["env"])
    deadline = time.monotonic() + 300
    while "resuming" not in final.stdout:                  # printed once it holds the run's lock
        assert final.proc.is_alive() and time.monotonic() < deadline, final.stderr[-3000:]
        time.sleep(0.05)
    second = start_cli(argv, **sweep["env"])
    assert second.wait() == 2, second.stderr[-3000:]
    assert final.proc.is_alive(), "the resumed run ended before the second one tried: nothing was tested"
    assert "is being written by another process" in second.stderr and str(run) in second.stderr
    assert final.wait() == 0, final.stderr[-3000:]
    assert not (run / "error.json").exists()
    assert not list((run / "checkpoints").glob(".*.tmp")), "the half-written checkpoint was not cleaned up"
    _assert_same_run(run, reference)


def _two_checkpoints(folder: Path) -> tuple[Path, Path]:
    first = checkpoint.save(folder, 4, {"step": 4, "w": torch.arange(1000.0)})
    second = checkpoint.save(folder, 8, {"step": 8, "w": torch.arange(1000.0) * 2})
    return first, second


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no digest", "garbage digest", "empty file"])
def test_damaged_checkpoint_is_skipped_and_refused(tmp_path, damage):
    """A checkpoint write interrupted midway (or damaged later) never loads: latest() falls back to the previous
    verified checkpoint and load() refuses the damaged one."""
    first, second = _two_checkpoints(tmp_path)
    assert checkpoint.latest(tmp_path) == second
    data = second.read_bytes()
    if damage == "truncated":
        second.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        second.write_bytes(data[:-100] + bytes([data[-100] ^ 1]) + data[-99:])
    elif damage == "no digest":                            # killed between the rename and the digest
        second.with_suffix(".sha256").unlink()
    elif damage == "garbage digest":
        second.with_suffix(".sha256").write_text("0" * 64)
    else:
        second.write_bytes(b"")
    assert checkpoint.latest(tmp_path) == first
    assert checkpoint.load(first)["step"] == 4
    with pytest.raises(ValueError, match="damaged or was not fully written"):
        checkpoint.load(second)


def test_leftover_temporary_checkpoint_is_ignored(tmp_path):
    first, _ = _two_checkpoints(tmp_path)
    (tmp_path / ".step_0000012.pt.abc.tmp").write_bytes(b"half a checkpoint")
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step_0000004.pt", "step_0000008.pt"]
    assert checkpoint.latest(tmp_path).name == "step_0000008.pt"
    checkpoint.save(tmp_path, 12, {"step": 12})              # the next write clears it
    assert not list(tmp_path.glob(".*.tmp"))


# ---- 2. sweep isolation ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_failing_methods_fail_alone_and_the_sweep_finishes(sweep):
    assert sweep["code"] == 1, sweep["stderr"][-3000:]
    lines = {ln.split()[0]: ln for ln in sweep["stdout"].splitlines() if "seed 0" in ln}
    assert "failed" in lines["boom"] and f"injected fault at step {FAULT_AT}" in lines["boom"]
    assert "failed" in lines["nanloss"] and f"non-finite loss at step {FAULT_AT}" in lines["nanloss"]
    assert lines["flip"].split()[-1] == "done"
    flip = _run_dir(sweep["results"])
    assert (flip / "metrics.json").exists() and not (flip / "error.json").exists()
    for method, needle in (("boom", f"RuntimeError: injected fault at step {FAULT_AT}"),
                           ("nanloss", f"NonFiniteLoss: non-finite loss at step {FAULT_AT}")):
        run = _run_dir(sweep["results"], method)
        error = read_json(run / "error.json")
        assert needle in error["error"] and "Traceback" in error["traceback"]
        assert not (run / "metrics.json").exists() and not (run / "model.pt").exists()
        # the last good checkpoint (step 4, before the fault) is kept, verified and loadable
        last = checkpoint.latest(run / "checkpoints")
        assert last is not None and last.name == "step_0000004.pt" and checkpoint.verified(last)
        assert checkpoint.load(last)["step"] == 4
    csv = (sweep["results"] / "smoke" / "results.csv").read_text()
    assert ",flip," in csv and ",boom," not in csv and ",nanloss," not in csv


@pytest.mark.slow
def test_status_and_report_show_the_failures(sweep, capsys):
    assert main(["status", "--scale", "smoke", "--results", str(sweep["results"])]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert f"RuntimeError: injected fault at step {FAULT_AT}" in rows["boom/seed0"]
    assert f"NonFiniteLoss: non-finite loss at step {FAULT_AT}" in rows["nanloss/seed0"]
    assert "step 4" in rows["nanloss/seed0"]                      # the last checkpoint
    assert rows["flip/seed0"].rstrip().endswith("done")
    for page in ("summary.md", "index.html"):
        text = (sweep["reports"] / page).read_text()
        assert f"injected fault at step {FAULT_AT}" in text and f"non-finite loss at step {FAULT_AT}" in text, page
        assert "failed" in text


def test_inf_loss_is_raised_at_its_step_and_the_good_checkpoint_stays(tmp_path, smoke_scale):
    """(NaN goes through the whole CLI in the sweep above; inf here, on the trainer itself.)"""
    from benchmark.data.train_data import load_training_data
    from benchmark.errors import NonFiniteLoss
    from benchmark.train import TrainPlan, train
    info = discovery.discover(REPO_ROOT / "methods")["clip"]

    class Inf(info.cls):
        def training_step(self, batch, progress):
            out = super().training_step(batch, progress)
            if progress >= 0.5:                            # steps 0, 1 of 4: finite; step 2: inf
                out["loss"] = out["loss"] * float("inf")
            return out

    method = discovery.build_method(discovery.MethodInfo("inf", info.folder, Inf), smoke_scale, cfg={})
    plan = TrainPlan(steps=4, batch_size=8, seed=0, optim=smoke_scale.optim, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step 2: \{'loss': inf"):
        train(method, method, load_training_data(smoke_scale), plan, tmp_path, "cpu", progress_bar=False)
    last = checkpoint.latest(tmp_path / "checkpoints")
    assert last.name == "step_0000002.pt" and checkpoint.load(last)["step"] == 2


# ---- 3. bad input ---------------------------------------------------------------------------------------------------
def _bad_methods(root: Path) -> Path:
    clip = (REPO_ROOT / "methods" / "clip" / "method.py").read_text()
    folders = {
        "nosubclass": ("x = 1\n", None),
        "importerror": ("import nosuchmodule_xyz\n", None),
        "badyaml": (clip, "defaults: {mask_ratio: [0.5\n"),
        "toplevelkey": (clip, "defaults: {}\ndefualts: {}\n"),
        "scalekey": (clip, "defaults: {mask_ratio: 0.5}\nscales: {smoke: {mask_ration: 0.7}}\n"),
        "badratio": (clip, "defaults: {mask_ratio: 1.0}\n"),
        "good": (clip, "defaults: {mask_ratio: 0.5}\n"),
    }
    for name, (code, config) in folders.items():
        (root / name).mkdir(parents=True)
        (root / name / "method.py").write_text(code)
        if config is not None:
            (root / name / "config.yaml").write_text(config)
    return root


def _png(value: int) -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), value % 256, np.uint8)).save(buf, format="png")
    return buf.getvalue()


def _shard(path: Path, n: int, start: int = 0) -> Path:
    import webdataset as wds
    with wds.TarWriter(str(path)) as w:
        for i in range(start, start + n):
            w.write({"__key__": f"{i:06d}", "png": _png(i), "txt": f"a red circle number {i}"})
    return path


@pytest.fixture
def bad_shards(tmp_path) -> Path:
    """shard-000: 300 good samples; shard-001: 10 samples, the file cut inside a member; shard-002: garbage."""
    folder = tmp_path / "shards"
    folder.mkdir()
    _shard(folder / "shard-000.tar", 300)
    cut = _shard(folder / "shard-001.tar", 10, start=1000)
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.7)])
    (folder / "shard-002.tar").write_bytes(np.random.default_rng(0).bytes(5000))
    return folder


def test_bad_input_exits_2_naming_the_input_and_the_fix_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                           bad_shards):
    monkeypatch.setenv("MASKBENCH_METHODS", str(_bad_methods(tmp_path / "methods")))
    (tmp_path / "few").mkdir()
    _shard(tmp_path / "few" / "shard-000.tar", 20)
    (tmp_path / "few" / "shard-001.tar").write_bytes(b"not a tar file at all" * 100)
    missing = str(tmp_path / "nowhere")
    cases = [   # (command line, what the message must name: the input, then the fix)
        (["run", "--methods", "nosuch"], ["'nosuch'", "available: "]),
        (["eval", "--methods", "nosuch"], ["'nosuch'", "available: "]),
        (["run", "--methods", "nosubclass"], ["nosubclass", "exactly one Method subclass"]),
        (["run", "--methods", "importerror"], ["importerror", "nosuchmodule_xyz"]),
        (["run", "--methods", "badyaml"], ["badyaml/config.yaml", "not valid YAML"]),
        (["run", "--methods", "toplevelkey"], ["toplevelkey/config.yaml", "only the keys 'defaults', 'scales'"]),
        (["run", "--methods", "scalekey"], ["mask_ration", "add them to 'defaults'"]),
        (["run", "--methods", "badratio"], ["badratio.mask_ratio=1.0", "outside [0, 1)"]),
        (["run", "--methods", "good", "--set", "good.mask_ratio=1.0"], ["good.mask_ratio=1.0", "[0, 1)"]),
        (["run", "--methods", "good", "--set", "good.mask_ratio=-0.1"], ["good.mask_ratio=-0.1", "[0, 1)"]),
        (["run", "--methods", "good", "--set", "good.mask_ratio"], ["good.mask_ratio", "METHOD.KEY=VALUE"]),
        (["run", "--methods", "good", "--set", "nosuch.x=1"], ["'nosuch'", "available"]),
        (["run", "--methods", "good", "--seeds", "0", "-3"], ["--seeds -3", "non-negative integers"]),
        (["run", "--methods", "good", "--seeds", "one"], ["--seeds 'one'", "non-negative integers"]),
        (["eval", "--methods", "good", "--seeds", "-1"], ["--seeds -1", "non-negative integers"]),
        (["run", "--methods", "good", "--scale", "nosuch"], ["'nosuch'", "smoke"]),
        (["run", "--methods", "good", "--dataset-root", missing], [f"--dataset-root {missing}", "does not exist"]),
        (["eval", "--methods", "good", "--dataset-root", missing], [f"--dataset-root {missing}", "does not exist"]),
        (["run", "--methods", "good", "--data", f"{missing}/shard-{{000..001}}.tar"],
         [f"{missing}/shard-000.tar", "--data"]),
        (["run", "--methods", "good", "--data", f"{missing}/pairs.csv"], [f"{missing}/pairs.csv", "path,caption"]),
        (["run", "--methods", "good", "--data", str(tmp_path / "few" / "shard-{000..001}.tar")],
         ["shard-001.tar", "re-create the shards"]),
        (["eval", "--methods", "good"], ["no finished run", "benchmark run"]),
    ]
    for argv, needles in cases:
        res = tmp_path / "results"
        code = main([*argv, "--results", str(res), *(["--scale", "smoke"] if "--scale" not in argv else [])])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        for needle in needles:
            assert needle in err, (argv, needle, err)
        assert not res.exists(), f"{argv} wrote {sorted(map(str, res.rglob('*')))}"
    # a results path reaches `#SBATCH --output=` lines, where a line break would start a directive of its own
    injected = str(tmp_path / "r\n#SBATCH --uid=0")
    assert main(["run", "--methods", "good", "--scale", "smoke", "--cluster", "slurm", "--results", injected]) == 2
    assert "--results" in capsys.readouterr().err and not Path(injected).exists()


def test_corrupt_shard_members_are_skipped_and_counted(bad_shards, smoke_scale, capsys):
    """A truncated member and a garbage shard among 300 good samples: skipped, counted and reported; the good
    samples are all read."""
    from benchmark.data.readers import ReadReport, read_pairs_from_shards
    from benchmark.data.train_data import load_training_data
    urls = [str(p) for p in sorted(bad_shards.glob("shard-*.tar"))]
    images, captions, report = read_pairs_from_shards(urls, 32, ReadReport())
    assert len(captions) == report.read >= 300 and report.skipped >= 2
    assert captions[:300] == [f"a red circle number {i}" for i in range(300)]
    data = load_training_data(smoke_scale, str(bad_shards / "shard-{000..002}.tar"))
    assert len(data) == report.read
    err = capsys.readouterr().err
    assert f"skipped {report.skipped}" in err and "shard-" in err


@pytest.mark.slow
def test_different_config_in_the_same_results_folder_is_refused_and_nothing_changes(sweep, in_methods, tmp_path,
                                                                                    capsys):
    """A finished run (flip) and a failed one with checkpoints (nanloss), asked again with another config: exit
    2 before anything starts (the default local cluster included), every file byte-identical."""
    results = tmp_path / "results"
    for method in ("flip", "nanloss"):
        shutil.copytree(_run_dir(sweep["results"], method), _run_dir(results, method))
    before = _snapshot(results)
    for argv, differs in ((["--methods", "flip", "--set", "flip.mask_ratio=0.75"], "method_config"),
                          (["--methods", "flip", "--match", "samples"], "match"),
                          (["--methods", "flip,nanloss", "--set", "nanloss.at_step=7"], "method_config")):
        code = main(["run", "--scale", "smoke", "--results", str(results), "--no-report", *argv])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "holds a run with a different config" in err and differs in err and "--force" in err
        assert _snapshot(results) == before
        assert sorted(p.name for p in (results / "smoke").iterdir()) == ["flip", "nanloss"]


# ---- 5. security ----------------------------------------------------------------------------------------------------
SOURCE_DIRS = ("benchmark", "methods", "slurm")


def _calls():
    """(file:line, dotted callee, ast.Call) of every call in the harness, the methods and the Slurm scripts."""
    for folder in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}", ast.unparse(node.func), node


def _kw(node: ast.Call, name: str):
    kw = next((k for k in node.keywords if k.arg == name), None)
    return kw.value.value if kw is not None and isinstance(kw.value, ast.Constant) else kw


def test_every_torch_load_is_weights_only_and_nothing_else_unpickles():
    loads, bad = [], []
    for where, func, node in _calls():
        if func in ("torch.load", "torch.serialization.load"):
            loads.append(where)
            if _kw(node, "weights_only") is not True:
                bad.append(f"{where}: {func} without weights_only=True")
        if func.split(".")[-1] in ("load", "loads", "Unpickler") and func.split(".")[0] in ("pickle", "dill",
                                                                                           "joblib", "cloudpickle"):
            bad.append(f"{where}: {func} runs any code a file holds")
        if func in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (None, False):
            bad.append(f"{where}: {func} with allow_pickle")
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            bad.append(f"{where}: {func}; use yaml.safe_load")
    found = {where.split(":")[0] for where in loads}       # every model and checkpoint load goes through these two
    assert {"benchmark/model.py", "benchmark/checkpoint.py"} <= found, \
        f"the scan missed a loader ({loads}); is it looking in the right place?"
    assert not bad, "\n".join(bad)


def test_no_shell_strings():
    bad = []
    for where, func, node in _calls():
        if func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                    "asyncio.create_subprocess_shell", "eval", "exec"):
            bad.append(f"{where}: {func}")
        if _kw(node, "shell") not in (None, False):
            bad.append(f"{where}: {func}(..., shell=...)")
        if func.startswith("subprocess.") and node.args and not isinstance(node.args[0], (ast.List, ast.Name,
                                                                                           ast.Tuple)):
            bad.append(f"{where}: {func} with a command string")
    assert not bad, "\n".join(bad)


class _Payload:
    """Unpickling this creates a folder: proof that code in the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_pickle_is_refused_by_every_loader(tmp_path, smoke_scale):
    marker = tmp_path / "code-ran"
    evil = {"step": 1, "method": {"w": torch.zeros(2)}, "payload": _Payload(marker)}
    # the payload is live: a plain (unsafe) load runs it
    torch.save(evil, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    # a checkpoint with a matching digest (as a resume would find it)
    folder = tmp_path / "checkpoints"
    path = checkpoint.save(folder, 1, evil)
    assert checkpoint.latest(folder) == path
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(path)
    # an exported model.pt (`benchmark eval`) and a UTA teacher
    from benchmark.runs import RunSpec, load_exported
    spec = RunSpec(method="clip", seed=0, scale="smoke", results=str(tmp_path / "results"))
    spec.dir.mkdir(parents=True)
    torch.save({"visual.proj": _Payload(marker)}, spec.dir / "model.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_exported(spec, smoke_scale, "cpu")
    from benchmark.model import load_clip          # what UTA loads its teacher (run or checkpoint file) with
    with pytest.raises(pickle.UnpicklingError):
        load_clip(spec.dir / "model.pt", smoke_scale, what="uta.teacher_checkpoint")
    # a CIFAR batch (the python pickles torchvision reads) from the dataset root
    from benchmark.errors import UserError
    from benchmark.evaluation.real_datasets import read_cifar
    cifar = tmp_path / "datasets" / "cifar10" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    (cifar / "batches.meta").write_bytes(pickle.dumps({"label_names": ["cat"]}, protocol=2))
    (cifar / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0],
                                                     "payload": _Payload(marker)}, protocol=2))
    with pytest.raises(UserError, match="test_batch is not a plain CIFAR pickle.*posix.mkdir"):
        read_cifar(tmp_path / "datasets", "cifar10", "test", 32)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["Clip", "my-method", "x;touch pwned", "two words", "abc\n", "_private0",
                                  "a" * 65, "émile"])
def test_method_folder_names_that_could_reach_paths_or_sbatch_are_refused(tmp_path, monkeypatch, capsys, name):
    root = tmp_path / "methods"
    (root / name).mkdir(parents=True)
    (root / name / "method.py").write_text((REPO_ROOT / "methods" / "clip" / "method.py").read_text())
    shutil.copytree(REPO_ROOT / "methods" / "clip", root / "clip")
    infos = discovery.discover(root)
    assert infos["clip"].ok
    if name in infos:                                  # '_private0' is skipped as a private folder
        assert not infos[name].ok and "lower-case letters" in infos[name].error
    monkeypatch.setenv("MASKBENCH_METHODS", str(root))
    res = tmp_path / "results"
    assert main(["run", "--methods", name, "--scale", "smoke", "--results", str(res)]) == 2
    assert main(["run", "--methods", "all", "--scale", "smoke", "--results", str(res), "--set",
                 f"{name}.x=1"]) == 2
    capsys.readouterr()
    assert not res.exists()
    assert not discovery.NAME_RE.match(name)
