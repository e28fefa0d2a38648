"""The report: numbers checked against the variants' own metric files; partial sweeps; plots."""

from __future__ import annotations

import csv
import dataclasses
import json

import matplotlib.image
import numpy as np
import pytest

from fiat_t5x.sweeps import cli
from fiat_t5x.sweeps.plots import cot_gain_figure, curves_figure
from fiat_t5x.sweeps.report import collect, language_table, main_table, write_report
from fiat_t5x.sweeps.runner import SweepRunner
from fiat_t5x.sweeps.spec import load_sweep
from tests.sweeps.conftest import two_variant_sweep


def _last_record(model_dir) -> dict:
    """Read independently of fiat_t5x.sweeps.metrics: the last JSON line of metrics.jsonl."""
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _csv_rows(path, key: str = "Method") -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row[key]: row for row in csv.DictReader(f)}


@pytest.fixture
def finished(gin_tree):
    sweep = load_sweep(two_variant_sweep(gin_tree))
    root = gin_tree / "root"
    SweepRunner(sweep, root).run()
    return sweep, root


def test_main_table_matches_metric_files(finished, tmp_path):
    sweep, root = finished
    files = write_report(sweep, root, tmp_path / "out")
    rows = _csv_rows(files.tables[main_table(collect(sweep, root)).title][1])
    for name, label in (("fiat", "FIAT"), ("wo_cot", "w/o CoT")):
        record = _last_record(root / name)
        assert float(rows[label]["Demo Acc"]) == record["eval/demo/accuracy"]
        assert float(rows[label]["Demo Loss"]) == record["train/loss"]
    gain = rows["FIAT: gain over best baseline"]
    fiat, base = _last_record(root / "fiat"), _last_record(root / "wo_cot")
    assert float(gain["Demo Acc"]) == pytest.approx(
        fiat["eval/demo/accuracy"] - base["eval/demo/accuracy"]
    )
    # Lower-is-better column: gain is best baseline minus method (here equal losses: 0).
    assert float(gain["Demo Loss"]) == pytest.approx(base["train/loss"] - fiat["train/loss"])
    markdown = files.markdown.read_text()
    assert "| FIAT | 80.0 | 0.333 |" in markdown
    assert "| *FIAT: gain over best baseline* | +10.0 | +0.0 |" in markdown
    assert "2 of 2 variants finished" in markdown and "Missing variants" not in markdown


def test_language_table_and_mean(finished):
    sweep, root = finished
    table = language_table(collect(sweep, root), sweep.report.languages[0])
    assert table.columns == ("de", "en", "sw", "mean")
    fiat, base = _last_record(root / "fiat"), _last_record(root / "wo_cot")
    for lang in ("de", "en", "sw"):
        key = f"eval/demo/accuracy/{lang}"
        assert table.value("FIAT", lang) == fiat[key]
        assert table.value("FIAT: gain over best baseline", lang) == pytest.approx(
            fiat[key] - base[key]
        )
    expected_mean = np.mean([fiat[f"eval/demo/accuracy/{lang}"] for lang in ("de", "en", "sw")])
    assert table.value("FIAT", "mean") == pytest.approx(expected_mean)


def test_partial_sweep_lists_missing_variants(gin_tree, tmp_path):
    sweep = load_sweep(two_variant_sweep(gin_tree))
    root = gin_tree / "root"
    SweepRunner(sweep, root).run(only=["fiat"])
    assert (
        cli.main(["report", str(sweep.path), "--root", str(root), "--out", str(tmp_path / "o")])
        == 0
    )
    markdown = (tmp_path / "o" / "report.md").read_text()
    assert "1 of 2 variants finished" in markdown
    assert "- `wo_cot` is missing: not run" in markdown
    rows = _csv_rows(tmp_path / "o" / "main.csv")
    assert rows["w/o CoT"]["Demo Acc"] == ""  # an empty cell, not a crash
    assert rows["FIAT: gain over best baseline"]["Demo Acc"] == ""
    assert "| w/o CoT | – | – |" in markdown


def test_plots_are_valid_pngs_with_expected_series(finished, tmp_path):
    sweep, root = finished
    results = collect(sweep, root)
    fiat, base = _last_record(root / "fiat"), _last_record(root / "wo_cot")

    fig = cot_gain_figure(results, sweep.report.cot_gain[0])
    (ax,) = fig.axes
    assert len(ax.collections) == 1  # one scatter series: a point per language
    offsets = np.asarray(ax.collections[0].get_offsets())
    expected = sorted(
        (
            base[f"eval/demo/accuracy/{lang}"],
            fiat[f"eval/demo/accuracy/{lang}"] - base[f"eval/demo/accuracy/{lang}"],
        )
        for lang in ("de", "en", "sw")
    )
    np.testing.assert_allclose(sorted(map(tuple, offsets)), expected)

    fig = curves_figure(results, sweep.report.curves[0])
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label() in ("FIAT", "w/o CoT")]
    assert len(lines) == 2
    steps = [
        json.loads(x)["step"] for x in (root / "fiat" / "metrics.jsonl").read_text().splitlines()
    ]
    np.testing.assert_array_equal(lines[0].get_xdata(), steps)

    # Variants evaluate different tasks, so sweeps name metrics with `*`: the curve follows it.
    pattern_plot = dataclasses.replace(sweep.report.curves[0], key="eval/*/accuracy")
    (ax,) = curves_figure(results, pattern_plot).axes
    pattern_lines = [line for line in ax.get_lines() if line.get_label() in ("FIAT", "w/o CoT")]
    assert len(pattern_lines) == 2
    np.testing.assert_array_equal(pattern_lines[0].get_ydata(), lines[0].get_ydata())

    files = write_report(sweep, root, tmp_path / "out")
    assert [p.name for p in files.plots] == ["cot_gain_0.png", "curves_0.png"]
    for path in files.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something was drawn


