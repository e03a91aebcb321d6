"""The summary tables: methods x tasks, one main metric per task with its 95 % interval (``stats``), the
difference to CLIP paired by seed, and the compute each row really used.

One pandas DataFrame (``summary_frame``) holds the numbers; Markdown, LaTeX and CSV are written from it.
A task with several datasets (SugarCrepe's subsets, several zero-shot sets) is scored by the mean of its
datasets' main metric first, per run, as DataComp averages its tasks; mean and interval are then over seeds.
A column's best mean is marked only where the interval of its seed-paired difference to the runner-up excludes
0 (``winner``); with one seed nothing is marked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.report import stats
from benchmark.report.collect import Results

COMPUTE = [("train_flops", "train FLOPs"), ("total_flops", "total FLOPs"), ("builds_on", "builds on"),
           ("samples_seen", "samples seen"), ("wall_time_s", "wall time (s)"), ("images_per_s", "images/s"),
           ("mask_ratio", "mask ratio")]
BASELINE = "clip"


@dataclass
class TaskInfo:
    name: str
    metric: str            # the main metric ("" when no run produced one)
    datasets: list[str]
    chance: float | None   # mean chance level over the task's datasets, in display units
    percent: bool          # values are fractions shown as %

    @property
    def unit(self) -> str:
        return "%" if self.percent else ""

    @property
    def header(self) -> str:
        return f"{self.name} {self.metric}".strip() + (" (%)" if self.percent else "")


def run_scores(res: Results) -> pd.DataFrame:
    """One main-metric score per (method, seed, task): the mean over the task's datasets."""
    main = res.main
    if main.empty:
        return pd.DataFrame(columns=["method", "seed", "task", "value", "n_datasets"])
    return (main.groupby(["method", "seed", "task"], as_index=False)
            .agg(value=("value", "mean"), n_datasets=("dataset", "nunique")))


def task_infos(res: Results) -> dict[str, TaskInfo]:
    infos = {}
    main = res.main
    for task in res.tasks:
        rows = main[main["task"] == task]
        metrics = sorted(set(rows["metric"]))
        percent = rows.empty or bool((rows["value"].abs() <= 1.0).all())
        chance = rows.drop_duplicates("dataset")["chance"].dropna()
        infos[task] = TaskInfo(task, "/".join(metrics), sorted(set(rows["dataset"])),
                               float(chance.mean()) * (100 if percent else 1) if len(chance) else None, percent)
    return infos


def issue_text(issues: pd.DataFrame) -> str:
    """'seed 1: failed; seeds 0, 1: task error' for the issues of one (method, task) cell; prefixed by the
    method when the issues span several methods."""
    parts = []
    several = issues["method"].nunique() > 1
    for (method, status), group in issues.groupby(["method", "status"], sort=False):
        seeds = sorted({int(s) for s in group["seed"]})
        who = f"{method} " if several else ""
        parts.append(f"{who}seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: {status}")
    return "; ".join(parts)


def _per_seed(scores: pd.DataFrame, method: str, task: str, factor: float) -> dict[int, float]:
    s = scores[(scores["method"] == method) & (scores["task"] == task)]
    return {int(seed): float(v) * factor for seed, v in zip(s["seed"], s["value"])}


def _items(res: Results, method: str, task: str, factor: float) -> dict[int, list[np.ndarray]]:
    return {seed: [a * factor for a in arrays] for (m, seed, t), arrays in res.items.items()
            if m == method and t == task}


def winner(per_seed: dict[str, dict[int, float]]) -> tuple[str | None, str]:
    """(the method to mark best, why) for one task column: the best mean is marked only where the 95 % interval
    of its difference to the runner-up, paired by seed, lies above 0; a tie or an interval over 0 marks none."""
    means = {m: float(np.mean(list(v.values()))) for m, v in per_seed.items() if v}
    if len(means) < 2:
        return None, "fewer than two methods with a result: no winner marked"
    top, runner = sorted(means, key=lambda m: (-means[m], m))[:2]
    d = stats.paired_difference(per_seed[top], per_seed[runner])
    if d.n < 2:
        return None, (f"best mean {top}, runner-up {runner}: {d.n} paired seed(s), no interval over seeds: "
                      "no winner marked")
    text = f"{top} − {runner} = {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] (n={d.n} paired seeds)"
    if d.excludes_zero and d.mean > 0:
        return top, f"**{top}**: {text}, interval above 0"
    return None, f"no winner marked: {text}, interval includes 0"


