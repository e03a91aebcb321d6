"""``index.html``: the summary, the incomplete results, the figures, every paper's tables and the runs on one
page that opens from disk without a server (figures embedded as base64 PNG; the files are also beside it)."""
from __future__ import annotations

import base64
import html
import re

import pandas as pd

from benchmark.report import paper_tables, tables
from benchmark.report.collect import Results
from benchmark.report.plots import Figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d0d0; padding: 0.3rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } tr:nth-child(even) td { background: #fafafa; }
.issue { color: #a3000b; font-weight: 600; }
.warn { border-left: 5px solid #d9822b; background: #fff6ec; padding: 0.6rem 1rem; margin: 1rem 0; }
.ok { border-left: 5px solid #2b8a3e; background: #eefaf0; padding: 0.6rem 1rem; margin: 1rem 0; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; max-width: 60rem; }
code { background: #f1f3f5; padding: 0 0.2rem; border-radius: 3px; }
.meta { color: #555; font-size: 0.92rem; } nav a { margin-right: 1rem; }
"""


def inline(text: str) -> str:
    """HTML for one line of the Markdown the tables module writes: `code` and **bold**, everything escaped."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _table(df: pd.DataFrame, escaped: bool = False) -> str:
    return df.to_html(index=False, escape=not escaped, border=0, na_rep="")


def _img(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode()
    return (f'<figure id="{fig.path.stem}"><img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}" '
            f'data-file="{fig.path.name}"><figcaption><strong>{html.escape(fig.title)}</strong>. '
            f'{inline(fig.caption)} (<a href="{fig.path.name}">{fig.path.name}</a>)</figcaption></figure>')


def _runs_table(res: Results) -> str:
    runs = res.runs.copy()
    for col, fmt in (("train_flops", "{:.3g}"), ("flops_per_step", "{:.3g}"), ("wall_time_s", "{:,.1f}"),
                     ("images_per_s", "{:,.1f}"), ("mask_ratio", "{:.2f}"), ("samples_seen", "{:,.0f}"),
                     ("steps", "{:,.0f}")):
        runs[col] = [fmt.format(v) if pd.notna(v) else "" for v in pd.to_numeric(runs[col], errors="coerce")]
    runs["status"] = [s if s == "done" else f'<span class="issue">{html.escape(s)}</span>' for s in runs["status"]]
    runs["detail"] = [html.escape(str(d)) for d in runs["detail"]]
    runs["code_version"] = [html.escape(str(c)[:12]) if pd.notna(c) else "" for c in runs["code_version"]]
    for col in ("required_flops", "total_flops"):
        runs[col] = [f"{v:.3g}" if pd.notna(v) else "" for v in pd.to_numeric(runs[col], errors="coerce")]
    runs["builds_on"] = [html.escape(str(b)) if b else "" for b in runs["builds_on"]]
    keep = [c for c in runs.columns if c not in ("match", "machine", "pool_hash", "eval_time_s")]
    return _table(runs[keep].fillna(""), escaped=True)


def render(res: Results, summary: pd.DataFrame, figures: list[Figure],
           papers: list[paper_tables.PaperReport], header: list[str] = ()) -> str:
    issues = tables.issues_frame(res)
    disp = tables.display_frame(summary, bold=lambda s: f"<strong>{s}</strong>", escape=html.escape,
                                issue=lambda s: f'<span class="issue">{s}</span>')
    body = [f"<h1>maskbench report: scale <code>{html.escape(res.scale)}</code></h1>"]
    body += [f'<div class="warn">{inline(w)}</div>' for w in tables.warnings(res, summary)]
    body += ['<ul class="meta">' + "".join(f"<li>{inline(h)}</li>" for h in header) + "</ul>",
             f'<p class="meta">{len(res.methods)} method(s): {html.escape(", ".join(res.methods))}; '
             f'seeds {html.escape(", ".join(map(str, res.seeds)))}; results from <code>{html.escape(str(res.root))}'
             f'</code>. {inline(paper_tables.scale_description(res.scale))}.</p>',
             '<nav><a href="#summary">Summary</a><a href="#delta">Δ vs CLIP</a><a href="#incomplete">Incomplete '
             'results</a><a href="#figures">Figures</a><a href="#papers">Paper tables</a><a href="#runs">Runs</a>'
             '</nav>']
    if issues.empty:
        body.append('<div class="ok">Every run finished and every task has a result.</div>')
    else:
        body.append(f'<div class="warn"><strong>Incomplete results:</strong> {len(issues)} (run, task) '
                    f'entr{"y" if len(issues) == 1 else "ies"} have no number; they are marked '
                    f'<span class="issue">in red</span> and listed <a href="#incomplete">below</a>.</div>')
    body += [f'<h2 id="summary">{inline(tables.title(res))}</h2>', _table(disp, escaped=True),
             "<ul>" + "".join(f"<li>{inline(n)}</li>" for n in tables.notes(res, summary)) + "</ul>",
             '<p class="meta">Also as <a href="summary.md">Markdown</a>, <a href="summary.tex">LaTeX</a>, '
             '<a href="summary.csv">CSV</a> (every bound as a column).</p>']
    deltas = tables.delta_frame(summary, escape=html.escape)
    if not deltas.empty and tables.BASELINE in res.methods:
        body += [f'<h2 id="delta">Difference to CLIP, paired by seed; compute matched on '
                 f'{inline(tables.match_mode(res))}</h2>',
                 _table(deltas, escaped=True),
                 "<p>Each cell: mean over seeds of (method − CLIP on the same seed) [95 % t interval] (n = paired "
                 "seeds); with n = 1, the paired bootstrap over the evaluation items both models answered.</p>"]
    body.append('<h2 id="incomplete">Incomplete results</h2>')
    body.append("<p>None.</p>" if issues.empty else _table(issues.astype(str)))
    body.append('<h2 id="figures">Figures</h2>')
    body += [_img(f) for f in figures]
    body.append('<h2 id="papers">Paper tables</h2>')
    for rep in papers:
        body.append(_paper(res, rep))
    body += ['<h2 id="runs">Runs</h2>', _runs_table(res)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>maskbench report: {html.escape(res.scale)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _paper(res: Results, rep: paper_tables.PaperReport) -> str:
    p = rep.paper
    out = [f'<h3 id="paper-{html.escape(rep.method)}">{html.escape(rep.method)}: '
           f'{html.escape(p.get("title", "paper tables"))}</h3>']
    if rep.error:
        return "\n".join(out + [f'<p class="issue">paper.yaml unavailable: {html.escape(rep.error)}</p>'])
    out.append(f'<p class="meta">{html.escape(p["authors"])}. <em>{html.escape(p["title"])}</em>. '
               f'{html.escape(p["venue"])}. <a href="{html.escape(p["url"])}">{html.escape(p["url"])}</a>. '
               f'Code: {html.escape(p["code"])}. Also as <a href="paper_{html.escape(rep.method)}.md">Markdown</a>.'
               "</p>")
    for t in rep.tables:
        out += [f"<h4>{html.escape(t.id)}: {html.escape(t.title)} (ours: <code>--match "
                f"{html.escape(paper_tables._match(res))}</code>)</h4>",
                "<p>" + " ".join(inline(c) for c in t.caption) + "</p>", _table(t.frame.astype(str))]
        if t.notes:
            out.append("<ul>" + "".join(f"<li>{inline(n)}</li>" for n in t.notes) + "</ul>")
    return "\n".join(out)
