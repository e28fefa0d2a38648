"""The uncertainty behind a report's cells: each metric's records, bootstrap and paired tests.

For a variant's metric `eval/<task>/accuracy/sw` logged at step 200, the records are
`<MODEL_DIR>/records/eval/<task>/step_00000200.jsonl` (`fiat_t5x.training.eval_records`). They
are read once per file; the task is registered by importing the modules the run's gin imported;
the task's metric functions are recomputed on all records (they must reproduce the logged
value, else the cell gets no interval and the report says why) and on every bootstrap
replicate (`fiat_t5x.sweeps.confidence`). Every metric of one file shares the file's replicates,
and files with the same examples share the resample plan, so differences between variants
are paired.

A cell without evidence (a teacher-forced loss, a run from before records existed, a metric
the records do not reproduce) gets `Unavailable` with the reason, never a made-up interval.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from fiat_t5x import storage
from fiat_t5x.sweeps import confidence
from fiat_t5x.sweeps.confidence import BootstrapSettings, Examples, Interval, PairedTest
from fiat_t5x.sweeps.metrics import MetricPoint
from fiat_t5x.training import eval_records

logger = logging.getLogger(__name__)

# Relative tolerance when checking that the records reproduce a logged metric.
_REPRODUCE_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """Why a cell has no interval."""

    reason: str


@dataclasses.dataclass
class _Evidence:
    """One records file: its examples and every metric's value and bootstrap distribution."""

    examples: Examples
    values: dict[str, float]
    distributions: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Source:
    path: str
    metric: str  # the name inside the task, e.g. "accuracy/sw"