def summary_frame(res: Results) -> pd.DataFrame:
    """Index: methods (CLIP first) then a 'chance' row. Per task: mean, std (ddof=1), n seeds, the 95 % t
    interval over seeds (``low``/``high``), the bootstrap interval over items of a single run (``items low``/
    ``items high``, n = 1 only), the difference to CLIP paired by seed with its interval, whether the cell is the
    marked winner, and its incomplete seeds. Then the runs' state and the compute means over finished runs."""
    infos = task_infos(res)
    scores = run_scores(res)
    runs = res.runs
    data, winners = {}, {}
    per_task = {task: {m: _per_seed(scores, m, task, 100 if info.percent else 1) for m in res.methods}
                for task, info in infos.items()}
    unranked = own_budget(res)            # trained on another budget: a lead there is not a lead at matched compute
    for task in infos:
        winners[task] = winner({m: v for m, v in per_task[task].items() if m not in unranked})
    for method in res.methods:
        row: dict = {}
        m_issues = res.issues[res.issues["method"] == method]
        for task, info in infos.items():
            factor = 100 if info.percent else 1
            mine = per_task[task][method]
            est = stats.over_seeds(list(mine.values()))
            cell_issues = m_issues[m_issues["task"].isna() | (m_issues["task"] == task)]
            items = _items(res, method, task, factor)
            boot = stats.over_items(next(iter(items.values()))) if est.n == 1 and len(items) == 1 else None
            row[f"{task} mean"] = est.mean
            row[f"{task} std"] = float(np.std(list(mine.values()), ddof=1)) if est.n > 1 else np.nan
            row[f"{task} seeds"] = est.n
            row[f"{task} low"], row[f"{task} high"] = est.low, est.high
            row[f"{task} items low"] = boot.low if boot else np.nan
            row[f"{task} items high"] = boot.high if boot else np.nan
            if method != BASELINE and BASELINE in res.methods:
                d = stats.paired_difference(mine, per_task[task][BASELINE], items,
                                            _items(res, BASELINE, task, factor))
                row.update({f"{task} Δ clip": d.mean, f"{task} Δ clip low": d.low, f"{task} Δ clip high": d.high,
                            f"{task} Δ clip n": d.n, f"{task} Δ clip interval": d.kind})
            else:
                row.update({f"{task} Δ clip": np.nan, f"{task} Δ clip low": np.nan, f"{task} Δ clip high": np.nan,
                            f"{task} Δ clip n": 0, f"{task} Δ clip interval": ""})
            row[f"{task} best"] = winners[task][0] == method
            row[f"{task} incomplete"] = issue_text(cell_issues)
        mine_runs = runs[runs["method"] == method]
        done = mine_runs[mine_runs["status"] == "done"]
        states = mine_runs["status"].value_counts()
        row["runs"] = ", ".join([f"{states.get('done', 0)}/{len(res.seeds)} done"] +
                                [f"{n} {s}" for s, n in states.items() if s != "done"])
        for key, _ in COMPUTE:
            if key == "builds_on":
                row[key] = "; ".join(sorted({str(b) for b in done[key] if b})) if len(done) else ""
            else:
                # an unknown total (an external checkpoint) stays unknown: never averaged away
                row[key] = pd.to_numeric(done[key], errors="coerce").mean(skipna=key != "total_flops") \
                    if len(done) else np.nan
        data[method] = row
    chance = {f"{t} mean": info.chance if info.chance is not None else np.nan for t, info in infos.items()}
    frame = pd.DataFrame.from_dict(data, orient="index")
    frame = pd.concat([frame, pd.DataFrame([chance], index=["chance"])])
    for task in infos:
        frame[f"{task} seeds"] = frame[f"{task} seeds"].astype("Int64")
    frame.index.name = "method"
    frame.attrs["tasks"] = infos
    frame.attrs["winners"] = winners
    frame.attrs["unranked"] = unranked
    return frame


def best_methods(frame: pd.DataFrame, task: str) -> set[str]:
    """The method marked best on ``task`` (at most one; see ``winner``)."""
    col = frame.drop(index="chance", errors="ignore")[f"{task} best"]
    return {m for m, b in col.items() if b is True or b == 1}


