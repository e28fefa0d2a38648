"""Bootstrap intervals and paired tests, checked against scipy.stats (and scikit-learn's AUC-PR)
on the same data: our resamples and scipy's are different random draws, so the endpoints agree
to within Monte Carlo error, not exactly."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import average_precision_score

import fiat_tasks.demo  # noqa: F401 - registers fiat_demo_plain (accuracy per language)
from fiat_t5x.data import metrics as data_metrics
from fiat_t5x.sweeps import confidence
from fiat_t5x.sweeps.confidence import BootstrapSettings, Examples
from fiat_t5x.training.eval_records import Record

LANGUAGES = ("en", "de", "fr", "sw")
RESAMPLES = 2000
# Monte Carlo tolerance on an interval endpoint (points of accuracy): with 2000 resamples an
# endpoint's standard error is ~0.15 points here, and accuracy moves in 0.25 steps. (The
# seeds are fixed, so the test is deterministic.)
TOLERANCE = 0.6


def _demo_records(hits: np.ndarray) -> list[Record]:
    return [
        Record(
            index=i,
            id=f"ex-{i:04d}",
            target={"answer": "yes", "language": LANGUAGES[i % 4]},
            prediction="yes" if hit else "no",
        )
        for i, hit in enumerate(hits)
    ]


def _distribution(records, settings, task="fiat_demo_plain"):
    examples = Examples.from_records(records)
    metric = confidence.seqio_metric(task)
    plan = confidence.resample_plan(len(examples), settings)
    return metric(records), confidence.bootstrap_distribution(examples, metric, plan)


def test_accuracy_interval_matches_scipy_bootstrap():
    rng = np.random.default_rng(7)
    hits = rng.random(400) < 0.81
    settings = BootstrapSettings(resamples=RESAMPLES, seed=1)
    values, dist = _distribution(_demo_records(hits), settings)
    ours = confidence.percentile_interval(values["accuracy"], dist["accuracy"], settings)
    reference = scipy.stats.bootstrap(
        (100.0 * hits,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        random_state=2,
    ).confidence_interval
    assert ours.value == pytest.approx(100.0 * hits.mean())
    assert ours.low == pytest.approx(reference.low, abs=TOLERANCE)
    assert ours.high == pytest.approx(reference.high, abs=TOLERANCE)
    # Per-language intervals come from the same replicates and hold their point estimates;
    # a quarter of the examples gives an interval about twice as wide.
    for language in LANGUAGES:
        name = f"accuracy/{language}"
        interval = confidence.percentile_interval(values[name], dist[name], settings)
        assert interval.contains(values[name])
        width = (interval.high - interval.low) / (ours.high - ours.low)
        assert 1.5 < width < 2.6, (language, width)


def test_paired_difference_matches_scipy_paired_bootstrap_and_permutation_test():
    rng = np.random.default_rng(11)
    baseline = rng.random(400) < 0.80
    method = baseline.copy()
    method[rng.choice(np.flatnonzero(~baseline), 30, replace=False)] = True  # fixes errors...
    method[rng.choice(np.flatnonzero(baseline), 10, replace=False)] = False  # ...makes a few
    settings = BootstrapSettings(resamples=RESAMPLES, seed=3)
    value_a, dist_a = _distribution(_demo_records(method), settings)
    value_b, dist_b = _distribution(_demo_records(baseline), settings)
    test = confidence.paired_test(
        value_a["accuracy"], dist_a["accuracy"], value_b["accuracy"], dist_b["accuracy"], settings
    )

    def difference(a, b, axis=-1):
        return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    a, b = 100.0 * method, 100.0 * baseline
    reference = scipy.stats.bootstrap(
        (a, b),
        difference,
        paired=True,
        n_resamples=RESAMPLES,
        method="percentile",
        random_state=4,
    ).confidence_interval
    assert test.difference.value == pytest.approx(difference(a, b))
    assert test.difference.low == pytest.approx(reference.low, abs=TOLERANCE)
    assert test.difference.high == pytest.approx(reference.high, abs=TOLERANCE)
    permutation = scipy.stats.permutation_test(
        (a, b), difference, permutation_type="samples", n_resamples=RESAMPLES, random_state=5
    )
    assert test.significant and permutation.pvalue < 0.05
    assert test.p_value < 0.05

    # The same difference spread over unpaired examples is not distinguishable from zero:
    # pairing is what makes it significant.
    shuffled = _demo_records(rng.permutation(method))
    value_s, dist_s = _distribution(shuffled, settings)
    unpaired = confidence.paired_test(
        value_s["accuracy"], dist_s["accuracy"], value_b["accuracy"], dist_b["accuracy"], settings
    )
    assert unpaired.difference.value == pytest.approx(test.difference.value)
    assert not unpaired.significant
    assert unpaired.difference.high - unpaired.difference.low > 1.5 * (
        test.difference.high - test.difference.low
    )


def test_identical_methods_differ_by_exactly_zero():
    hits = np.random.default_rng(0).random(200) < 0.7
    settings = BootstrapSettings(resamples=200)
    value, dist = _distribution(_demo_records(hits), settings)
    test = confidence.paired_test(
        value["accuracy"], dist["accuracy"], value["accuracy"], dist["accuracy"], settings
    )
    assert (test.difference.value, test.difference.low, test.difference.high) == (0.0, 0.0, 0.0)
    assert not test.significant and test.p_value == 1.0


def _rank_records(labels: np.ndarray, probabilities: np.ndarray) -> list[Record]:
    """XOR-AttriQA's rank rows: each example once per candidate label, scored by log P."""
    rows = []
    for i, (gold, p) in enumerate(zip(labels, probabilities, strict=True)):
        for candidate, prob in (("yes", p), ("no", 1.0 - p)):
            target = {
                "id": f"q{i}",
                "language": LANGUAGES[i % 4],
                "rank_candidate": candidate,
                "rank_gold": "yes" if gold else "no",
            }
            rows.append(Record(index=len(rows), id=f"q{i}", target=target, score=np.log(prob)))
    return rows


