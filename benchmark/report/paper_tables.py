"""Each paper's tables in the paper's own layout (rows and columns as published, from ``paper.yaml``), with our
numbers beside the published ones.

Where our scale is the paper's (same data and model, e.g. ``cc12m-b16`` for a CC12M ViT-B/16 column) our
number stands beside the paper's, and ours − paper is the reproduction gap when the runs followed the papers'
protocol (``--match samples``). Elsewhere (always at ``pocket``) no number of ours goes under the paper's
columns: a table compares what is comparable, each row's difference from the CLIP baseline (the paper's Δ vs its
CLIP row beside our Δ vs our CLIP run, paired by seed, with its 95 % interval), whether the signs agree, and the
ranking of the methods.

A column or table may name the scales it is comparable with (``scale: cc12m-b16`` or a list); without it the
paper's ``setting`` and column name are matched against the scale's dataset and model (``cc12m``, ``b16``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmark.errors import UserError
from benchmark.report.collect import Results
from benchmark.report import stats
from benchmark.report.tables import issue_text

PAPER_KEYS = ("title", "authors", "venue", "url", "code")
TABLE_KEYS = ("id", "title", "source", "status", "setting", "columns", "rows")
# Where a table's published numbers come from (docs/adding-a-method.md, "paper.yaml").
STATUS_TAGS = {
    "C-paper": "read in the paper's own text or tables",
    "C-page": "read on the official project page or in the authors' README tables",
    "C-code": "read in the official code or its configs",
    "C": "read in a primary source other than the full paper (abstract, the authors' repository)",
    "C3": "a third party's verbatim copy of the paper's numbers (another paper's or repository's table)",
    "S": "a secondary summary (aggregator pages, write-ups): plausible, not authoritative",
}


@dataclass
class PaperTable:
    id: str
    title: str
    caption: list[str]              # source, the paper's setting and ours, what is compared
    frame: pd.DataFrame             # display text, the paper's rows and columns with ours beside
    numbers: pd.DataFrame           # the numbers behind ``frame`` (tests and the HTML read them)
    notes: list[str] = field(default_factory=list)   # ranking, empty columns, per-row sources


@dataclass
class PaperReport:
    method: str
    paper: dict
    tables: list[PaperTable]
    error: str = ""                 # paper.yaml missing or invalid: said instead of the tables


# ---- paper.yaml -------------------------------------------------------------------------------------------

def load_paper(path: Path) -> dict:
    """Read and check a paper.yaml (schema: docs/adding-a-method.md); a bad file is named with the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None

    def bad(where: str, what: str):
        raise UserError(f"{path}: {where} {what}; the schema is in docs/adding-a-method.md (\"paper.yaml\"), "
                        "an example in methods/flip/paper.yaml")

    if not isinstance(raw, dict) or not isinstance(raw.get("paper"), dict):
        bad("top level", "must be a mapping with 'paper' and 'tables'")
    for key in PAPER_KEYS:
        if not isinstance(raw["paper"].get(key), str):
            bad(f"paper.{key}", "must be a string")
    tables = raw.get("tables")
    if not isinstance(tables, list) or not tables:
        bad("tables", "must be a non-empty list")
    ids = set()
    for i, t in enumerate(tables):
        where = f"tables[{i}]"
        if not isinstance(t, dict):
            bad(where, "must be a mapping")
        for key in TABLE_KEYS:
            if key not in t:
                bad(where, f"lacks '{key}'")
        if t["status"] not in STATUS_TAGS:
            bad(f"{where}.status", f"is {t['status']!r}; use one of {', '.join(STATUS_TAGS)}")
        if t["id"] in ids:
            bad(f"{where}.id", f"{t['id']!r} is used twice")
        ids.add(t["id"])
        if not isinstance(t["columns"], list) or not t["columns"]:
            bad(f"{where}.columns", "must be a non-empty list")
        names = []
        for j, c in enumerate(t["columns"]):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                bad(f"{where}.columns[{j}]", "must be a mapping with a string 'name'")
            ours = c.get("ours")
            if ours is not None and not (isinstance(ours, dict) and isinstance(ours.get("task"), str)
                                         and isinstance(ours.get("metric"), str)):
                bad(f"{where}.columns[{j}].ours", "must be {task: ..., metric: ...}")
            names.append(c["name"])
        if not isinstance(t["rows"], list) or not t["rows"]:
            bad(f"{where}.rows", "must be a non-empty list")
        for j, r in enumerate(t["rows"]):
            if not isinstance(r, dict) or not isinstance(r.get("name"), str) or "method" not in r:
                bad(f"{where}.rows[{j}]", "must be a mapping with 'name', 'method' (a method folder or null) "
                                          "and 'values'")
            values = r.get("values") or {}
            if not isinstance(values, dict):
                bad(f"{where}.rows[{j}].values", "must map column names to numbers")
            unknown = set(values) - set(names)
            if unknown:
                bad(f"{where}.rows[{j}].values", f"names unknown column(s) {sorted(unknown)}; columns: {names}")
            for k, v in values.items():
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                    bad(f"{where}.rows[{j}].values[{k!r}]", f"must be a number or null, got {v!r}")
    return raw


