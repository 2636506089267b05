"""The noise study's two pictures: detection per ranking, test accuracy per cleaning variant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.plots.figure import quarter


def _settings(summary: pd.DataFrame) -> list[tuple[float, str]]:
    pairs = summary[["rate", "mode"]].drop_duplicates()
    return [(r, m) for r, m in pairs.itertuples(index=False) if m != "none"]


def _grouped_bars(ax, labels, groups, means, stds) -> None:
    """One group of bars per label, one bar per group entry, with std error bars."""
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(labels))
    for g, name in enumerate(groups):
        ax.bar(
            x + (g - (len(groups) - 1) / 2) * width, means[g], width, yerr=np.nan_to_num(stds[g]),
            label=name, capsize=2,
        )  # fmt: skip
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)


def plot_study_detection(summary: pd.DataFrame, metric: str = "found_at_10pct"):
    """Share of the flips found at 10% inspected (``metric``), per ranking (bars) and noise
    setting (groups), mean and std over seeds."""
    from matplotlib.figure import Figure

    settings = _settings(summary)
    rankings = [
        r for r in dict.fromkeys(summary["ranking"]) if not r.startswith("self_influence_epoch")
    ]
    fig = Figure(
        figsize=(quarter(max(7, 0.45 * len(rankings) * len(settings) / 2)), 5), layout="constrained"
    )
    ax = fig.subplots()
    means, stds = [], []
    for rate, mode in settings:
        rows = summary.loc[(summary["rate"] == rate) & (summary["mode"] == mode)].set_index(
            "ranking"
        )
        means.append([rows[f"{metric}_mean"].get(r, np.nan) for r in rankings])
        stds.append([rows[f"{metric}_std"].get(r, np.nan) for r in rankings])
    _grouped_bars(ax, rankings, [f"{m} {r:.0%}" for r, m in settings], means, stds)
    ax.set_ylabel(f"share of the flips {metric.replace('_', ' ').replace('pct', '%')}")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, title="noise")
    ax.set_title("Finding the planted flips: mean ± std over seeds")
    return fig


def plot_study_cleaning(summary: pd.DataFrame):
    """Test accuracy of the noisy version and each cleaning variant per noise setting, mean and
    std over seeds, with the clean baseline's mean as a line."""
    from matplotlib.figure import Figure

    settings = _settings(summary)
    variants = [v for v in dict.fromkeys(summary["variant"]) if v != "baseline"]
    fig = Figure(
        figsize=(quarter(max(7, 1.2 * len(settings) + 0.3 * len(variants))), 5),
        layout="constrained",
    )
    ax = fig.subplots()
    means, stds = [], []
    for variant in variants:
        rows = summary.loc[summary["variant"] == variant].set_index(["rate", "mode"])
        means.append([rows["accuracy_mean"].get(s, np.nan) for s in settings])
        stds.append([rows["accuracy_std"].get(s, np.nan) for s in settings])
    _grouped_bars(ax, [f"{m} {r:.0%}" for r, m in settings], variants, means, stds)
    baseline = summary.loc[summary["variant"] == "baseline", "accuracy_mean"]
    if len(baseline):
        ax.axhline(
            float(baseline.iloc[0]),
            color="black",
            linestyle="--",
            linewidth=1,
            label="baseline (clean labels)",
        )
    low = np.nanmin(np.asarray(means, dtype=np.float64)) if means else 0.0
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, ncols=2)
    ax.set_title("Cleaning: test accuracy, mean ± std over seeds")
    return fig
