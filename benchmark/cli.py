"""maskbench: train and evaluate masked vision-language pretraining methods at matched compute.

Exit status: 0 success, 2 bad input (the message names the input and the fix), 1 when a run failed (the others
still finish; its error is in <run>/error.json and shown by `status` and `report`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from benchmark.errors import UserError


MAX_SEED = 2 ** 32          # numpy's and every data loader's seed range; a seed also names a folder (seed<k>)


def split_list(values: list[str] | str) -> list[str]:
    """``--methods a,b``, ``--methods a b`` and ``--methods a, b`` all give ["a", "b"] (likewise --seeds)."""
    values = [values] if isinstance(values, str) else values
    return [item.strip() for v in values for item in v.split(",") if item.strip()]


def _seeds(values: list[str]) -> list[int]:
    out = []
    for v in split_list(values):
        try:
            s = int(v)
        except ValueError:
            raise UserError(f"--seeds {v!r} is not an integer; pass non-negative integers, e.g. --seeds 0 1 "
                            "or --seeds 0,1") from None
        if s < 0:
            raise UserError(f"--seeds {s} is negative; pass non-negative integers, e.g. --seeds 0 1")
        if s >= MAX_SEED:
            raise UserError(f"--seeds {s} is too large; pass integers from 0 to {MAX_SEED - 1} (32 bits)")
        out.append(s)
    if not out:
        raise UserError("--seeds is empty; pass non-negative integers, e.g. --seeds 0 1")
    return list(dict.fromkeys(out))


def _overrides(values: list[str]) -> dict[str, dict]:
    """``--set flip.mask_ratio=0.75`` -> {"flip": {"mask_ratio": 0.75}} (values parsed as YAML scalars)."""
    out: dict[str, dict] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise UserError(f"--set {item!r} must look like METHOD.KEY=VALUE, e.g. --set flip.mask_ratio=0.75")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: {raw!r} is not a valid value") from None
        out.setdefault(method, {})[name] = value
    return out


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help line ends with its default (flags without one: none shown); descriptions keep their
    line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or not action.option_strings or "%(default)" in text \
                or "default" in text.lower():              # the text says its default in its own words
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        return f"{text} (default: {shown})"


SCALES = "smoke, pocket, cc3m-b16, cc12m-b16, yfcc15m-b16"


def _sub(sub, name: str, help: str, description: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, formatter_class=_HelpFormatter)


def _common(p: argparse.ArgumentParser, methods: bool = True) -> None:
    if methods:
        p.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD",
                       help="'all', or method names separated by commas or spaces (e.g. clip,flip or clip flip)")
        p.add_argument("--seeds", nargs="+", default=None, metavar="SEED",
                       help="non-negative integers separated by commas or spaces (e.g. 0 1 2 or 0,1,2); "
                            "default: the scale's seeds (pocket 0 1 2, others 0)")
    p.add_argument("--scale", default="pocket", help=f"the scale: {SCALES}, a name in scales/, or a scale file "
                   "FILE.yaml (scales/README.md)")
    p.add_argument("--results", default="results", help="results folder; runs go to RESULTS/SCALE/METHOD/seedK")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a method config value (repeatable), e.g. --set flip.mask_ratio=0.75, or a scale "
                        "field: --set scale.batch_size=64, --set scale.optim.lr=1e-3")
    p.add_argument("--match", default="flops", choices=["flops", "samples"],
                   help="matched compute: every method gets the training FLOPs (flops) or the samples (samples) "
                        "of the scale's CLIP run")
    p.add_argument("--data", default=None,
                   help="training data instead of the scale's: webdataset shards (brace pattern) or a CSV of "
                        "image paths and captions")
    p.add_argument("--dataset-root", default=None,
                   help="root folder of real evaluation datasets (read from disk, never downloaded)")
    _csv_flags(p)


def _csv_flags(p: argparse.ArgumentParser) -> None:
    """open_clip's CSV options (open_clip_train/params.py); they set the scale's data.csv_* fields."""
    p.add_argument("--csv-separator", default=None, help="CSV separator (open_clip's default: tab; '\\t' for tab)")
    p.add_argument("--csv-img-key", default=None, help="column of the image paths (open_clip's default: filepath)")
    p.add_argument("--csv-caption-key", default=None, help="column of the captions (open_clip's default: title)")


def _scale_sets(args) -> list:
    """--set scale.KEY=VALUE (YAML values) and the --csv-* flags (literal values) as scale overrides."""
    sets: list = [item.split(".", 1)[1] for item in getattr(args, "set", []) if item.startswith("scale.")]
    for flag, key in (("csv_separator", "data.csv_separator"), ("csv_img_key", "data.csv_img_key"),
                      ("csv_caption_key", "data.csv_caption_key")):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append((key, "\t" if value == "\\t" else value))
    return sets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sub(sub, "list", "list the discovered methods (methods/<name>/method.py)")
    run = _sub(sub, "run", "train and evaluate methods at matched compute",
               "Train, evaluate and report every (method, seed). A finished run is not trained again (--force "
               "retrains it); a\nrun that was stopped resumes from its last checkpoint.")
    _common(run)
    run.add_argument("--cluster", default="local", choices=["local", "debug", "slurm"],
                     help="where runs execute: local = one worker process per run on this machine, debug = in this "
                          "process (pdb works), slurm = submitted to a Slurm cluster (returns at once; follow with "
                          "`status`)")
    run.add_argument("--slurm-profile", default=None, help="YAML profile in slurm/ (with --cluster slurm)")
    run.add_argument("--jobs", type=int, default=None, metavar="N",
                     help="with --cluster local: runs side by side (default: one per CPU core, at most 4, without a "
                          "GPU; 1 with a GPU). On a CPU every run uses one torch thread at any N, so its metrics "
                          "do not depend on N or on the machine's core count")
    _data_flags(run)
    run.add_argument("--force", action="store_true", help="discard existing runs and train them again")
    run.add_argument("--report-to", nargs="+", default=["none"], metavar="TRACKER",
                     help="experiment trackers, as open_clip names them: tensorboard, wandb (commas or spaces), or "
                          "none; one tracker run per (method, seed), written to RUN/tensorboard/ and RUN/wandb/ "
                          "(WANDB_MODE=offline is respected)")
    run.add_argument("--reports", default=None,
                     help="where the report is written (REPORTS/SCALE/); default RESULTS/reports, next to the "
                          "results (the committed report: --reports reports)")
    run.add_argument("--no-report", action="store_true", help="train and evaluate only; write no report")
    ev = _sub(sub, "eval", "re-evaluate finished runs without retraining")
    _common(ev)
    _data_flags(ev)
    ev.add_argument("--checkpoint", default=None, help="evaluate a checkpoint maskbench did not train (an open_clip "
                    "state dict or pretrained file on disk), written as its own row marked external")
    ev.add_argument("--model", default=None, help="with --checkpoint: its open_clip config name (e.g. ViT-B-16) "
                    "or a JSON model-config file")
    ev.add_argument("--name", default=None, help="with --checkpoint: its label in results and reports")
    rep = _sub(sub, "report", "write tables, plots and HTML from the results folder")
    _common(rep, methods=False)
    rep.add_argument("--reports", default=None,
                     help="where the report is written (REPORTS/SCALE/); default RESULTS/reports, next to the "
                          "results (the committed report: --reports reports)")
    st = _sub(sub, "status", "state, progress (step, loss, images/s, ETA) and last checkpoint of every run")
    _common(st, methods=False)
    chk = _sub(sub, "check", "validate method folders (method.py, config.yaml, paper.yaml, README.md); no training",
               "Validate method folders without training: the class, config.yaml at every scale (types and "
               "ranges),\npaper.yaml against its schema (docs/adding-a-method.md). Exit 2 listing every problem.")
    chk.add_argument("names", nargs="*", metavar="METHOD",
                     help="method folders to check, separated by commas or spaces (default: all)")
    pl = _sub(sub, "plan", "steps, FLOPs, GPU-hours, memory per GPU and Slurm jobs of a sweep (nothing runs)",
              "Plan a sweep without training or submitting: per run steps, samples, FLOPs per step, training FLOPs\n"
              "(+ required runs), GPU-hours, peak memory per GPU; then the job waves and their sbatch scripts.")
    _common(pl)
    _data_flags(pl)
    pl.add_argument("--slurm-profile", default=None, help="YAML profile in slurm/ (default: the scale's resources)")
    pl.add_argument("--no-data-check", action="store_true",
                    help="plan even if dataset paths are missing (they are listed; counted on synthetic data)")
    pl.add_argument("--json", default=None, help="also write the plan to this JSON file")
    pl.add_argument("--mfu", type=float, default=0.30, help="model FLOPs utilisation assumed for the GPU-hours")
    pl.add_argument("--gpu-tflops", type=float, default=312.0,
                    help="peak dense bf16 TFLOP/s of one GPU (default: A100)")
    pl.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory of one GPU (default: 80)")
    perf = _sub(sub, "perf", "measure the harness against open_clip and clip_benchmark")
    perf.add_argument("--out", default="reports/perf", help="folder for perf.json and perf.md")
    perf.add_argument("--measures", default="all",
                      help="'all' or a comma-separated subset of p1 (trainer speed), p2 (masking efficiency), "
                           "p3 (method overheads), p4 (evaluation), p5 (end to end), p6 (peak memory), p7 (GPU)")
    perf.add_argument("--repeats", type=int, default=10, help="timed repeats per comparison")
    perf.add_argument("--scale", default="pocket", help="scale of P1-P3 and P6 (smoke for a quick check)")
    perf.add_argument("--scratch", default=None, help="folder for P5's runs and UTA's teacher (default: a temp dir)")
    return parser


def cmd_list(args) -> int:
    from benchmark.discovery import discover
    infos = discover()
    width = max([len(n) for n in infos] + [6])
    for name, info in infos.items():
        if info.ok:
            print(f"{name:<{width}}  {info.cls.paper}\n{'':<{width}}  {info.cls.summary}")
            for v in info.variants.values():           # run one with --methods NAME@VARIANT
                sets = ", ".join(f"{k}={val}" for k, val in v.overrides.items())
                batch = f"batch x{v.batch_multiplier}" if v.batch_multiplier != 1 else ""
                wide = f"image tower x{v.vision_width_multiplier} wide" if v.vision_width_multiplier != 1 else ""
                match = f"--match {v.match}" if v.match else ""
                print(f"{'':<{width}}    @{v.name}: {v.summary} "
                      f"({'; '.join(x for x in (sets, batch, wide, match) if x)})")
        else:
            print(f"{name:<{width}}  BROKEN: {info.error}")
    return 0


def _specs(args, scale_name: str):
    from benchmark.discovery import resolve
    from benchmark.runs import RunSpec
    from benchmark.scale_files import load_scale
    from benchmark.scales import default_seeds
    scale, source = load_scale(scale_name, _scale_sets(args), getattr(args, "data", None))
    infos = resolve(split_list(args.methods))
    seeds = _seeds(args.seeds) if args.seeds else list(default_seeds(scale.name))
    overrides = _overrides([s for s in getattr(args, "set", []) if not s.startswith("scale.")])
    names = {i.name: i for i in infos}
    from benchmark.discovery import discover, overrides_for
    all_infos = discover()
    for method, values in overrides.items():
        base = method.partition("@")[0]
        if base not in all_infos or not all_infos[base].ok:
            raise UserError(f"--set names unknown method {method!r}; available: {', '.join(all_infos)}")
        resolve([method])[0].config(scale.method_config_scale, values)   # validates names, keys, types, ranges
    for info in names.values():
        info.config(scale.method_config_scale, overrides_for(info.name, overrides))
    if any(ord(ch) < 32 for ch in args.results):      # it reaches `#SBATCH --output=` lines: a line break adds one
        raise UserError(f"--results {args.results!r} contains a control character; pass a plain folder path")
    if args.dataset_root and not Path(args.dataset_root).is_dir():
        raise UserError(f"--dataset-root {args.dataset_root} does not exist; pass the folder that holds the "
                        "evaluation datasets (see benchmark/evaluation/real_datasets.py for the layout)")
    from benchmark.tracking import parse_report_to
    report_to = parse_report_to(getattr(args, "report_to", None))
    return scale, [RunSpec(method=i.name, seed=s, scale=scale.name, results=args.results, match=args.match,
                           overrides=overrides, force=getattr(args, "force", False), data=args.data,
                           dataset_root=args.dataset_root, report_to=report_to,
                           scale_def=scale.to_dict() if source else None, scale_source=source)
            for s in seeds for i in infos]


def _jobs(args) -> int:
    """--jobs checked (before anything is written, from ``_refuse_before_writing``), or its default."""
    from benchmark.local_workers import default_jobs
    if args.jobs is None:
        return default_jobs() if args.cluster == "local" else 1
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: give a number of runs side by side, at least 1")
    if args.cluster != "local" and args.jobs != 1:
        raise UserError(f"--jobs {args.jobs} applies to --cluster local only (--cluster {args.cluster} runs "
                        "one after another in this process, or as Slurm jobs); drop --jobs")
    return args.jobs


def _refuse_before_writing(scale, specs, args) -> None:
    """Bad input found before any run starts (and before anything is written), for every run of the sweep (the
    teacher runs a method requires included): a run folder that holds another config or a damaged state file, a
    results or reports folder that cannot be written, and (when the runs train on this machine) training data
    that is missing or corrupt."""
    from benchmark.runs import check_config, check_siblings, identity
    from benchmark.sweep import with_requirements
    if hasattr(args, "jobs"):
        _jobs(args)
    forced = {(s.method, s.seed) for s in specs if s.force}
    for spec in with_requirements(specs):
        check_config(spec, identity(spec))
        # another configuration beside the method's seeds would be averaged with them (issue 17)
        check_siblings(spec, identity(spec), {seed for m, seed in forced if m == spec.method})
    _check_writable(Path(args.results), "--results")
    if hasattr(args, "reports") and not getattr(args, "no_report", False):
        _check_writable(_reports_dir(args), "--reports")
    _check_eval_datasets(scale, args, getattr(args, "cluster", "local"))
    if (args.data or scale.data.kind == "csv") and args.cluster != "slurm":
        from benchmark.data.train_data import load_training_data
        from benchmark.runs import check_resume_data
        data = load_training_data(scale, args.data)
        for spec in specs:
            check_resume_data(spec, data.fingerprint)


def _check_eval_datasets(scale, args, cluster: str) -> None:
    """Every real evaluation dataset readable and every image file present (exit 2 before training); says
    which datasets each family runs on."""
    root = args.dataset_root or scale.data.dataset_root
    if cluster == "slurm" and root and not Path(root).is_dir():
        return                                   # the root may be on the cluster's file system only
    from benchmark.evaluation.suite import check_datasets
    for line in check_datasets(scale, scale.eval_suite, args.dataset_root):
        if root:
            print(f"evaluation: {line}")


def _early_workers(args) -> int:
    """How many local workers ``run`` starts before this process imports torch, so that their start-up (about
    14 s of imports each) overlaps this process's own imports, checks and data generation: ``--jobs``, else one
    per core (at most 4; one where a GPU device node exists), at most one per requested run. A guess made
    without torch: ``launch`` closes the workers it does not need and starts those it lacks."""
    if args.cluster != "local" or (args.jobs is not None and args.jobs < 1):
        return 0
    from benchmark import methods_dir
    from benchmark.local_workers import default_jobs
    from benchmark.scales import default_seeds
    jobs = args.jobs or default_jobs(cpu_only=not Path("/dev/nvidiactl").exists())
    names = split_list(args.methods)
    n_methods = (sum(1 for p in methods_dir().glob("*/method.py")) if names == ["all"] else len(names))
    n_seeds = len(args.seeds) if args.seeds else len(default_seeds(Path(args.scale).stem))
    return min(jobs, n_methods * n_seeds)


def cmd_run(args) -> int:
    from benchmark.local_workers import close_workers, start_local_workers
    workers = start_local_workers(_early_workers(args))
    try:
        from benchmark.launch import launch
        scale, specs = _specs(args, args.scale)
        if not scale.runs_here and args.cluster != "slurm":
            raise UserError(f"scale {scale.name!r} is defined for a GPU cluster (ViT-B/16, {scale.samples:,} "
                            "samples); run it with --cluster slurm --slurm-profile FILE, or use --scale "
                            "smoke|pocket here")
        _refuse_before_writing(scale, specs, args)
        t_data = time.perf_counter()
        if scale.data.kind == "embedded" and not args.data:
            from benchmark.evaluation.sets import embedded_folder
            embedded_folder(scale)                              # generate once, before any job starts
    except BaseException:
        close_workers(workers)
        raise
    t0 = time.perf_counter()
    outcomes = launch(specs, cluster=args.cluster, slurm_profile=args.slurm_profile, jobs=_jobs(args),
                      workers=workers)
    runs_s = time.perf_counter() - t0
    _rebuild_table(args.results, scale.name)
    print(f"\n{len(outcomes)} run(s) in {runs_s:.0f} s at scale {scale.name}:")
    for o in outcomes:
        print(f"  {o.spec.method:<18} seed {o.spec.seed}  {o.status}{'  ' + o.detail if o.detail else ''}")
    if args.cluster == "slurm":
        print(f"\nfollow them with: python -m benchmark status --scale {scale.name} --results {args.results}")
    else:
        _summary(Path(args.results), scale.name)
        t_report = time.perf_counter()
        if not args.no_report:
            _report(args.results, scale.name, _reports_dir(args), _command(args),
                    time.perf_counter() - t_data)
        # where the time went (read by `benchmark perf`, measure P5)
        print(f"timing: data {t0 - t_data:.1f} s, runs {runs_s:.1f} s, report {time.perf_counter() - t_report:.1f} s")
    if any(o.status == "failed" for o in outcomes):
        return 1
    if any(o.status in ("locked", "skipped") for o in outcomes):      # only a lock held elsewhere skips a run
        print("\nrun the same command again once the other process is done: finished runs are skipped",
              file=sys.stderr)
        return 2
    return 0


def _check_writable(folder: Path, option: str) -> None:
    """``folder`` (or the nearest folder above it that exists) is a folder this process can create files in. A
    probe file is created and removed (permission bits alone say nothing for root or a read-only mount)."""
    import errno
    import tempfile
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option} {folder}: {probe} is not a folder; pass a folder path")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".maskbench-write-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        why = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "read-only file system" if e.errno == errno.EROFS else e.strerror or type(e).__name__
        raise UserError(f"cannot write {option} {folder} ({probe}: {why}); pass a writable folder") from None


def _summary(results: Path, scale: str) -> None:
    import pandas as pd
    path = results / scale / "results.csv"
    if not path.exists():
        return
    df = pd.read_csv(path)
    df = df[df["main"]]
    if df.empty:
        return
    # the mean over datasets per run, then over seeds: each seed counts once (as in the report)
    per_run = df.groupby(["method", "seed", "task"])["value"].mean().reset_index()
    table = per_run.pivot_table(index="method", columns="task", values="value", aggfunc="mean")
    seeds = per_run.groupby("method")["seed"].nunique()
    percent = bool((df["value"].abs() <= 1.0).all())
    table = (table * (100 if percent else 1)).round(1)
    table.insert(0, "seeds", seeds)
    unit = "%, " if percent else ""
    print(f"\nmain metric per task ({unit}mean over datasets, then over seeds), {path}:")
    print(table.to_string())


def _rebuild_table(results: str, scale: str) -> None:
    """results.csv from the run folders, on every run, eval and report: a table cut short or missing the rows of a
    run killed before its rebuild is repaired by the next command (benchmark.results.rebuild_csv)."""
    from benchmark.results import rebuild_csv
    rebuild_csv(Path(results), scale)


def _reports_dir(args) -> Path:
    """Where a report goes: --reports, else beside the results (RESULTS/reports), so that a user's own run never
    overwrites the committed reports/."""
    return Path(args.reports) if args.reports else Path(args.results) / "reports"


def _command(args) -> str:
    import shlex
    return "python -m benchmark " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))


def _report(results: str, scale: str, reports: Path, command: str | None = None,
            wall_time_s: float | None = None) -> None:
    try:
        from benchmark import report
    except ImportError:
        return
    out = report.write_reports(Path(results), scale, Path(reports), command=command, wall_time_s=wall_time_s)
    print(f"reports written to {out}")


def cmd_eval(args) -> int:
    if args.checkpoint or args.model or args.name:
        return _eval_external(args)
    from benchmark.runs import reevaluate
    scale, specs = _specs(args, args.scale)
    _check_writable(Path(args.results), "--results")
    _check_eval_datasets(scale, args, "local")
    try:
        for spec in specs:
            m = reevaluate(spec)
            print(f"{spec.label()}: {m['evals']}")
    finally:
        _rebuild_table(args.results, scale.name)
    return 0


def _eval_external(args) -> int:
    from benchmark.external import evaluate_checkpoint
    from benchmark.scale_files import load_scale
    if not args.checkpoint or not args.model:
        raise UserError("--checkpoint FILE and --model NAME go together (--name LABEL optional): e.g. "
                        "eval --checkpoint open_clip_model.pt --model ViT-B-16 --scale SCALE")
    scale, source = load_scale(args.scale, _scale_sets(args))
    if args.dataset_root and not Path(args.dataset_root).is_dir():
        raise UserError(f"--dataset-root {args.dataset_root} does not exist; pass the folder that holds the "
                        "evaluation datasets (see docs/evaluation.md for the layouts)")
    _check_eval_datasets(scale, args, "local")
    m = evaluate_checkpoint(args.checkpoint, args.model, args.name, scale, source, args.results, args.dataset_root)
    print(f"{scale.name}/{m['method']} (external, {m['open_clip_model']}): {m['evals']}")
    return 0


def cmd_report(args) -> int:
    try:
        from benchmark import report
    except ImportError:
        raise UserError("reports are not available in this version") from None
    from benchmark.scale_files import SCALES_DIR, is_scale_file, scale_name
    from benchmark.scales import SCALES, get_scale
    name = scale_name(args.scale)
    if name not in SCALES and not is_scale_file(args.scale) and not (SCALES_DIR / f"{args.scale}.yaml").exists() \
            and not (Path(args.results) / name).is_dir():
        get_scale(args.scale)                   # neither a scale nor a results folder: "unknown scale", not "train"
    _check_writable(_reports_dir(args), "--reports")
    if (Path(args.results) / name).is_dir():
        _check_writable(Path(args.results) / name, "--results")
    _rebuild_table(args.results, name)
    out = report.write_reports(Path(args.results), name, _reports_dir(args), command=_command(args))
    print(f"reports written to {out}")
    return 0


def cmd_status(args) -> int:
    from benchmark import status
    from benchmark.scale_files import scale_name
    return status.main(Path(args.results), scale_name(args.scale))


def cmd_check(args) -> int:
    from benchmark import check
    return check.main(split_list(args.names))


def cmd_plan(args) -> int:
    from benchmark import plan_report
    scale, specs = _specs(args, args.scale)
    return plan_report.main(args, scale, specs)


def cmd_perf(args) -> int:
    from benchmark import perf
    return perf.main(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = [str(a) for a in argv]                   # the report's header states the command
    try:
        return {"list": cmd_list, "run": cmd_run, "eval": cmd_eval, "report": cmd_report,
                "status": cmd_status, "check": cmd_check, "plan": cmd_plan, "perf": cmd_perf}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from benchmark.errors import storage_error
        if storage_error(e) is None:
            raise
        print(f"error: {storage_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; runs resume from their last checkpoint when started again", file=sys.stderr)
        return 130
