"""Pictures of the cross-version comparison: accuracy per version, top-k influence per version."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.analysis.cross_version import INFLUENCE_KINDS


def plot_performance(performance: pd.DataFrame):
    """Grouped bars of val and test accuracy per version, each bar annotated."""
    from matplotlib.figure import Figure

    versions = performance["version"].astype(str).tolist()
    x = np.arange(len(versions))
    width = 0.38
    fig = Figure(figsize=(max(5.0, 1.1 * len(versions) + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    for offset, column, label, colour in (
        (-width / 2, "val_accuracy", "val", "#1f77b4"),
        (width / 2, "test_accuracy", "test", "#ff7f0e"),
    ):
        values = performance[column].to_numpy(np.float64)
        bars = ax.bar(x + offset, np.nan_to_num(values), width, label=label, color=colour)
        ax.bar_label(
            bars, labels=["" if np.isnan(v) else f"{v:.3f}" for v in values], padding=2, fontsize=8
        )
    ax.set_xticks(x, versions, rotation=30 if len(versions) > 4 else 0, ha="right")
    ax.set_ylim(0, 1.2)  # room above a perfect score for its label and the legend
    ax.set_xlabel("version")
    ax.set_ylabel("accuracy")
    ax.set_title("Val and test accuracy per version")
    ax.legend(loc="upper center", ncols=2)
    return fig


def plot_influence_statistics(statistics: pd.DataFrame):
    """One panel per kind: per version the min-max range, mean +- std box, mean and median marks."""
    from matplotlib.figure import Figure

    kinds = [k for k in INFLUENCE_KINDS if k in set(statistics["kind"])] or ["all"]
    versions = list(dict.fromkeys(statistics["version"].astype(str)))
    fig = Figure(
        figsize=(max(7.0, 3.2 * len(kinds) + 0.3 * len(versions) * len(kinds)), 4.5),
        layout="constrained",
    )
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    x = np.arange(len(versions))
    for ax, kind in zip(axes, kinds, strict=True):
        part = statistics[statistics["kind"] == kind]
        part = part.set_axis(part["version"].astype(str), axis=0).reindex(versions)
        low, high = part["min"].to_numpy(np.float64), part["max"].to_numpy(np.float64)
        mean, std = part["mean"].to_numpy(np.float64), part["std"].to_numpy(np.float64)
        median = part["median"].to_numpy(np.float64)
        ax.vlines(x, low, high, color="grey", linewidth=1, label="min to max")
        ax.bar(x, 2 * std, 0.5, bottom=mean - std, color="#1f77b4", alpha=0.35, label="mean ± std")
        ax.plot(x, mean, "o", color="#1f77b4", label="mean")
        ax.plot(x, median, "_", color="black", markersize=16, markeredgewidth=2, label="median")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks(x, versions, rotation=30 if len(versions) > 3 else 0, ha="right")
        ax.set_xlabel("version")
        ax.set_ylabel("influence")
        ax.set_title(f"{kind} top-k influences")
    axes[0].legend(fontsize=8)
    fig.suptitle("Top-k influence per version")
    return fig
