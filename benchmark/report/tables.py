"""The summary table: methods x tasks, one main metric per task, mean ± std over seeds, compute columns.

One pandas DataFrame (``summary_frame``) holds the numbers; Markdown, LaTeX and CSV are written from it.
A task with several datasets (SugarCrepe's subsets, several zero-shot sets) is scored by the mean of its
datasets' main metric first, per run, as DataComp averages its tasks; mean and spread are then over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.report.collect import Results

COMPUTE = [("train_flops", "train FLOPs"), ("samples_seen", "samples seen"), ("wall_time_s", "wall time (s)"),
           ("images_per_s", "images/s"), ("mask_ratio", "mask ratio")]


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


def summary_frame(res: Results) -> pd.DataFrame:
    """Index: methods (CLIP first) then a 'chance' row. Per task: mean, std (sample, ddof=1), seeds, incomplete.
    Then the runs' state and compute means over finished runs."""
    infos = task_infos(res)
    scores = run_scores(res)
    runs = res.runs
    data = {}
    for method in res.methods:
        row: dict = {}
        m_issues = res.issues[res.issues["method"] == method]
        for task, info in infos.items():
            v = scores.loc[(scores["method"] == method) & (scores["task"] == task), "value"]
            v = v * (100 if info.percent else 1)
            cell_issues = m_issues[m_issues["task"].isna() | (m_issues["task"] == task)]
            row[f"{task} mean"] = v.mean() if len(v) else np.nan
            row[f"{task} std"] = v.std() if len(v) > 1 else np.nan
            row[f"{task} seeds"] = int(len(v))
            row[f"{task} incomplete"] = issue_text(cell_issues)
        mine = runs[runs["method"] == method]
        done = mine[mine["status"] == "done"]
        states = mine["status"].value_counts()
        row["runs"] = ", ".join([f"{states.get('done', 0)}/{len(res.seeds)} done"] +
                                [f"{n} {s}" for s, n in states.items() if s != "done"])
        for key, _ in COMPUTE:
            row[key] = pd.to_numeric(done[key], errors="coerce").mean() if len(done) else np.nan
        data[method] = row
    chance = {f"{t} mean": info.chance if info.chance is not None else np.nan for t, info in infos.items()}
    frame = pd.DataFrame.from_dict(data, orient="index")
    frame = pd.concat([frame, pd.DataFrame([chance], index=["chance"])])
    for task in infos:
        frame[f"{task} seeds"] = frame[f"{task} seeds"].astype("Int64")
    frame.index.name = "method"
    frame.attrs["tasks"] = infos
    return frame


def best_methods(frame: pd.DataFrame, task: str) -> set[str]:
    """Methods with the highest mean on ``task`` (ties all marked); higher is better for every main metric."""
    col = frame.drop(index="chance", errors="ignore")[f"{task} mean"].dropna()
    if col.empty:
        return set()
    return set(col[np.isclose(col, col.max(), rtol=0, atol=1e-9)].index)