# ---- comparability ----------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def _scale_tokens(scale: str) -> tuple[str, str] | None:
    """('cc12m', 'b16') for 'cc12m-b16'; None for the embedded scales, which no paper used."""
    m = re.fullmatch(r"([a-z0-9]+)-([a-z]\d+)", scale)
    return (m.group(1), m.group(2)) if m else None


def comparable(scale: str, table: dict, column: dict) -> bool:
    """Whether our numbers at ``scale`` measure what the paper's column measures (same data and model)."""
    declared = column.get("scale", table.get("scale"))
    if declared is not None:
        return scale in ([declared] if isinstance(declared, str) else list(declared))
    tokens = _scale_tokens(scale)
    if tokens is None:
        return False
    from benchmark.scales import SCALES
    datasets = {t[0] for t in map(_scale_tokens, SCALES) if t}
    data, model = tokens
    setting, col = _norm(table.get("setting", "")), _norm(column["name"])
    if model not in setting + col:
        return False
    if any(d in col for d in datasets):
        return data in col
    return data in setting and not any(d in setting for d in datasets - {data})


def scale_description(scale: str) -> str:
    from benchmark.scales import SCALES
    s = SCALES.get(scale)
    if s is None:
        return f"scale `{scale}`"
    v = s.model["vision_cfg"]
    model = (f"ViT {s.image_size} px, patch {v['patch_size']}, width {v['width']} x {v['layers']} layers"
             if s.image_size < 224 else "ViT-B/16, 224 px")
    data = (f"embedded shapes data ({s.data.train_size:,} generated pairs)" if s.data.kind == "embedded"
            else f"{s.data.kind} data at {s.data.path}")
    templates = (f"; zero-shot templates `{s.zeroshot_templates}`" if s.data.kind != "embedded"
                 else "; zero-shot templates of the embedded set")
    return f"scale `{scale}`: {model}; {data}; budget = {s.samples:,} samples of the CLIP reference run{templates}"


# ---- our numbers ------------------------------------------------------------------------------------------

def our_scores(res: Results, method: str, ours: dict) -> pd.Series:
    """Per seed: ``ours.metric`` of ``ours.task`` (mean over its datasets, or the one named by
    ``ours.dataset``), in % for fractions."""
    rows = res.rows[(res.rows["method"] == method) & (res.rows["task"] == ours["task"]) &
                    (res.rows["metric"] == ours["metric"])]
    if ours.get("dataset"):
        want = str(ours["dataset"])
        rows = rows[(rows["dataset"] == want) | rows["dataset"].str.endswith("/" + want)]
    per_seed = rows.groupby("seed")["value"].mean()
    return per_seed * 100 if len(per_seed) and (per_seed.abs() <= 1).all() else per_seed


def _fmt(x: float, sign: bool = False) -> str:
    return f"{x:+.1f}" if sign else f"{x:.1f}"


def _published(x) -> str:
    """A published number as the paper prints it (36.45 stays 36.45)."""
    return "" if x is None else str(x)


def _est_text(est: stats.Estimate, sign: bool = False) -> str:
    """'48.0 [23.0, 73.0] (n=2)'; '+6.0 (n=1; items [1.0, 11.0])'; '' without a value."""
    if est.n == 0 or np.isnan(est.mean):
        return ""
    ci = "" if np.isnan(est.low) else f"[{_fmt(est.low, sign)}, {_fmt(est.high, sign)}]"
    if est.n == 1:
        return f"{_fmt(est.mean, sign)} (n=1{'; items ' + ci if ci else ''})"
    return f"{_fmt(est.mean, sign)} {ci} (n={est.n})"


def our_items(res: Results, method: str, ours: dict) -> dict[int, list[np.ndarray]]:
    """Per seed, the per-item scores behind ``our_scores`` (in %), when the column is the task's main metric
    over all its datasets; empty otherwise (no bootstrap then)."""
    if ours.get("dataset"):
        return {}
    main = res.main[res.main["task"] == ours["task"]]
    if main.empty or set(main["metric"]) != {ours["metric"]}:
        return {}
    return {seed: [a * 100 for a in arrays] for (m, seed, task), arrays in res.items.items()
            if m == method and task == ours["task"]}


