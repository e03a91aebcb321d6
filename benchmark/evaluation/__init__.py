"""Evaluation: one module per task family, each reading features from one shared ``Encoder``.

A task module defines ``TASK`` (its name), ``MAIN_METRIC`` and ``evaluate(encoder, sets) -> list[dict]``,
each dict one (dataset, metrics) result in clip_benchmark's keys.
"""
