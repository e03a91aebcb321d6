"""P4 evaluation: evaluating one pocket model on every task family by encoding once, against calling
clip_benchmark once per task. The measurement lives in ``benchmark.perf_eval`` (owned with the evaluation
suite); this module calls it and records why when it cannot run."""
from __future__ import annotations

import importlib
import traceback

GOAL = "encode-once >= 1.5x faster than clip_benchmark per task"
GOAL_RATIO = 1.5


def measure(repeats: int, scale_name: str = "pocket") -> dict:
    try:
        perf_eval = importlib.import_module("benchmark.perf_eval")
    except ImportError as e:
        return {"skipped": f"benchmark.perf_eval is not available ({e})", "goal": GOAL}
    try:
        result = perf_eval.measure(repeats, scale_name=scale_name)
    except Exception as e:  # noqa: BLE001 - one measure failing must not lose the others
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "goal": GOAL}
    if not isinstance(result, dict):
        return {"goal": GOAL, "result": result}
    speedup = result.get("ratio_clip_benchmark_over_suite", {}).get("median")
    return {"goal": GOAL, **result, "met": None if speedup is None else speedup >= GOAL_RATIO}