def _missing_text(res: Results, method: str, task: str) -> str:
    if method not in res.methods:
        return "not run"
    issues = res.issues[(res.issues["method"] == method) &
                        (res.issues["task"].isna() | (res.issues["task"] == task))]
    return issue_text(issues) or "no result"


def _sign_agreement(paper_delta: float, ours: stats.Estimate) -> str:
    """Whether our Δ vs CLIP has the paper's sign: yes / no where our interval over seeds excludes 0."""
    if ours.n == 0 or np.isnan(ours.mean) or paper_delta is None or np.isnan(paper_delta):
        return ""
    same = np.sign(ours.mean) == np.sign(paper_delta)
    if ours.n < 2:
        return f"{'same' if same else 'opposite'} sign (n=1: not a finding)"
    if not ours.excludes_zero:
        return "undecided (our interval includes 0)"
    return "yes" if same else "no"


def _match(res: Results) -> str:
    modes = sorted(set(res.runs["match"].dropna()))
    return "/".join(modes) or "unknown"


# ---- one table --------------------------------------------------------------------------------------------

def build_table(res: Results, table: dict) -> PaperTable:
    """One published table, ours beside it. At the paper's scale (same data and model): our number and ours −
    paper (a reproduction gap only under ``--match samples``). Elsewhere no number of ours under the paper's
    columns: the paper's Δ vs its CLIP row beside our Δ vs our CLIP (paired by seed, with its interval) and
    whether the signs agree."""
    columns, rows = table["columns"], table["rows"]
    base = table.get("baseline", "clip")     # an ablation table: variants against the method's default run
    label = "CLIP" if base == "clip" else base
    baseline = {}        # column name -> the paper's CLIP row (first row of method clip with a value)
    for c in columns:
        for r in rows:
            if r.get("method") == base and (r.get("values") or {}).get(c["name"]) is not None:
                baseline[c["name"]] = r
                break
    others = any(r.get("method") not in (None, base) for r in rows)
    clip_ours = {c["name"]: our_scores(res, base, c["ours"]) for c in columns if c.get("ours")}
    clip_items = {c["name"]: our_items(res, base, c["ours"]) for c in columns if c.get("ours")}
    match = _match(res)

    disp, nums = [], []
    for r in rows:
        values = r.get("values") or {}
        method = r.get("method")
        d, n = {"row (as published)": r["name"], "our method": method or "—"}, {"row": r["name"]}
        for c in columns:
            name, paper = c["name"], values.get(c["name"])
            d[f"{name}: paper" if c.get("ours") else name] = _published(paper)
            n[f"{name} paper"] = paper
            if not c.get("ours"):
                continue
            ours = our_scores(res, method, c["ours"]) if method else pd.Series(dtype=float)
            est = stats.over_seeds(list(ours))
            n.update({f"{name} ours": est.mean, f"{name} ours n": est.n, f"{name} ours low": est.low,
                      f"{name} ours high": est.high})
            if comparable(res.scale, table, c):
                d[f"{name}: ours"] = "—" if not method else \
                    (_est_text(est) or _missing_text(res, method, c["ours"]["task"]))
                gap = est.mean - paper if paper is not None and est.n else np.nan
                d[f"{name}: ours − paper"] = "" if np.isnan(gap) else _fmt(gap, sign=True)
                n[f"{name} ours - paper"] = gap
            if others and name in baseline:
                base = baseline[name]["values"][name]
                pd_delta = paper - base if paper is not None else np.nan
                paired = stats.Estimate(np.nan, 0)
                if method and len(ours) and len(clip_ours[name]):
                    paired = stats.paired_difference(ours.to_dict(), clip_ours[name].to_dict(),
                                                     our_items(res, method, c["ours"]), clip_items[name])
                d[f"{name}: paper Δ vs {label}"] = "" if np.isnan(pd_delta) else _fmt(pd_delta, sign=True)
                if not method:
                    d[f"{name}: ours Δ vs {label}"] = "—"
                elif paired.n == 0:
                    d[f"{name}: ours Δ vs {label}"] = "no CLIP run" if len(ours) else \
                        _missing_text(res, method, c["ours"]["task"])
                else:
                    d[f"{name}: ours Δ vs {label}"] = _est_text(paired, sign=True)
                d[f"{name}: signs agree"] = _sign_agreement(pd_delta, paired) if method else ""
                if r is baseline[name]:
                    d[f"{name}: paper Δ vs {label}"] = d[f"{name}: ours Δ vs {label}"] = "baseline"
                    d[f"{name}: signs agree"] = ""
                n.update({f"{name} paper delta": pd_delta, f"{name} ours delta": paired.mean,
                          f"{name} ours delta low": paired.low, f"{name} ours delta high": paired.high,
                          f"{name} ours delta n": paired.n})
        disp.append(d)
        nums.append(n)

    with_ours = [c for c in columns if c.get("ours")]
    same = [c["name"] for c in with_ours if comparable(res.scale, table, c)]
    differ = [c["name"] for c in with_ours if not comparable(res.scale, table, c)]
    caption = [f"**{table['title']}**; ours matched on {match} (`--match {match}`). Published: {table['source']}; "
               f"paper's setting: {table['setting']}."]
    if differ:
        caption.append(f"Our scale (`{res.scale}`) differs from the paper's for {_names(differ)}: "
                       + ("only differences to CLIP are compared (ours: paired by seed, 95 % interval)."
                          if others else "none of our numbers is comparable with these columns."))
    if same:
        caption.append(f"Our scale matches the paper's for {_names(same)}: "
                       + ("`ours − paper` is the reproduction gap (`--match samples`, the papers' protocol)."
                          if match == "samples" else "`ours − paper` is not a reproduction gap: under `--match "
                                                     "flops` each method trains for other steps than the paper."))

    notes = []
    if differ and not others:
        c = next(c for c in with_ours if c["name"] in differ)
        est = stats.over_seeds(list(clip_ours[c["name"]]))
        if est.n:
            notes.append(f"For reference only, our CLIP's `{c['ours']['task']}` {c['ours']['metric']}: "
                         f"{_est_text(est)}.")
    no_ours = [c["name"] for c in columns if not c.get("ours")]
    if no_ours:
        notes.append(f"No counterpart in our suite for {_names(no_ours)}: published numbers only.")
    for c in with_ours:
        line = ranking(res, rows, c)
        if line:
            notes.append(line)
    sources = [(r["name"], r["source"]) for r in rows if r.get("source")]
    notes += [f"Source of row {name!r}: {src}." for name, src in sources]
    return PaperTable(table["id"], table["title"], caption, pd.DataFrame(disp), pd.DataFrame(nums), notes)


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def ranking(res: Results, rows: list[dict], column: dict) -> str:
    """The order of our methods by the paper's numbers and by ours on one column, and whether they agree."""
    name = column["name"]
    paper, ours, seeds = {}, {}, {}
    for r in rows:
        m, v = r.get("method"), (r.get("values") or {}).get(name)
        if m and v is not None and m not in paper:
            scores = our_scores(res, m, column["ours"])
            if len(scores):
                paper[m], ours[m], seeds[m] = v, scores.mean(), len(scores)
    if len(paper) < 2:
        return ""
    by_paper, by_ours = _order(paper), _order(ours)
    verdict = "same order" if by_paper == by_ours else "order differs"
    few = min(seeds.values())
    caveat = "; n=1: a single seed's order, not a finding" if few < 2 else f"; means over ≥{few} seeds"
    return f"Ranking on {name!r} (by mean): paper {by_paper}; ours {by_ours} ({verdict}{caveat})."


