"""``python -m benchmark check [METHOD ...]``: validate method folders without training anything.

Per folder (docs/adding-a-method.md): ``method.py`` imports and defines exactly one ``Method`` subclass with
``paper`` and ``summary``; ``config.yaml`` resolves at every scale (types, ``ranges:``); ``paper.yaml`` follows the
schema (every field, status tags, row methods that exist, ``ours`` naming an evaluation task); ``README.md`` exists.
Every problem is listed with the file it is in; exit 2 when there is one. The training-step contract is checked by
``pytest tests/test_contract.py -k METHOD``.
"""
from __future__ import annotations

from pathlib import Path

from benchmark.discovery import discover
from benchmark.errors import UserError
from benchmark.scales import EMBEDDED_SUITE, PAPER_SUITE, SCALES

TASKS = set(EMBEDDED_SUITE) | set(PAPER_SUITE)


def problems(name: str, infos: dict) -> list[str]:
    info = infos[name]
    out: list[str] = []
    if not info.ok:
        return [f"{info.folder}: {info.error}"]
    for f in ("method.py", "config.yaml", "paper.yaml", "README.md"):
        if not (info.folder / f).exists():
            out.append(f"{info.folder / f} is missing")
    if not info.cls.paper or not info.cls.summary:
        out.append(f"{info.folder / 'method.py'}: set the class attributes `paper` (a short citation) and "
                   "`summary` (one line: what the method changes)")
    for scale in SCALES:
        try:
            info.config(scale)
        except UserError as e:
            out.append(f"scale {scale}: {e}")
    paper = info.folder / "paper.yaml"
    if paper.exists():
        from benchmark.report.paper_tables import load_paper
        try:
            raw = load_paper(paper)
        except UserError as e:
            out.append(str(e))
        else:
            for i, t in enumerate(raw["tables"]):
                for j, r in enumerate(t["rows"]):
                    base, at, variant = str(r["method"]).partition("@")
                    if r["method"] is not None and base not in infos:
                        out.append(f"{paper}: tables[{i}].rows[{j}].method {r['method']!r} is no method folder; "
                                   f"use one of {', '.join(infos)} or null")
                    elif r["method"] is not None and at and variant not in infos[base].variants:
                        out.append(f"{paper}: tables[{i}].rows[{j}].method {r['method']!r} names no variant of "
                                   f"{base} (config.yaml variants: {', '.join(infos[base].variants) or 'none'})")
                for j, c in enumerate(t["columns"]):
                    task = (c.get("ours") or {}).get("task")
                    if task is not None and task not in TASKS:
                        out.append(f"{paper}: tables[{i}].columns[{j}].ours.task {task!r} is no evaluation "
                                   f"task; use one of {', '.join(sorted(TASKS))}")
    return out


def main(names: list[str], methods_dir: Path | None = None) -> int:
    infos = discover(methods_dir)
    if not names or names == ["all"]:
        names = list(infos)
    unknown = [n for n in names if n not in infos]
    if unknown:
        raise UserError(f"check: unknown method(s) {', '.join(unknown)}; method folders: {', '.join(infos)}")
    failed = 0
    for name in names:
        found = problems(name, infos)
        if found:
            failed += 1
            print(f"{name}: {len(found)} problem(s)")
            for p in found:
                print(f"  - {p}")
        else:
            print(f"{name}: ok (method.py, config.yaml at {len(SCALES)} scales, paper.yaml, README.md)")
    if failed:
        print(f"\n{failed} of {len(names)} method folder(s) have problems; the contract tests: "
              f".venv/bin/python -m pytest tests/test_contract.py -k {names[0]}")
        return 2
    return 0
