"""Command line (DESIGN §9). Exit status: 0 success, 2 bad input (the message names the input and the fix),
1 when a run failed."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from benchmark.errors import UserError


def _seeds(values: list[str]) -> list[int]:
    out = []
    for v in values:
        try:
            s = int(v)
        except ValueError:
            raise UserError(f"--seeds {v!r} is not an integer; pass non-negative integers, e.g. --seeds 0 1") from None
        if s < 0:
            raise UserError(f"--seeds {s} is negative; pass non-negative integers, e.g. --seeds 0 1")
        out.append(s)
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


def _common(p: argparse.ArgumentParser, methods: bool = True) -> None:
    if methods:
        p.add_argument("--methods", default="all", help="'all' or comma-separated method names")
        p.add_argument("--seeds", nargs="+", default=None,
                       help="one or more non-negative integers (default: the scale's seeds; pocket 0 1 2, others 0)")
    p.add_argument("--scale", default="pocket", help="smoke, pocket, cc3m-b16, cc12m-b16, yfcc15m-b16")
    p.add_argument("--results", default="results", help="results folder (default results/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the discovered methods")
    run = sub.add_parser("run", help="train and evaluate methods at matched compute")
    _common(run)
    run.add_argument("--cluster", default="local", choices=["local", "debug", "slurm"])
    run.add_argument("--slurm-profile", default=None, help="YAML profile in slurm/ (with --cluster slurm)")
    run.add_argument("--match", default="flops", choices=["flops", "samples"])
    run.add_argument("--force", action="store_true", help="discard existing runs and train again")
    run.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                     help="override a method config value")
    run.add_argument("--data", default=None, help="training data: webdataset shards (brace pattern) or a CSV")
    run.add_argument("--dataset-root", default=None, help="root of real evaluation datasets")
    run.add_argument("--reports", default="reports")
    run.add_argument("--no-report", action="store_true")
    ev = sub.add_parser("eval", help="re-evaluate finished runs without retraining")
    _common(ev)
    ev.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    ev.add_argument("--match", default="flops", choices=["flops", "samples"])
    ev.add_argument("--data", default=None)
    ev.add_argument("--dataset-root", default=None)
    rep = sub.add_parser("report", help="write tables, plots and HTML from results/")
    _common(rep, methods=False)
    rep.add_argument("--reports", default="reports")
    st = sub.add_parser("status", help="state, progress and last checkpoint of every run")
    _common(st, methods=False)
    perf = sub.add_parser("perf", help="measure the harness against open_clip and clip_benchmark")
    perf.add_argument("--out", default="reports/perf")
    perf.add_argument("--measures", default="all")
    perf.add_argument("--repeats", type=int, default=10)
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
        else:
            print(f"{name:<{width}}  BROKEN: {info.error}")
    return 0


def _specs(args, scale_name: str):
    from benchmark.discovery import resolve
    from benchmark.runs import RunSpec
    from benchmark.scales import default_seeds, get_scale
    scale = get_scale(scale_name)
    infos = resolve(args.methods)
    seeds = _seeds(args.seeds) if args.seeds else list(default_seeds(scale.name))
    overrides = _overrides(getattr(args, "set", []))
    names = {i.name: i for i in infos}
    from benchmark.discovery import discover
    all_infos = discover()
    for method, values in overrides.items():
        if method not in all_infos or not all_infos[method].ok:
            raise UserError(f"--set names unknown method {method!r}; available: {', '.join(all_infos)}")
        all_infos[method].config(scale.name, values)          # validates keys, types and ranges now
    for info in names.values():
        info.config(scale.name, overrides.get(info.name, {}))
    if any(ord(ch) < 32 for ch in args.results):      # it reaches `#SBATCH --output=` lines: a line break adds one
        raise UserError(f"--results {args.results!r} contains a control character; pass a plain folder path")
    if args.dataset_root and not Path(args.dataset_root).is_dir():
        raise UserError(f"--dataset-root {args.dataset_root} does not exist; pass the folder that holds the "
                        "evaluation datasets (see benchmark/evaluation/real_datasets.py for the layout)")
    return scale, [RunSpec(method=i.name, seed=s, scale=scale.name, results=args.results, match=args.match,
                           overrides=overrides, force=getattr(args, "force", False), data=args.data,
                           dataset_root=args.dataset_root) for s in seeds for i in infos]


def _refuse_before_writing(scale, specs, args) -> None:
    """Bad input found before any run starts (and before anything is written): a run folder that holds another
    config, and (when the runs train on this machine) training data that is missing or corrupt."""
    from benchmark.runs import check_config, identity
    for spec in specs:
        check_config(spec, identity(spec))
    if args.data and args.cluster != "slurm":
        from benchmark.data.train_data import load_training_data
        load_training_data(scale, args.data)


def cmd_run(args) -> int:
    from benchmark.launch import launch
    scale, specs = _specs(args, args.scale)
    if not scale.runs_here and args.cluster != "slurm":
        raise UserError(f"scale {scale.name!r} is defined for a GPU cluster (ViT-B/16, {scale.samples:,} samples); "
                        "run it with --cluster slurm --slurm-profile FILE, or use --scale smoke|pocket here")
    _refuse_before_writing(scale, specs, args)
    t_data = time.perf_counter()
    if scale.data.kind == "embedded" and not args.data:
        from benchmark.evaluation.sets import embedded_folder
        embedded_folder(scale)                                  # generate once, before any job starts
    t0 = time.perf_counter()
    outcomes = launch(specs, cluster=args.cluster, slurm_profile=args.slurm_profile)
    runs_s = time.perf_counter() - t0
    print(f"\n{len(outcomes)} run(s) in {runs_s:.0f} s at scale {scale.name}:")
    for o in outcomes:
        print(f"  {o.spec.method:<18} seed {o.spec.seed}  {o.status}{'  ' + o.detail if o.detail else ''}")
    if args.cluster == "slurm":
        print(f"\nfollow them with: python -m benchmark status --scale {scale.name} --results {args.results}")
    else:
        _summary(Path(args.results), scale.name)
        t_report = time.perf_counter()
        if not args.no_report:
            _report(args.results, scale.name, args.reports)
        # where the time went (read by `benchmark perf`, measure P5)
        print(f"timing: data {t0 - t_data:.1f} s, runs {runs_s:.1f} s, report {time.perf_counter() - t_report:.1f} s")
    return 1 if any(o.status != "done" and o.status != "submitted" for o in outcomes) else 0


def _summary(results: Path, scale: str) -> None:
    import pandas as pd
    path = results / scale / "results.csv"
    if not path.exists():
        return
    df = pd.read_csv(path)
    df = df[df["main"]]
    if df.empty:
        return
    table = df.pivot_table(index="method", columns="task", values="value", aggfunc="mean")
    print(f"\nmain metric per task (mean over seeds), {path}:")
    print(table.round(3).to_string())


def _report(results: str, scale: str, reports: str) -> None:
    try:
        from benchmark import report
    except ImportError:
        return
    report.write_reports(Path(results), scale, Path(reports))


def cmd_eval(args) -> int:
    from benchmark.runs import reevaluate
    _, specs = _specs(args, args.scale)
    for spec in specs:
        m = reevaluate(spec)
        print(f"{spec.label()}: {m['evals']}")
    return 0


def cmd_report(args) -> int:
    try:
        from benchmark import report
    except ImportError:
        raise UserError("reports are not available in this version") from None
    out = report.write_reports(Path(args.results), args.scale, Path(args.reports))
    print(f"reports written to {out}")
    return 0


def cmd_status(args) -> int:
    from benchmark import status
    return status.main(Path(args.results), args.scale)


def cmd_perf(args) -> int:
    from benchmark import perf
    return perf.main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"list": cmd_list, "run": cmd_run, "eval": cmd_eval, "report": cmd_report,
                "status": cmd_status, "perf": cmd_perf}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; runs resume from their last checkpoint when started again", file=sys.stderr)
        return 130