def _order(scores: dict[str, float], tol: float = 1e-6) -> str:
    """'flip > clip = uta': best first, ties joined by '='."""
    ranked = sorted(scores, key=lambda m: (-scores[m], m))
    text = ranked[0]
    for prev, m in zip(ranked, ranked[1:]):
        text += (" = " if abs(scores[prev] - scores[m]) <= tol else " > ") + m
    return text


# ---- one paper --------------------------------------------------------------------------------------------

def build_paper(res: Results, method: str, methods_dir: Path) -> PaperReport:
    path = Path(methods_dir) / method / "paper.yaml"
    if not path.exists():
        return PaperReport(method, {}, [], error=f"no {path}: add the paper's tables there to compare")
    try:
        raw = load_paper(path)
    except UserError as e:
        return PaperReport(method, {}, [], error=str(e))
    return PaperReport(method, raw["paper"], [build_table(res, t) for t in raw["tables"]])


def to_markdown(res: Results, report: PaperReport, header: list[str] = ()) -> str:
    p = report.paper
    out = [f"# {report.method}: {p.get('title', 'paper tables')}", ""]
    out += [f"- {h}" for h in header] + ([""] if header else [])
    if report.error:
        return "\n".join(out + [f"**paper.yaml unavailable**: {report.error}", ""])
    out += [f"{p['authors']}. *{p['title']}*. {p['venue']}. {p['url']}  ", f"Code: {p['code']}", "",
            f"Our results: {scale_description(res.scale)}, from `{res.root}`.", ""]
    for t in report.tables:
        out += [f"## {t.id}: {t.title} (ours: `--match {_match(res)}`)", ""]
        out += [" ".join(t.caption), ""]
        out += [t.frame.map(lambda s: str(s).replace("|", "\\|")).to_markdown(index=False, disable_numparse=True), ""]
        out += [f"- {n}" for n in t.notes] + ([""] if t.notes else [])
    return "\n".join(out)