def test_auc_pr_resamples_whole_examples_and_matches_scikit_learn(monkeypatch):
    rng = np.random.default_rng(5)
    labels = rng.random(240) < 0.5
    probabilities = np.clip(0.5 + 0.25 * (2 * labels - 1) + 0.3 * rng.normal(size=240), 0.02, 0.98)
    records = _rank_records(labels, probabilities)
    settings = BootstrapSettings(resamples=1000, seed=6)
    examples = Examples.from_records(records)
    assert len(examples) == 240 and all(len(c) == 2 for c in examples.clusters)

    def metric(rows):
        return data_metrics.attribution_rank_classification(
            [r.target for r in rows], [r.score for r in rows]
        )

    plan = confidence.resample_plan(len(examples), settings)
    dist = confidence.bootstrap_distribution(examples, metric, plan)
    # Every replicate scores all 240 drawn examples, duplicates included.
    assert set(dist["num_examples"]) == {240.0}
    value = metric(records)["auc_pr"]
    assert value == pytest.approx(100 * average_precision_score(labels, probabilities))
    ours = confidence.percentile_interval(value, dist["auc_pr"], settings)

    def auc_pr(y, p, axis=-1):
        return 100 * average_precision_score(y, p)

    reference = scipy.stats.bootstrap(
        (labels, probabilities),
        auc_pr,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        method="percentile",
        random_state=7,
    ).confidence_interval
    # AUC-PR's interval is ~9 points wide here; with 1000 resamples an endpoint's Monte Carlo
    # error is ~0.4 points.
    assert ours.low == pytest.approx(reference.low, abs=1.5)
    assert ours.high == pytest.approx(reference.high, abs=1.5)


def test_resample_plan_depends_only_on_size_and_seed():
    settings = BootstrapSettings(resamples=100, seed=9)
    np.testing.assert_array_equal(
        confidence.resample_plan(50, settings), confidence.resample_plan(50, settings)
    )
    assert not np.array_equal(
        confidence.resample_plan(50, settings),
        confidence.resample_plan(50, BootstrapSettings(resamples=100, seed=10)),
    )


def test_holm_adjustment():
    # By hand: sorted p 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04).
    assert confidence.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert confidence.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert confidence.holm([]) == []


def test_settings_are_checked():
    with pytest.raises(ValueError, match="resamples=10"):
        BootstrapSettings(resamples=10)
    with pytest.raises(ValueError, match="confidence=1.5"):
        BootstrapSettings(confidence=1.5)
