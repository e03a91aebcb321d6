"""Figures (seaborn, PNG): per-task bars with error bars over seeds, zero-shot accuracy and training loss against
training FLOPs (bands over seeds), and training throughput against the realised mask ratio. One colour and one
marker per method throughout, from seaborn's colour-blind-safe palette."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from benchmark.report.collect import Results  # noqa: E402
from benchmark.report.tables import issue_text, run_scores, task_infos  # noqa: E402

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
DPI = 110


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


def palette(methods: list[str]) -> dict[str, tuple]:
    colours = sns.color_palette("colorblind", n_colors=max(len(methods), 1))
    return {m: colours[i % len(colours)] for i, m in enumerate(methods)}


def markers(methods: list[str]) -> dict[str, str]:
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}


def _mode(res: Results) -> str:
    """The matching mode, as every figure title names it."""
    return "--match " + ("/".join(sorted(set(res.runs["match"].dropna()))) or "unknown")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def task_bars(res: Results, out: Path) -> Figure:
    infos = task_infos(res)
    scores = run_scores(res)
    colours = palette(res.methods)
    tasks = list(infos)
    ncols = min(3, max(len(tasks), 1))
    nrows = (len(tasks) + ncols - 1) // ncols or 1
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        info = infos[task]
        data = scores[scores["task"] == task].copy()
        data["value"] = data["value"] * (100 if info.percent else 1)
        ax.set_title(task, fontsize=11)
        ylabel = f"{info.metric or 'main metric'}{' (%)' if info.percent else ''}"
        ax.set_ylabel(ylabel)
        if data.empty:
            issues = res.issues[res.issues["task"].isna() | (res.issues["task"] == task)]
            ax.text(0.5, 0.5, "no result in any run\n" + _wrap(issue_text(issues) or "not evaluated"),
                    ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#a00")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        order = [m for m in res.methods if m in set(data["method"])]
        sns.barplot(data=data, x="method", y="value", hue="method", order=order, hue_order=order,
                    palette=colours, errorbar="sd", capsize=0.25, err_kws={"linewidth": 1.4}, legend=False, ax=ax)
        sns.stripplot(data=data, x="method", y="value", order=order, color="black", size=4, jitter=0.12,
                      ax=ax)
        lines, labels = [], []
        if info.chance is not None:
            lines.append(ax.axhline(info.chance, color="0.35", linestyle="--", linewidth=1.2))
            labels.append(f"chance {info.chance:.1f}")
        for name, value in reference_levels(res, task, info.percent):
            lines.append(ax.axhline(value, color="#b8860b", linestyle=":", linewidth=1.4))
            labels.append(f"{name} {value:.1f}")
        if lines:
            ax.legend(lines, labels, loc="best", fontsize=8, frameon=True)
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1.0) * 1.12)   # room for the legend
        ax.set_xlabel("")
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(f"Main metric per task at matched compute ({_mode(res)}), scale {res.scale}\n"
                 "bars: mean over seeds; error bars: ±1 sample sd; dots: individual seeds", fontsize=12)
    fig.tight_layout()
    path = out / "task_bars.png"
    _save(fig, path)
    return Figure(path, "Main metric per task",
                  "One panel per task: bar = mean over seeds, error bar = ±1 sample standard deviation, dots = "
                  "seeds, dashed line = chance. Tasks with several datasets average them per run.")


def reference_levels(res: Results, task: str, percent: bool = True) -> list[tuple[str, float]]:
    """Levels besides chance an evaluation set records for ``task`` (zero-shot: colour known, shape not)."""
    lv = res.levels[res.levels["task"] == task] if not res.levels.empty else res.levels
    return [(name, float(g["value"].mean()) * (100 if percent else 1)) for name, g in lv.groupby("level")] \
        if len(lv) else []


def _wrap(text: str, width: int = 38) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width))


def accuracy_vs_flops(res: Results, out: Path) -> Figure:
    hist = res.history.copy()
    colours, marks = palette(res.methods), markers(res.methods)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
    metric = "acc1"
    if hist.empty or metric not in hist:
        ax.text(0.5, 0.5, "no zero-shot evaluations recorded yet", ha="center", va="center",
                transform=ax.transAxes, color="#a00")
        dataset = ""
    else:
        hist = hist.dropna(subset=[metric, "train_flops"])
        hist["top-1 (%)"] = hist[metric] * 100
        dataset = ", ".join(sorted(set(hist["dataset"])))
        order = [m for m in res.methods if m in set(hist["method"])]
        sns.lineplot(data=hist.sort_values("train_flops"), x="train_flops", y="top-1 (%)", hue="method",
                     style="method", hue_order=order, style_order=order, palette=colours,
                     markers=marks, dashes=False, errorbar="sd", err_style="band", markersize=7, ax=ax)
        chance = res.main.loc[(res.main["dataset"].isin(hist["dataset"])) & res.main["chance"].notna(), "chance"]
        if len(chance):
            ax.axhline(chance.iloc[0] * 100, color="0.35", linestyle="--", linewidth=1.2,
                       label=f"chance {chance.iloc[0] * 100:.1f}")
        for name, value in reference_levels(res, "zeroshot_classification"):
            ax.axhline(value, color="#b8860b", linestyle=":", linewidth=1.4, label=f"{name} {value:.1f}")
        ax.legend(title="method", fontsize=9)
        ax.set_ylim(bottom=0)
    ax.set_xlabel("training FLOPs (forward + backward, measured)")
    ax.set_ylabel("zero-shot top-1 accuracy (%)")
    ax.set_title(f"Zero-shot accuracy during training against compute, scale {res.scale} ({_mode(res)})\n"
                 f"{dataset}; line: mean over seeds, band: ±1 sd; last point: final model", fontsize=11)
    fig.tight_layout()
    path = out / "accuracy_vs_flops.png"
    _save(fig, path)
    return Figure(path, "Zero-shot accuracy against training FLOPs",
                  "Periodic zero-shot evaluations recorded during training (metrics.json `history`) and the "
                  "final model's score, at the training FLOPs spent so far; band: ±1 sd over seeds. Dashed: "
                  "chance; dotted: the colour-only level (right colour, any shape): a curve at or below it has "
                  "not learnt shape. Matched compute: every curve ends at about the same budget.")


def loss_vs_flops(res: Results, out: Path) -> Figure:
    """The training loss of each method (train.jsonl) against the training FLOPs spent, band over seeds."""
    losses = res.losses
    colours = palette(res.methods)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
    if losses.empty:
        ax.text(0.5, 0.5, "no training loss logged yet", ha="center", va="center", transform=ax.transAxes,
                color="#a00")
    else:
        order = [m for m in res.methods if m in set(losses["method"])]
        sns.lineplot(data=losses.sort_values("train_flops"), x="train_flops", y="loss", hue="method",
                     hue_order=order, palette=colours, errorbar="sd", err_style="band", linewidth=1.3, ax=ax)
        ax.legend(title="method", fontsize=9)
    ax.set_xlabel("training FLOPs (forward + backward, measured)")
    ax.set_ylabel("training loss (each method's own objective)")
    ax.set_title(f"Training loss against compute, scale {res.scale} ({_mode(res)})\n"
                 "line: mean over seeds, band: ±1 sd", fontsize=11)
    fig.tight_layout()
    path = out / "loss_vs_flops.png"
    _save(fig, path)
    return Figure(path, "Training loss against training FLOPs",
                  "The loss each run logged (train.jsonl) at every logged step, at the FLOPs spent so far. Each "
                  "method minimises its own objective (contrastive, plus distillation or reconstruction terms): "
                  "compare a curve's shape and stability, not its level across methods.")


def throughput_vs_mask(res: Results, out: Path) -> Figure:
    runs = res.runs[res.runs["status"] == "done"].copy()
    colours, marks = palette(res.methods), markers(res.methods)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
    runs["images_per_s"] = pd.to_numeric(runs["images_per_s"], errors="coerce")
    runs["mask_ratio"] = pd.to_numeric(runs["mask_ratio"], errors="coerce")
    have = runs.dropna(subset=["images_per_s", "mask_ratio"])
    lacking = sorted(set(runs["method"]) - set(have["method"]))
    if have.empty:
        ax.text(0.5, 0.5, "no finished run with a throughput and a mask ratio", ha="center", va="center",
                transform=ax.transAxes, color="#a00")
    else:
        order = [m for m in res.methods if m in set(have["method"])]
        sns.scatterplot(data=have, x="mask_ratio", y="images_per_s", hue="method", style="method",
                        hue_order=order, style_order=order, palette=colours, markers=marks, s=45, alpha=0.55,
                        legend=False, ax=ax)
        for method in order:
            g = have[have["method"] == method]
            y, sd = g["images_per_s"].mean(), g["images_per_s"].std() if len(g) > 1 else 0.0
            ax.errorbar(g["mask_ratio"].mean(), y, yerr=sd, fmt=marks[method], color=colours[method],
                        markersize=10, markeredgecolor="black", capsize=4, label=f"{method} (n={len(g)})")
            ax.annotate(method, (g["mask_ratio"].mean(), y), textcoords="offset points", xytext=(8, 6),
                        fontsize=9)
        ax.legend(title="method (mean ± sd over seeds)", fontsize=9)
        ax.set_xlim(-0.05, 1.0)
        ax.set_ylim(bottom=0)
    if lacking:
        ax.text(0.01, 0.01, f"no mask ratio recorded: {', '.join(lacking)}", transform=ax.transAxes,
                fontsize=8, color="#a00")
    ax.set_xlabel("realised mask ratio (fraction of image patches dropped, mean over logged steps)")
    ax.set_ylabel("training throughput (images/s)")
    ax.set_title(f"Training throughput against mask ratio, scale {res.scale} ({_mode(res)})\n"
                 "large marker: mean over seeds, error bar: ±1 sd; small markers: seeds", fontsize=11)
    fig.tight_layout()
    path = out / "throughput_vs_mask.png"
    _save(fig, path)
    return Figure(path, "Throughput against mask ratio",
                  "Samples seen divided by training wall-clock time, per run, against the realised mask ratio. "
                  "Wall-clock numbers depend on the machine and its load.")


def write_plots(res: Results, out: Path) -> list[Figure]:
    out.mkdir(parents=True, exist_ok=True)
    with sns.plotting_context("notebook", font_scale=0.9):
        return [task_bars(res, out), accuracy_vs_flops(res, out), loss_vs_flops(res, out),
                throughput_vs_mask(res, out)]
