"""Run a scale's evaluation suite on one model, encoding each image and text once."""
from __future__ import annotations

import importlib
import traceback

from benchmark.evaluation import sets as eval_sets
from benchmark.evaluation.features import Encoder


def task_module(task: str):
    return importlib.import_module(f"benchmark.evaluation.{task}")


def datasets_for(task: str, scale, dataset_root: str | None = None) -> list:
    """The evaluation sets of ``task`` at ``scale``: embedded sets, or real datasets from disk."""
    if scale.data.kind == "embedded":
        return [eval_sets.embedded_set(str(eval_sets.embedded_folder(scale)), task, scale.image_size)]
    module = task_module(task)
    if not hasattr(module, "real_sets"):
        raise NotImplementedError(f"task {task} has no reader for real datasets yet")
    return module.real_sets(dataset_root or scale.data.dataset_root, scale)


def evaluate(model, scale, tasks, device, dataset_root: str | None = None,
             encoder: Encoder | None = None) -> dict[str, list[dict] | dict]:
    """{task: [result per dataset]} or {task: {"error": ...}} when a task could not run; others still run."""
    encoder = encoder or Encoder(model, scale.context_length, device)
    out: dict = {}
    for task in tasks:
        try:
            module = task_module(task)
            out[task] = [module.evaluate_set(encoder, s) for s in datasets_for(task, scale, dataset_root)]
        except Exception as e:   # noqa: BLE001 - one task's failure (a missing dataset) must not stop the others
            out[task] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return out


def zero_shot_probe(scale, device):
    """The periodic evaluation during training: zero-shot classification on the embedded set."""
    task = "zeroshot_classification"

    def probe(model) -> dict:
        s = datasets_for(task, scale)[0]
        res = task_module(task).evaluate_set(Encoder(model, scale.context_length, device), s)
        return {"task": task, "dataset": res["dataset"], **res["metrics"]}
    return probe