def single_seed(frame: pd.DataFrame) -> bool:
    """Whether any number in the table rests on one seed."""
    infos = frame.attrs["tasks"]
    body = frame.drop(index="chance", errors="ignore")
    return any(((body[f"{t} seeds"] == 1).fillna(False)).any() for t in infos)


def _interval(low, high, sign: bool = False) -> str:
    f = "{:+.1f}" if sign else "{:.1f}"
    return f"[{f.format(low)}, {f.format(high)}]"


def _num(x, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def cell_text(frame: pd.DataFrame, method: str, task: str, pm: str = "±", escape=lambda s: s,
              issue=lambda s: s) -> str:
    """'27.6 [25.1, 30.1] (n=3)': mean, 95 % t interval over seeds; '27.6 (n=1; items [25.0, 30.2])' for one
    seed (the bootstrap over evaluation items); the cell's incomplete seeds after it, marked up by ``issue``."""
    row = frame.loc[method]
    if method == "chance":
        return "" if pd.isna(row[f"{task} mean"]) else _num(row[f"{task} mean"])
    n, mean, issues = int(row[f"{task} seeds"]), row[f"{task} mean"], row[f"{task} incomplete"]
    if n == 0:
        return issue(escape(issues or "no result"))
    if n > 1:
        text = f"{_num(mean)} {_interval(row[f'{task} low'], row[f'{task} high'])} (n={n})"
    elif pd.notna(row[f"{task} items low"]):
        text = f"{_num(mean)} (n=1; items {_interval(row[f'{task} items low'], row[f'{task} items high'])})"
    else:
        text = f"{_num(mean)} (n=1)"
    return escape(text) + (" " + issue(escape(f"[{issues}]")) if issues else "")


def delta_text(frame: pd.DataFrame, method: str, task: str) -> str:
    """'+3.1 [1.2, 5.0] (n=3)': method − CLIP paired by seed, with its interval (items bootstrap when n=1)."""
    row = frame.loc[method]
    n, d = int(row[f"{task} Δ clip n"]), row[f"{task} Δ clip"]
    if method == BASELINE:
        return "baseline"
    if n == 0 or pd.isna(d):
        return "–"
    ci = "" if pd.isna(row[f"{task} Δ clip low"]) else \
        _interval(row[f"{task} Δ clip low"], row[f"{task} Δ clip high"], sign=True)
    if n == 1:
        return f"{d:+.1f} (n=1{'; items ' + ci if ci else ''})"
    return f"{d:+.1f} {ci} (n={n})"


def _compute_text(key: str, value) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "–" if key != "total_flops" else "unknown"
    if key == "train_flops":
        return f"{value:.3g}"
    if key == "builds_on":
        return str(value) if value else "–"
    if isinstance(value, float) and pd.isna(value):
        return "–"
    if key in ("samples_seen",):
        return f"{value:,.0f}"
    if key == "total_flops":
        return f"{value:.3g}"
    if key == "mask_ratio":
        return f"{value:.2f}"
    return f"{value:,.1f}"


def display_frame(frame: pd.DataFrame, bold, pm: str = "±", escape=lambda s: s, issue=lambda s: s) -> pd.DataFrame:
    """The text of every cell; ``bold(text)`` marks the best per task column, ``escape`` protects the text and
    ``issue`` marks up the incomplete part of a cell."""
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    out = {}
    for method in frame.index:
        row = {"method": escape(method), "runs": escape(frame.loc[method, "runs"]) if method != "chance" else ""}
        for task, info in infos.items():
            text = cell_text(frame, method, task, pm, escape, issue)
            row[escape(info.header)] = bold(text) if method in best_methods(frame, task) else text
        for key, label in COMPUTE:
            row[escape(label)] = "" if method == "chance" else escape(_compute_text(key, frame.loc[method, key]))
        out[method] = row
    return pd.DataFrame.from_dict(out, orient="index")


def delta_frame(frame: pd.DataFrame, escape=lambda s: s) -> pd.DataFrame:
    """Every method but CLIP: its difference to CLIP per task, paired by seed, with the interval."""
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    out = {}
    for method in frame.index:
        if method in ("chance", BASELINE):
            continue
        row = {"method": escape(method)}
        for task, info in infos.items():
            row[escape(f"{info.header}: Δ vs CLIP")] = escape(delta_text(frame, method, task))
        out[method] = row
    return pd.DataFrame.from_dict(out, orient="index")


MATCH_NAMES = {"flops": "training FLOPs (`--match flops`)", "samples": "samples seen (`--match samples`)"}


def primary_match(res: Results) -> str | None:
    """The budget most runs were planned with (a variant may bring its own: ``clip@wide`` trains on samples)."""
    counts = res.runs["match"].dropna().value_counts()
    return sorted(counts.index, key=lambda m: (-counts[m], m != "flops", m))[0] if len(counts) else None


def own_budget(res: Results) -> list[str]:
    """Methods whose runs were planned with another budget than ``primary_match``: shown, never ranked."""
    primary = primary_match(res)
    return sorted(m for m, g in res.runs.groupby("method")
                  if primary is not None and set(g["match"].dropna()) - {primary})


def match_mode(res: Results) -> str:
    """The matching mode of the runs, as a table title names it (rows on their own budget: ``own_budget``)."""
    primary = primary_match(res)
    return MATCH_NAMES.get(primary, f"`{primary}`") if primary else "unknown matching"


def title(res: Results) -> str:
    return f"Summary at scale `{res.scale}`, compute matched on {match_mode(res)}"


SINGLE_SEED_WARNING = ("**Single seed (n = 1): differences between methods are not findings.** An n = 1 cell's "
                       "interval covers only the evaluation items (bootstrap), not the randomness of training; no "
                       "winner is marked. Run `--seeds 0 1 2` for intervals over seeds.")


def warnings(res: Results, frame: pd.DataFrame) -> list[str]:
    """What a reader must see before the table."""
    out = [SINGLE_SEED_WARNING] if single_seed(frame) else []
    body = frame.drop(index="chance", errors="ignore")
    extra = [m for m in body.index if body.loc[m, "builds_on"]]
    if extra:
        what = "; ".join(sorted({str(body.loc[m, "builds_on"]) for m in extra}))
        out.append(f"{', '.join(f'`{m}`' for m in extra)} build(s) on another run ({what}): its own training is "
                   "matched, its total compute (`total FLOPs`) is larger.")
    unranked = [m for m in frame.attrs.get("unranked", []) if m in body.index]
    if unranked:
        out.append(f"{', '.join(f'`{m}`' for m in unranked)} trained on a budget of its own (a variant's `match`, "
                   f"e.g. a teacher trained on the scale's samples), not on the {match_mode(res)} of the other "
                   "rows: its `train FLOPs` say what it spent, and it is not ranked.")
    return out


def notes(res: Results, frame: pd.DataFrame) -> list[str]:
    """The caption's facts: what a cell is, each task's metric and datasets, chance, compute, matching, ranking."""
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    lines = [f"Scale `{res.scale}`; seeds {', '.join(map(str, res.seeds)) or 'none'}; compute matched on "
             f"{match_mode(res)}.",
             "Each task cell: mean over seeds [95 % Student-t interval over seeds] (n = seeds with a result); "
             "with n = 1: the 95 % bootstrap interval over the evaluation items of that one run (evaluation "
             "noise only). Values in %. The `chance` row is the score of a random guess on each task's datasets.",
             "Ranking rule: methods are compared at matched compute of their own training; in each column the "
             "best mean is **bold** only where the 95 % interval of its difference to the runner-up, paired by "
             "seed, lies above 0. A method that builds on another run (`builds on`) also used that run's "
             "training: `total FLOPs` counts both, and a lead bought with more total compute is not a lead at "
             "matched compute."]
    for task, (who, why) in frame.attrs.get("winners", {}).items():
        lines.append(f"`{task}`: {why}.")
    for task, info in infos.items():
        if not info.datasets:
            lines.append(f"`{task}`: no result in any run (see the incomplete results below).")
        elif len(info.datasets) == 1:
            lines.append(f"`{task}`: {info.metric} on `{info.datasets[0]}`; chance {_chance(info)}"
                         f"{_levels_text(res, task)}.")
        else:
            lines.append(f"`{task}`: {info.metric} averaged over {len(info.datasets)} datasets per run "
                         f"(as DataComp averages a task's datasets): {', '.join(f'`{d}`' for d in info.datasets)}; "
                         f"chance {_chance(info)} (mean){_levels_text(res, task)}.")
    lines.append("Compute columns: mean over the finished runs of each method. `train FLOPs` counts every "
                 "training step of the run as measured (FlopCounterMode, attention included); `total FLOPs` adds "
                 "the training of the runs it requires (`builds on`; unknown for an external checkpoint); "
                 "`mask ratio` is the realised fraction of image patches dropped, averaged over the logged steps.")
    if res.external:
        lines.append(f"{', '.join(f'`{m}`' for m in res.external)}: a checkpoint maskbench did not train "
                     "(`eval --checkpoint`), evaluated on the same suite; no training compute is known for it.")
    return lines


def _levels_text(res: Results, task: str) -> str:
    lv = res.levels[res.levels["task"] == task] if not res.levels.empty else res.levels
    return "".join(f"; {name} {g['value'].mean() * 100:.1f}%" for name, g in lv.groupby("level")) if len(lv) else ""


def _chance(info: TaskInfo) -> str:
    return "unknown" if info.chance is None else f"{info.chance:.2f}{info.unit}"


def issues_frame(res: Results) -> pd.DataFrame:
    df = res.issues.copy()
    df["task"] = df["task"].fillna("(whole run)")
    return df.sort_values(["method", "seed", "task"]).reset_index(drop=True)


def to_markdown(res: Results, frame: pd.DataFrame, header: list[str] = ()) -> str:
    esc = lambda s: str(s).replace("|", "\\|")          # noqa: E731
    disp = display_frame(frame, bold=lambda s: f"**{s}**", escape=esc)
    parts = [f"# {title(res)}", ""] + [f"> {w}\n" for w in warnings(res, frame)]
    parts += [f"- {h}" for h in header] + ([""] if header else [])
    parts += [disp.to_markdown(index=False, disable_numparse=True), ""]
    parts += [f"- {line}" for line in notes(res, frame)]
    deltas = delta_frame(frame, escape=esc)
    if not deltas.empty and BASELINE in res.methods:
        parts += ["", f"## Difference to CLIP, paired by seed; compute matched on {match_mode(res)}", "",
                  deltas.to_markdown(index=False, disable_numparse=True), "",
                  "- Each cell: mean over seeds of (method − CLIP on the same seed) [95 % t interval] (n = paired "
                  "seeds); with n = 1, the paired bootstrap over the evaluation items both models answered."]
    parts += ["", "## Incomplete results", ""]
    issues = issues_frame(res)
    if issues.empty:
        parts.append("None: every run finished and every task has a result.")
    else:
        parts.append(f"{len(issues)} incomplete (run, task) entr{'y' if len(issues) == 1 else 'ies'}; their cells "
                     "above show the seeds affected.")
        parts += ["", issues.astype(str).to_markdown(index=False, disable_numparse=True)]
    return "\n".join(parts) + "\n"


def latex_escape(text) -> str:
    text = str(text)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("–", "--").replace("−", "$-$").replace("Δ", r"$\Delta$")


def to_latex(res: Results, frame: pd.DataFrame) -> str:
    disp = display_frame(frame, bold=lambda s: rf"\textbf{{{s}}}", escape=latex_escape)
    warn = " Single seed: differences are not findings." if single_seed(frame) else ""
    caption = (f"Main metric per task at scale {latex_escape(res.scale)}, compute matched on "
               f"{latex_escape(match_mode(res).replace('`', ''))}: mean [95\\% t interval over seeds] (n seeds; "
               f"n=1: bootstrap interval over evaluation items), in \\%. Bold: best mean where its seed-paired "
               f"difference to the runner-up excludes 0. Total FLOPs include required runs.{warn}")
    body = disp.to_latex(index=False, escape=False, caption=caption, label=f"tab:summary-{res.scale}",
                         column_format="l" * len(disp.columns))
    return "% generated by `python -m benchmark report`; needs \\usepackage{booktabs}\n" + body


def to_csv(frame: pd.DataFrame) -> str:
    """Every number of the summary with its bounds as columns (mean, std, n, 95 % t low/high, items bootstrap
    low/high, Δ vs CLIP with low/high and n, best)."""
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    renamed = {}
    for task, info in infos.items():
        unit = f" ({info.unit})" if info.unit else ""
        for key in ("mean", "std", "low", "high", "items low", "items high", "Δ clip", "Δ clip low",
                    "Δ clip high"):
            renamed[f"{task} {key}"] = f"{task} {info.metric} {key}{unit}".replace("  ", " ")
    return frame.rename(columns=renamed).to_csv()
