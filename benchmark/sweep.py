"""Planning a sweep, shared by both backends (``launch``: this machine, ``slurm``: a cluster): the runs a run
``requires`` (same scale, seed and results folder; teachers first), and the runs a failed one blocks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmark import discovery
from benchmark.errors import UserError
from benchmark.runs import RunSpec, spec_scale


@dataclass
class Outcome:
    spec: RunSpec
    status: str          # "done", "failed", "skipped", "locked" (another process holds it), "submitted"
    detail: str = ""


def requirements(spec: RunSpec, methods_dir: Path | None = None) -> list[str]:
    """The methods whose run (same scale and seed) must finish before ``spec`` starts (``Method.requires``)."""
    info = discovery.resolve([spec.method], methods_dir)[0]
    return info.cls.requires(info.config(spec_scale(spec).method_config_scale,
                                         discovery.overrides_for(spec.method, spec.overrides)))


def with_requirements(specs: list[RunSpec], methods_dir: Path | None = None) -> list[RunSpec]:
    """``specs`` with the runs they require added, every run after the runs it requires."""
    ordered: list[RunSpec] = []
    seen: set[tuple[str, int]] = set()

    def visit(spec: RunSpec, stack: tuple[str, ...]):
        if (spec.method, spec.seed) in seen:
            return
        if spec.method in stack:
            raise UserError(f"methods require each other in a cycle: {' -> '.join(stack + (spec.method,))}")
        for req in requirements(spec, methods_dir):
            visit(RunSpec(**{**spec.__dict__, "method": req, "force": False}), stack + (spec.method,))
        seen.add((spec.method, spec.seed))
        ordered.append(spec)

    for s in specs:
        visit(s, ())
    return ordered


def blocked_by(spec: RunSpec, failed: set[tuple[str, int]], methods_dir: Path | None = None) -> list[str]:
    """The required runs of ``spec`` that failed (or were skipped): ``spec`` cannot run without them."""
    return [r for r in requirements(spec, methods_dir) if (r, spec.seed) in failed]
