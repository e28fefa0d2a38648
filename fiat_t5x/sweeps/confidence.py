"""Bootstrap confidence intervals and paired tests over per-example evaluation records.

A sweep report compares methods evaluated on the same few hundred examples; whether "FIAT 91,
ICL 84" is a real difference depends on how many examples disagree. This module answers with
the nonparametric bootstrap (Efron & Tibshirani 1993), recomputing the task's own metric
functions on resamples of the examples, so it works for any metric a SeqIO task reports
(accuracy, F1, AUC-PR, per-language breakdowns) without a second implementation of it:

- `percentile_interval`: the percentile interval of a metric's bootstrap distribution.
- `paired_test`: the bootstrap distribution of the difference of two methods' metric, with
  both methods recomputed on the *same* resampled examples in every replicate (a paired
  bootstrap, as in Koehn 2004 / Berg-Kirkpatrick et al. 2012); its percentile interval, and a
  two-sided p-value (twice the smaller share of replicates on either side of 0).
- `holm`: Holm's step-down adjustment when one method is tested against several baselines.

Resampling unit: the example. Records of one example (rank classification writes one row per
candidate label) share its id and are drawn together; when a replicate draws an example more
than once, the copies get distinct ids (`<id>#<draw>`), so metrics that group rows by id see
them as separate examples, as the bootstrap means them to be. Two methods are paired by
example key (id, else index); the resample plan depends only on the number of examples and
the seed, so every method evaluated on the same examples sees the same replicates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fiat_t5x.training.eval_records import Record

MetricFn = Callable[[Sequence["Record"]], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class BootstrapSettings:
    """`resamples` replicates drawn with `seed`; intervals at `confidence` (two-sided)."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"bootstrap resamples={self.resamples}: use at least 100")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"bootstrap confidence={self.confidence} must be in [0.5, 1)")

    @property
    def percent(self) -> str:
        return f"{100 * self.confidence:g}%"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """`a − b` (or `b − a` when lower is better), its interval and two-sided p-value."""

    difference: Interval
    p_value: float

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return not self.difference.contains(0.0)


@dataclasses.dataclass(frozen=True)
class Examples:
    """Records grouped by example: `keys[i]`'s rows are `clusters[i]` (keys sorted)."""

    keys: tuple[str, ...]
    clusters: tuple[tuple[Record, ...], ...]

    @classmethod
    def from_records(cls, rows: Sequence[Record]) -> Examples:
        grouped: dict[str, list[Record]] = {}
        for row in rows:
            grouped.setdefault(row.key, []).append(row)
        keys = tuple(sorted(grouped))
        return cls(keys, tuple(tuple(grouped[k]) for k in keys))

    def __len__(self) -> int:
        return len(self.keys)

    def resampled(self, draw: np.ndarray) -> list[Record]:
        """The rows of the examples at positions `draw`, copies made distinct by id.

        Only rows whose target carries an `id` (what a metric could group by) are copied;
        the others are shared, which keeps a replicate cheap.
        """
        rows: list[Record] = []
        seen: set[int] = set()
        renames = self._renames
        for position, i in enumerate(draw.tolist()):
            if i in seen and renames[i]:
                rows.extend(_renamed(self.clusters[i], position))
            else:
                rows.extend(self.clusters[i])
            seen.add(i)
        return rows

    @functools.cached_property
    def _renames(self) -> list[bool]:
        return [
            any(isinstance(r.target, Mapping) and "id" in r.target for r in cluster)
            for cluster in self.clusters
        ]


def _renamed(cluster: Sequence[Record], position: int) -> list[Record]:
    out = []
    for row in cluster:
        suffix = f"#{position}"
        target = row.target
        if isinstance(target, Mapping) and "id" in target:
            target = {**target, "id": f"{target['id']}{suffix}"}
        new_id = None if row.id is None else f"{row.id}{suffix}"
        out.append(dataclasses.replace(row, id=new_id, target=target))
    return out


def resample_plan(n: int, settings: BootstrapSettings) -> np.ndarray:
    """`[resamples, n]` example positions drawn with replacement (same n, seed: same plan)."""
    if n == 0:
        raise ValueError("cannot bootstrap zero examples")
    rng = np.random.default_rng(settings.seed)
    return rng.integers(0, n, size=(settings.resamples, n))


def bootstrap_distribution(
    examples: Examples, metric: MetricFn, plan: np.ndarray
) -> dict[str, np.ndarray]:
    """`{metric name: [resamples]}`; NaN where a replicate lacks that metric (e.g. a language
    that was not drawn)."""
    replicates = [metric(examples.resampled(draw)) for draw in plan]
    names = sorted({name for r in replicates for name in r})
    return {
        name: np.array([float(r.get(name, np.nan)) for r in replicates], dtype=np.float64)
        for name in names
    }


def percentile_interval(
    value: float, distribution: np.ndarray, settings: BootstrapSettings
) -> Interval:
    """The percentile interval of `distribution` around the point estimate `value`."""
    tail = 100.0 * (1.0 - settings.confidence) / 2.0
    finite = distribution[np.isfinite(distribution)]
    if finite.size == 0:
        return Interval(value, float("nan"), float("nan"))
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return Interval(float(value), float(low), float(high))


def paired_test(
    value_a: float,
    distribution_a: np.ndarray,
    value_b: float,
    distribution_b: np.ndarray,
    settings: BootstrapSettings,
    higher_is_better: bool = True,
) -> PairedTest:
    """How much better `a` is than `b`, from replicates drawn on the same examples."""
    sign = 1.0 if higher_is_better else -1.0
    deltas = sign * (distribution_a - distribution_b)
    deltas = deltas[np.isfinite(deltas)]
    difference = percentile_interval(sign * (value_a - value_b), deltas, settings)
    if deltas.size == 0:
        return PairedTest(difference, float("nan"))
    below, above = int(np.sum(deltas <= 0.0)), int(np.sum(deltas >= 0.0))
    p_value = min(1.0, 2.0 * (min(below, above) + 1) / (deltas.size + 1))
    return PairedTest(difference, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seqio_metric(task_name: str) -> MetricFn:
    """The task's SeqIO metric functions as a function of records: predict metrics get
    (targets, predictions), score metrics (targets, scores), as `seqio.Evaluator` calls them."""
    import seqio

    task = seqio.get_mixture_or_task(task_name)
    predict_fns = list(getattr(task, "predict_metric_fns", ()))
    score_fns = list(getattr(task, "score_metric_fns", ()))
    if not predict_fns and not score_fns:
        raise ValueError(f"task {task_name!r} has no metric functions a bootstrap can call")

    def metric(rows: Sequence[Record]) -> dict[str, float]:
        targets = [r.target for r in rows]
        out: dict[str, float] = {}
        if predict_fns and all(r.prediction is not None for r in rows):
            predictions = [r.prediction for r in rows]
            for fn in predict_fns:
                out.update(_scalars(fn(targets, predictions)))
        if score_fns and all(r.score is not None for r in rows):
            scores = [r.score for r in rows]
            for fn in score_fns:
                out.update(_scalars(fn(targets, scores)))
        return out

    return metric


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in values.items():
        value = getattr(value, "value", value)
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out