HITS_SWEEP = """\
name: hits
gin_search_paths: ["."]
command: {command}
variants:
{variants}
report:
  method: method
  baselines: [close, weak]
  rows: [method, close, weak, skewed]
  ladder: [method, close, weak]
  columns:
    - {{task: T, metric: Acc, key: eval/fiat_demo_plain/accuracy}}
    - {{task: T, metric: Loss, key: train/loss, higher_is_better: false}}
  languages:
    - {{task: T, metric: Acc, key: "eval/fiat_demo_plain/accuracy/{{language}}"}}
  bootstrap: {{resamples: 400, seed: 3}}
"""


def _hits(n_right: int, n: int = 60, wrong_first: int = 0) -> str:
    """`n` answers, `n_right` of them right; the first `wrong_first` right ones turned wrong."""
    text = ["1"] * n_right + ["0"] * (n - n_right)
    for i in range(wrong_first):
        text[i] = "0"
    return "".join(text)


@pytest.fixture
def hits_sweep(gin_tree):
    from tests.sweeps.conftest import fake_command, write_sweep

    per_variant = {
        "method": {"en": _hits(54), "de": _hits(48)},
        "close": {"en": _hits(54, wrong_first=1), "de": _hits(48)},
        "weak": {"en": _hits(54, wrong_first=20), "de": _hits(48, wrong_first=15)},
        "skewed": {"en": _hits(54), "de": _hits(48)},
    }
    lines = []
    for name, hits in per_variant.items():
        bindings = {"EXAMPLE_HITS": hits}
        if name == "skewed":
            bindings["RECORDS_SKEW"] = 1.0
        lines.append(
            f"  {name}: {json.dumps({'gin_files': ['gin/base.gin'], 'bindings': bindings})}"
        )
    body = HITS_SWEEP.format(command=json.dumps(fake_command()), variants="\n".join(lines))
    sweep = load_sweep(write_sweep(gin_tree, body, "hits.yaml"))
    root = gin_tree / "root"
    SweepRunner(sweep, root).run()
    return sweep, root


def test_report_gives_intervals_and_paired_tests(hits_sweep, tmp_path):
    from fiat_t5x.sweeps import confidence
    from fiat_t5x.training import eval_records

    sweep, root = hits_sweep
    files = write_report(sweep, root, tmp_path / "out", plots=False)
    main = _csv_rows(tmp_path / "out" / "main.csv")
    # Each accuracy cell holds its point estimate, and equals a bootstrap computed here
    # directly from the variant's records with the report's settings.
    for name in ("method", "close", "weak"):
        row = main[name]
        value, low, high = (float(row[f"T Acc{s}"]) for s in ("", " low", " high"))
        assert low <= value <= high and high - low > 5
        (path,) = (root / name / "records" / "eval" / "fiat_demo_plain").glob("step_*.jsonl")
        records = eval_records.read_records(path)
        examples = confidence.Examples.from_records(records.rows)
        metric = confidence.seqio_metric("fiat_demo_plain")
        settings = sweep.report.bootstrap
        dist = confidence.bootstrap_distribution(
            examples, metric, confidence.resample_plan(len(examples), settings)
        )
        expected = confidence.percentile_interval(value, dist["accuracy"], settings)
        assert (low, high) == pytest.approx((expected.low, expected.high))
    # The loss has no per-example records: a number without interval, and a note says why.
    assert main["method"]["T Loss"] != "" and main["method"]["T Loss low"] == ""
    markdown = files.markdown.read_text()
    assert (
        "T Loss: no interval for method, close, weak, skewed (no per-example records" in markdown
    ), markdown
    # Records that do not reproduce the logged metric give no interval.
    assert main["skewed"]["T Acc low"] == ""
    assert "no interval for skewed (its records" in markdown
    # The gain over the best baseline ("close", one example apart) is not significant.
    gain = main["method: gain over best baseline"]
    assert float(gain["T Acc"]) == pytest.approx(100 / 120)
    assert gain["T Acc significant"] == "False"
    assert float(gain["T Acc low"]) <= 0 <= float(gain["T Acc high"])
    assert "not significant (p=" in markdown
    # Against each baseline: Holm-adjusted p-values; "weak" is far below, "close" is not.
    comparisons = _csv_rows(tmp_path / "out" / "comparisons.csv", key="Comparison")
    weak, close = comparisons["method vs weak"], comparisons["method vs close"]
    assert weak["T Acc significant"] == "True" and float(weak["T Acc p"]) < 0.01
    assert float(weak["T Acc low"]) > 20
    assert close["T Acc significant"] == "False"
    # The ladder: each step's cost, paired; only the big drop is significant.
    ladder = _csv_rows(tmp_path / "out" / "ladder.csv", key="Step")
    assert list(ladder) == ["method → close", "close → weak"]
    assert ladder["method → close"]["T Acc significant"] == "False"
    assert ladder["close → weak"]["T Acc significant"] == "True"
    assert float(ladder["close → weak"]["T Acc"]) == pytest.approx(
        float(main["close"]["T Acc"]) - float(main["weak"]["T Acc"])
    )


def test_language_table_has_intervals_for_languages_and_their_mean(hits_sweep):
    sweep, root = hits_sweep
    table = language_table(collect(sweep, root), sweep.report.languages[0])
    assert table.columns == ("de", "en", "mean")
    for column in table.columns:
        value = table.value("method", column)
        low, high = table.interval("method", column)
        assert low <= value <= high
    assert table.value("method", "mean") == pytest.approx((90 + 80) / 2)
    gain = table.row("method: gain over best baseline")
    assert gain.test(table.columns.index("en")) is not None