class Intervals:
    """Intervals and paired tests for the metrics of a sweep's variants.

    Args:
      model_dir: variant name -> its MODEL_DIR.
      history: variant name -> its metric history (to find the step of a final value).
      settings: resamples, confidence, seed.

    `Unavailable.reason` never names the variant; callers say which cell it is about.
    """

    def __init__(
        self,
        model_dir: Callable[[str], pathlib.Path],
        history: Callable[[str], list[MetricPoint]],
        settings: BootstrapSettings,
    ) -> None:
        self.model_dir = model_dir
        self.history = history
        self.settings = settings
        self._evidence: dict[str, _Evidence | Unavailable] = {}

    # ------------------------------------------------------------------ lookups

    def estimate(self, variant: str, name: str, value: float) -> Interval | Unavailable:
        """The interval of `variant`'s metric `name` (a full metric name) around `value`."""
        found = self._distribution(variant, name, value)
        if isinstance(found, Unavailable):
            return found
        _, distribution = found
        return confidence.percentile_interval(value, distribution, self.settings)

    def mean_estimate(
        self, variant: str, names: Sequence[str], value: float
    ) -> Interval | Unavailable:
        """The interval of the mean of several metrics (e.g. over languages) of one variant."""
        found = self._mean_distribution(variant, names, value)
        if isinstance(found, Unavailable):
            return found
        return confidence.percentile_interval(value, found[1], self.settings)

    def compare(
        self,
        a: tuple[str, Sequence[str], float],
        b: tuple[str, Sequence[str], float],
        higher_is_better: bool = True,
    ) -> PairedTest | Unavailable:
        """Paired test of `a` against `b`, each `(variant, metric names, value)`; several names
        are averaged (a per-language mean)."""
        found_a = self._mean_distribution(*a)
        found_b = self._mean_distribution(*b)
        for found in (found_a, found_b):
            if isinstance(found, Unavailable):
                return found
        keys_a, dist_a = found_a
        keys_b, dist_b = found_b
        if keys_a != keys_b:
            return Unavailable(
                f"{a[0]} and {b[0]} were evaluated on different examples "
                f"({len(keys_a)} and {len(keys_b)}), so they cannot be paired"
            )
        return confidence.paired_test(a[2], dist_a, b[2], dist_b, self.settings, higher_is_better)

    # ------------------------------------------------------------------ internals

    def _mean_distribution(
        self, variant: str, names: Sequence[str], value: float
    ) -> tuple[tuple[str, ...], np.ndarray] | Unavailable:
        if len(names) == 1:
            return self._distribution(variant, names[0], value)
        parts = []
        keys: tuple[str, ...] | None = None
        for name in names:
            found = self._distribution(variant, name, None)
            if isinstance(found, Unavailable):
                return found
            if keys is not None and found[0] != keys:
                return Unavailable(f"{list(names)} come from different examples")
            keys = found[0]
            parts.append(found[1])
        return keys or (), np.mean(np.stack(parts), axis=0)

    def _distribution(
        self, variant: str, name: str, value: float | None
    ) -> tuple[tuple[str, ...], np.ndarray] | Unavailable:
        source = self._source(variant, name)
        if isinstance(source, Unavailable):
            return source
        evidence = self._load(source.path)
        if isinstance(evidence, Unavailable):
            return evidence
        if source.metric not in evidence.values:
            return Unavailable(f"the metric functions of {source.path} give no {source.metric!r}")
        recomputed = evidence.values[source.metric]
        if value is not None and abs(recomputed - value) > _REPRODUCE_TOLERANCE * max(
            1.0, abs(value)
        ):
            return Unavailable(
                f"its records {source.path} give {name} = {recomputed:.6g} but the metrics file "
                f"{value:.6g}"
            )
        return evidence.examples.keys, evidence.distributions[source.metric]

    def _source(self, variant: str, name: str) -> _Source | Unavailable:
        """The records file and in-task metric name behind `name` at its final step."""
        steps = [p.step for p in self.history(variant) if p.name == name]
        if not steps:
            return Unavailable(f"{name!r} was never logged")
        step = max(steps)
        parts = name.split("/")
        model_dir = self.model_dir(variant)
        for cut in range(1, len(parts)):
            directory = eval_records.records_dir(model_dir, "/".join(parts[:cut]))
            have = eval_records.available_steps(directory)
            if not have:
                continue
            if step not in have:
                return Unavailable(f"no records of step {step} in {directory} (steps {have})")
            path = storage.join(directory, eval_records.step_name(step))
            return _Source(path, "/".join(parts[cut:]))
        return Unavailable(f"no per-example records for {name!r}")

    def _load(self, path: str) -> _Evidence | Unavailable:
        if path not in self._evidence:
            self._evidence[path] = self._compute(path)
        return self._evidence[path]

    def _compute(self, path: str) -> _Evidence | Unavailable:
        try:
            records = eval_records.read_records(path)
        except (OSError, eval_records.RecordsFileError) as e:
            return Unavailable(str(e))
        problem = _register(records)
        if problem:
            return Unavailable(problem)
        try:
            metric = confidence.seqio_metric(records.task)
            examples = Examples.from_records(records.rows)
            values = dict(metric(list(records.rows)))
            plan = confidence.resample_plan(len(examples), self.settings)
            distributions = confidence.bootstrap_distribution(examples, metric, plan)
        except Exception as e:  # noqa: BLE001 - a task's metric code may fail in any way
            logger.warning("bootstrap of %s failed: %s", path, e)
            return Unavailable(f"{path}: the task's metrics failed on its records ({e})")
        return _Evidence(examples, values, distributions)


def _register(records: eval_records.Records) -> str:
    """Imports the run's modules until its task is registered; '' or why it is not."""
    import seqio

    def registered() -> bool:
        return records.task in seqio.TaskRegistry.names()

    # The user's task modules first (they register tasks); the library's own modules after.
    modules = sorted(records.imports, key=lambda m: m.startswith("fiat_t5x"))
    for module in modules:
        if registered():
            break
        for candidate in (module, module.rpartition(".")[0]):
            if not candidate:
                continue
            try:
                importlib.import_module(candidate)
                break
            except Exception as e:  # noqa: BLE001 - report what failed, keep trying the rest
                logger.debug("importing %s for %s: %s", candidate, records.path, e)
    if registered():
        return ""
    return (
        f"{records.path}: task {records.task!r} is not registered after importing "
        f"{list(records.imports)}"
    )
