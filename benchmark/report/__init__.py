"""Reports (docs/design.md, "Reports"): ``results/<scale>/`` -> ``reports/<scale>/``.

    summary.md / summary.tex / summary.csv   methods x tasks, mean and 95 % intervals, Δ vs CLIP, compute
    paper_<method>.md                        each paper's tables in its own layout, ours beside
    task_bars.png, accuracy_vs_flops.png, loss_vs_flops.png, throughput_vs_mask.png
    index.html                               all of it on one page (figures embedded)
    provenance.json                          commit, command, date, machine, wall time
    runs/<scale>/                            every run's small files, to re-report from (not weights)

Incomplete runs and tasks appear as such in every output.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmark import methods_dir
from benchmark.results import code_version
from benchmark.report import collect, html, paper_tables, plots, provenance, tables


def _write(path: Path, text: str) -> None:
    """Write beside, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(results: Path, scale: str, reports: Path, methods: Path | None = None,
                  command: str | None = None, wall_time_s: float | None = None) -> Path:
    """Write every report for ``scale`` from ``results`` into ``reports/<scale>/``; returns that folder.
    ``command`` and ``wall_time_s``: what produced the results, for the header."""
    res = collect.load(Path(results), scale)
    out = Path(reports) / scale
    out.mkdir(parents=True, exist_ok=True)

    commit = code_version()                      # before anything below is written
    shipped = provenance.ship_runs(res, out)
    head = provenance.header(res, out, shipped, command, wall_time_s, commit)
    _write(out / "provenance.json", json.dumps(head, indent=1) + "\n")
    lines = provenance.header_lines(head)
    summary = tables.summary_frame(res)
    _write(out / "summary.md", tables.to_markdown(res, summary, lines))
    _write(out / "summary.tex", tables.to_latex(res, summary))
    _write(out / "summary.csv", tables.to_csv(summary))

    # one paper per method folder: a variant's runs (flip@mask75) are rows of its method's tables
    bases = dict.fromkeys(m.split("@", 1)[0] for m in res.methods if m not in res.external)
    papers = [paper_tables.build_paper(res, m, Path(methods or methods_dir())) for m in bases]
    for rep in papers:
        _write(out / f"paper_{rep.method}.md", paper_tables.to_markdown(res, rep, lines))
        if rep.error:
            print(f"warning: {rep.error}", file=sys.stderr)

    figures = plots.write_plots(res, out)
    _write(out / "index.html", html.render(res, summary, figures, papers, lines))
    if not res.issues.empty:
        print(f"warning: {len(res.issues)} incomplete result(s) at scale {scale}; see {out / 'summary.md'}",
              file=sys.stderr)
    return out