def _num(x, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def cell_text(frame: pd.DataFrame, method: str, task: str, pm: str = "±", escape=lambda s: s,
              issue=lambda s: s) -> str:
    """'6.2 ± 1.5 (n=2)', with the cell's incomplete seeds after it; ``issue`` marks that part up."""
    row = frame.loc[method]
    if method == "chance":
        return "" if pd.isna(row[f"{task} mean"]) else _num(row[f"{task} mean"])
    n, mean, std, issues = int(row[f"{task} seeds"]), row[f"{task} mean"], row[f"{task} std"], \
        row[f"{task} incomplete"]
    if n == 0:
        return issue(escape(issues or "no result"))
    text = escape(f"{_num(mean)} {pm} {_num(std)} (n={n})" if n > 1 else f"{_num(mean)} (n=1)")
    return text + (" " + issue(escape(f"[{issues}]")) if issues else "")


def _compute_text(key: str, value) -> str:
    if pd.isna(value):
        return "–"
    if key == "train_flops":
        return f"{value:.3g}"
    if key == "samples_seen":
        return f"{value:,.0f}"
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


def notes(res: Results, frame: pd.DataFrame) -> list[str]:
    """The caption's facts: what a cell is, each task's metric and datasets, chance, compute, matching."""
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    match = sorted(set(res.runs["match"].dropna()))
    lines = [f"Scale `{res.scale}`; seeds {', '.join(map(str, res.seeds)) or 'none'}; compute matched on "
             f"{' / '.join(match) or 'unknown'} (`--match`).",
             "Each task cell: mean ± sample standard deviation (ddof=1) over seeds, n = seeds with a result; "
             "**bold** = best mean in the column (higher is better). Values in %.",
             "The `chance` row is the score of a random guess on each task's datasets."]
    for task, info in infos.items():
        if not info.datasets:
            lines.append(f"`{task}`: no result in any run (see the incomplete results below).")
        elif len(info.datasets) == 1:
            lines.append(f"`{task}`: {info.metric} on `{info.datasets[0]}`; chance {_chance(info)}.")
        else:
            lines.append(f"`{task}`: {info.metric} averaged over {len(info.datasets)} datasets per run "
                         f"(as DataComp averages a task's datasets): {', '.join(f'`{d}`' for d in info.datasets)}; "
                         f"chance {_chance(info)} (mean).")
    lines.append("Compute columns: mean over the finished runs of each method. `train FLOPs` counts every "
                 "training step as measured (FlopCounterMode, attention included); `mask ratio` is the realised "
                 "fraction of image patches dropped, averaged over the logged training steps.")
    if res.external:
        lines.append(f"{', '.join(f'`{m}`' for m in res.external)}: a checkpoint maskbench did not train "
                     "(`eval --checkpoint`), evaluated on the same suite; no training compute is known for it.")
    return lines


def _chance(info: TaskInfo) -> str:
    return "unknown" if info.chance is None else f"{info.chance:.2f}{info.unit}"


def issues_frame(res: Results) -> pd.DataFrame:
    df = res.issues.copy()
    df["task"] = df["task"].fillna("(whole run)")
    return df.sort_values(["method", "seed", "task"]).reset_index(drop=True)


def to_markdown(res: Results, frame: pd.DataFrame) -> str:
    disp = display_frame(frame, bold=lambda s: f"**{s}**", escape=lambda s: str(s).replace("|", "\\|"))
    parts = [f"# Summary at scale `{res.scale}`", "",
             disp.to_markdown(index=False, disable_numparse=True), ""]
    parts += [f"- {line}" for line in notes(res, frame)]
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
    return text.replace("±", r"$\pm$").replace("–", "--")


def to_latex(res: Results, frame: pd.DataFrame) -> str:
    disp = display_frame(frame, bold=lambda s: rf"\textbf{{{s}}}", escape=latex_escape)
    caption = (f"Main metric per task at scale {latex_escape(res.scale)}: mean $\\pm$ sample std over seeds "
               f"(n seeds), in \\%; bold: best per column. Tasks with several datasets average them per run. "
               f"Compute columns: mean over finished runs.")
    body = disp.to_latex(index=False, escape=False, caption=caption, label=f"tab:summary-{res.scale}",
                         column_format="l" * len(disp.columns))
    return "% generated by `python -m benchmark report`; needs \\usepackage{booktabs}\n" + body


def to_csv(frame: pd.DataFrame) -> str:
    infos: dict[str, TaskInfo] = frame.attrs["tasks"]
    renamed = {}
    for task, info in infos.items():
        unit = f" ({info.unit})" if info.unit else ""
        renamed.update({f"{task} mean": f"{task} {info.metric} mean{unit}".replace("  ", " "),
                        f"{task} std": f"{task} {info.metric} std{unit}".replace("  ", " ")})
    return frame.rename(columns=renamed).to_csv()
