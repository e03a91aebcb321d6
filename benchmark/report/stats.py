"""The uncertainty of every number the report shows.

* Over seeds: mean, n and a 95 % Student-t interval (``scipy.stats.t``); n = 1 has no such interval.
* Within one run: a percentile bootstrap over the evaluation items (``scipy.stats.bootstrap``), from the
  per-item scores every evaluation saves (``evals/<task>.json`` "per_item"). A task with several datasets
  resamples each dataset on its own and averages, as its score averages them. It measures evaluation noise
  only, not training noise: shown when n = 1, never used to name a winner.
* Differences to CLIP (or to the runner-up) are paired by seed: the t interval of the per-seed differences;
  with one paired seed, a paired bootstrap over the items both models answered.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0          # the report is deterministic: same runs, same intervals


@dataclass
class Estimate:
    mean: float
    n: int
    low: float = np.nan     # 95 % interval (nan when there is none)
    high: float = np.nan
    kind: str = ""          # "seeds" (Student t over seeds), "items" (bootstrap over items), "" (none)

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))


def over_seeds(values) -> Estimate:
    """Mean and 95 % Student-t interval of per-seed values (no interval for n < 2; zero width if all equal)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Estimate(np.nan, 0)
    if len(v) == 1:
        return Estimate(float(v[0]), 1)
    mean, sem = float(v.mean()), float(stats.sem(v))
    if sem == 0:
        return Estimate(mean, len(v), mean, mean, "seeds")
    low, high = stats.t.interval(CONFIDENCE, df=len(v) - 1, loc=mean, scale=sem)
    return Estimate(mean, len(v), float(low), float(high), "seeds")


def _mean_of_means(*samples, axis=-1):
    return np.mean([s.mean(axis=axis) for s in samples], axis=0)


def over_items(samples: list[np.ndarray]) -> Estimate:
    """Mean over datasets of each dataset's mean item score, with a percentile bootstrap interval that resamples
    the items of each dataset independently. ``samples``: one array of per-item scores per dataset."""
    samples = [np.asarray(s, dtype=float) for s in samples]
    if not samples or any(len(s) == 0 for s in samples):
        return Estimate(np.nan, 0)
    mean = float(_mean_of_means(*samples))
    if all(len(s) < 2 or np.all(s == s[0]) for s in samples):
        return Estimate(mean, 1, mean, mean, "items")             # nothing to resample: no spread
    res = stats.bootstrap(samples, _mean_of_means, n_resamples=N_RESAMPLES, vectorized=True, paired=False,
                          confidence_level=CONFIDENCE, method="percentile",
                          rng=np.random.default_rng(BOOTSTRAP_SEED))
    return Estimate(mean, 1, float(res.confidence_interval.low), float(res.confidence_interval.high), "items")


def paired_difference(a: dict[int, float], b: dict[int, float],
                      a_items: dict[int, list[np.ndarray]] | None = None,
                      b_items: dict[int, list[np.ndarray]] | None = None) -> Estimate:
    """a − b paired by seed: ``a``/``b`` map seed -> score. Two or more common seeds: the t interval of the
    per-seed differences. One: the paired bootstrap over items (same items, same order) when both runs saved
    them, else no interval."""
    common = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in common]
    if len(common) != 1:
        return over_seeds(diffs)
    s = common[0]
    ai, bi = (a_items or {}).get(s), (b_items or {}).get(s)
    if ai and bi and len(ai) == len(bi) and all(len(x) == len(y) for x, y in zip(ai, bi)):
        est = over_items([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(ai, bi)])
        return Estimate(diffs[0], 1, est.low, est.high, "items")
    return Estimate(diffs[0], 1)
