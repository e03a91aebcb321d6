"""Run a scale's evaluation suite on one model, encoding each image and text once.

Which sets a task family runs on (``family_plan``): with a dataset root (``--dataset-root`` or the scale's
``data.dataset_root``), the real datasets of the family found there (the scale's ``eval_datasets`` entry, or
every dataset of the family's ``DATASETS``); the missing ones are named in the output and in each result's notes.
The embedded set is used only when no real dataset is given for the family: no root, or none of its datasets
under the root and the family's datasets not named by the scale (a scale training on embedded data).
"""
from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass, field

from benchmark.errors import UserError
from benchmark.evaluation import sets as eval_sets
from benchmark.evaluation.features import Encoder


def task_module(task: str):
    return importlib.import_module(f"benchmark.evaluation.{task}")


@dataclass
class FamilyPlan:
    task: str
    real: list[str] = field(default_factory=list)       # real datasets to read
    missing: list[str] = field(default_factory=list)    # asked for, not under the root
    embedded: bool = False
    root: str = ""
    error: str = ""                                    # the family cannot run (no dataset at all)


def family_plan(task: str, scale, dataset_root: str | None = None) -> FamilyPlan:
    module = task_module(task)
    named = list(scale.eval_datasets.get(task, []))
    wanted = named or list(getattr(module, "DATASETS", ()))
    real = [n for n in wanted if n != "embedded"]
    root = dataset_root or scale.data.dataset_root
    plan = FamilyPlan(task, embedded="embedded" in named, root=root or "")
    can_embed = scale.data.kind == "embedded"
    if not root:
        if named and real:
            plan.error = (f"{task}: the scale names {', '.join(real)} but no dataset root is given; pass "
                          "--dataset-root DIR or set data.dataset_root in the scale")
        elif not can_embed and not plan.embedded:
            plan.error = (f"{task}: no dataset root for the real evaluation datasets: pass --dataset-root DIR or set "
                          "data.dataset_root in the scale")
        else:
            plan.embedded = True
        return plan
    from benchmark.evaluation import real_datasets as R
    plan.real, plan.missing = R.present(root, real)
    if not plan.real and not plan.embedded:
        if can_embed and not named:
            plan.embedded = True
        else:
            plan.error = (f"{task}: none of {', '.join(real)} is under {root}; expected layouts: "
                          + "; ".join(f"{n}: {R.LAYOUTS[n]}" for n in real))
    return plan


def describe(plan: FamilyPlan) -> str:
    """One line: what the family runs on and what is missing."""
    if plan.error:
        return plan.error
    on = plan.real + (["embedded"] if plan.embedded else [])
    line = f"{plan.task}: {', '.join(on)}"
    if plan.missing:
        line += f" (not under {plan.root}: {', '.join(plan.missing)})"
    return line


def datasets_for(task: str, scale, dataset_root: str | None = None, plan: FamilyPlan | None = None) -> list:
    """The evaluation sets of ``task`` at ``scale`` (see the module docstring)."""
    plan = plan or family_plan(task, scale, dataset_root)
    if plan.error:
        raise UserError(plan.error)
    out = []
    if plan.real:
        out += task_module(task).real_sets(plan.root, scale, plan.real)
    if plan.embedded:
        out.append(eval_sets.embedded_set(str(eval_sets.embedded_folder(scale)), task, scale.image_size))
    return out


def check_datasets(scale, tasks, dataset_root: str | None = None) -> list[str]:
    """Before any training: read every real dataset the suite will use and check that each image file exists.
    Returns one line per family (what it runs on); a damaged dataset or missing images are one UserError."""
    lines, missing, errors = [], [], []
    for task in tasks:
        plan = family_plan(task, scale, dataset_root)
        lines.append(describe(plan))
        if plan.error:
            errors.append(plan.error)
        if plan.error or not plan.real:
            continue
        try:
            sets = task_module(task).real_sets(plan.root, scale, plan.real)
        except UserError as e:
            errors.append(str(e))
            continue
        for s in sets:
            if hasattr(s.images, "missing"):
                missing += [(s.name, p) for p in s.images.missing()]
    if errors:
        raise UserError("the evaluation datasets cannot be read:\n  "
                        + "\n  ".join(dict.fromkeys(errors)))
    if missing:
        files = list(dict.fromkeys(p for _, p in missing))
        names = ", ".join(dict.fromkeys(n for n, _ in missing))
        shown = "\n  ".join(files[:5]) + (f"\n  ... and {len(files) - 5} more" if len(files) > 5 else "")
        raise UserError(f"{len(files)} image file(s) named by the evaluation datasets ({names}) are missing:\n  "
                        f"{shown}\nput them back, or remove the damaged dataset folder from the dataset root")
    return lines


def evaluate(model, scale, tasks, device, dataset_root: str | None = None,
             encoder: Encoder | None = None) -> dict[str, list[dict] | dict]:
    """{task: [result per dataset]} or {task: {"error": ...}} when a task could not run; others still run."""
    encoder = encoder or Encoder(model, scale.context_length, device)
    out: dict = {}
    for task in tasks:
        try:
            module = task_module(task)
            plan = family_plan(task, scale, dataset_root)
            if plan.missing:
                print(f"warning: {describe(plan)}", file=sys.stderr)
            out[task] = [module.evaluate_set(encoder, s) for s in datasets_for(task, scale, dataset_root, plan)]
            for r in out[task]:
                if plan.missing:
                    r.setdefault("notes", {})["missing_datasets"] = list(plan.missing)
        except Exception as e:   # noqa: BLE001 - one task's failure (a missing dataset) must not stop the others
            out[task] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return out


def zero_shot_probe(scale, device, dataset_root: str | None = None):
    """The periodic evaluation during training: zero-shot classification on the first set the suite's
    zero-shot family uses (a real dataset when one is given, else the embedded set)."""
    task = "zeroshot_classification"
    first: list = []

    def probe(model) -> dict:
        if not first:
            first.append(datasets_for(task, scale, dataset_root)[0])
        res = task_module(task).evaluate_set(Encoder(model, scale.context_length, device), first[0])
        return {"task": task, "dataset": res["dataset"], **res["metrics"]}
    return probe
