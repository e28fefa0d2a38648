"""The report's figures (PNG, matplotlib's Agg backend: no display needed).

- `cot_gain_figure`: FIAT's Figure 3, one point per language: x = the score without
  CoT-augmented tuning, y = the gain that CoT-augmented tuning brings over it (any two
  variants work: the demo also plots FIAT against β's own answers), with bootstrap error bars.
- `curves_figure`: FIAT's Figure 5, a validation metric against training step, one line per
  chosen variant.

The figure builders return the `Figure` (tests inspect its axes); `write_plots` saves them.
"""

from __future__ import annotations

import logging
import pathlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fiat_t5x.sweeps.intervals import Unavailable  # noqa: E402
from fiat_t5x.sweeps.metrics import series  # noqa: E402
from fiat_t5x.sweeps.report import SweepResults, language_entries, language_metrics  # noqa: E402
from fiat_t5x.sweeps.report_spec import CotGainPlot, CurvePlot, LanguageTable  # noqa: E402

logger = logging.getLogger(__name__)


def cot_gain_points(results: SweepResults, plot: CotGainPlot) -> dict[str, tuple[float, float]]:
    """`{language: (score without CoT, gain with CoT)}` for languages both variants have."""
    spec = LanguageTable(task="", metric="", key=plot.key)
    with_cot = language_metrics(results, spec, plot.with_cot)
    without_cot = language_metrics(results, spec, plot.without_cot)
    return {
        lang: (without_cot[lang], with_cot[lang] - without_cot[lang])
        for lang in sorted(set(with_cot) & set(without_cot))
    }


def cot_gain_errors(
    results: SweepResults, plot: CotGainPlot
) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """`{language: ((x low, x high), (y low, y high))}`: the interval of the baseline's score
    and the paired interval of the gain, for languages where the records allow both."""
    spec = LanguageTable(task="", metric="", key=plot.key)
    with_cot = language_entries(results, spec, plot.with_cot)
    without_cot = language_entries(results, spec, plot.without_cot)
    errors = {}
    for lang in sorted(set(with_cot) & set(without_cot)):
        (x, x_name), (y, y_name) = without_cot[lang], with_cot[lang]
        score = results.intervals.estimate(plot.without_cot, x_name, x)
        gain = results.intervals.compare(
            (plot.with_cot, [y_name], y), (plot.without_cot, [x_name], x)
        )
        if isinstance(score, Unavailable) or isinstance(gain, Unavailable):
            continue
        errors[lang] = ((score.low, score.high), (gain.difference.low, gain.difference.high))
    return errors


def cot_gain_figure(results: SweepResults, plot: CotGainPlot) -> Figure:
    """Scatter of per-language gain against the no-CoT score (one series), with a y=0 line and,
    where per-example records exist, bootstrap error bars (score interval, paired gain interval)."""
    points = cot_gain_points(results, plot)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    with_label, without_label = results.label(plot.with_cot), results.label(plot.without_cot)
    if points:
        xs = [x for x, _ in points.values()]
        ys = [y for _, y in points.values()]
        ax.scatter(xs, ys, label=f"{with_label} − {without_label}")
        for lang, ((x_low, x_high), (y_low, y_high)) in cot_gain_errors(results, plot).items():
            x, y = points[lang]
            ax.errorbar(
                [x],
                [y],
                xerr=[[x - x_low], [x_high - x]],
                yerr=[[y - y_low], [y_high - y]],
                fmt="none",
                ecolor="grey",
                elinewidth=0.8,
                capsize=2,
            )
        for lang, (x, y) in points.items():
            ax.annotate(lang, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no per-language results yet", ha="center", transform=ax.transAxes)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"{without_label} score")
    ax.set_ylabel(f"gain of {with_label}")
    ax.set_title(plot.title or f"Gain from CoT-augmented tuning per language ({plot.key})")
    fig.tight_layout()
    return fig


def curves_figure(results: SweepResults, plot: CurvePlot) -> Figure:
    """One line per variant that logged `plot.key` (variants without data are skipped)."""
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    drawn = 0
    for name in plot.variants:
        if results.statuses[name].state == "missing":
            continue
        steps, values = series(results.history(name), plot.key)
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=results.label(name))
            drawn += 1
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no variant logged {plot.key}", ha="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel(plot.key)
    ax.set_title(plot.title or f"{plot.key} during training")
    fig.tight_layout()
    return fig


def write_plots(results: SweepResults, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Saves every plot the sweep's report section asks for; returns the PNG paths."""
    paths = []
    report = results.sweep.report
    figures = [
        (f"cot_gain_{i}", cot_gain_figure(results, p)) for i, p in enumerate(report.cot_gain)
    ]
    figures += [(f"curves_{i}", curves_figure(results, p)) for i, p in enumerate(report.curves)]
    for stem, fig in figures:
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
