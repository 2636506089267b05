"""The counterfactual evaluation's two pictures: each method's LDS with its CI beside the controls,
and what removing each method's proponents did against the controls."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.plots.figure import figure, quarter

KIND_COLOURS = {"method": "#2f6fb3", "ensemble": "#6a3fb3", "random": "#9aa3ad",
                "ceiling": "#1a7f37"}  # fmt: skip


def plot_lds(table: pd.DataFrame):
    """One bar per row of lds.csv (methods, the random control, the retraining-noise ceiling):
    the LDS with its 95% bootstrap interval; the default method in bold."""
    rows = table.reset_index(drop=True)
    fig = figure(7.5, quarter(1.2 + 0.32 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    colours = [KIND_COLOURS.get(kind, "#2f6fb3") for kind in rows["kind"]]
    errors = np.vstack([rows["lds"] - rows["ci_low"], rows["ci_high"] - rows["lds"]])
    ax.barh(y, rows["lds"], xerr=np.nan_to_num(errors), color=colours, capsize=2, height=0.7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, rows["method"], fontsize=8)
    for tick, default in zip(ax.get_yticklabels(), rows["default"], strict=True):
        tick.set_fontweight("bold" if default else "normal")
    n_subsets, n_test = int(rows["n_subsets"].max()), int(rows["n_test"].max())
    ax.set_xlabel("linear datamodeling score (Spearman; 95% bootstrap CI)")
    ax.set_title(f"Does the score predict retraining? {n_subsets} subsets, {n_test} test images",
                 fontsize=10)  # fmt: skip
    return fig


def plot_removal(table: pd.DataFrame):
    """Per method and k, the change in the share of the targeted mistakes predicted right after
    the removal (against the same seed's full retrain), for the method's removal and each control:
    mean and standard error over seeds."""
    groups = list(dict.fromkeys(zip(table["method"], table["k"], strict=True)))
    selections = list(dict.fromkeys(table["selection"]))
    fig = figure(max(5.0, 1.6 * len(groups) + 2), 4.2)
    ax = fig.subplots()
    width = 0.8 / max(len(selections), 1)
    for s, selection in enumerate(selections):
        rows = table[table["selection"] == selection].set_index(["method", "k"])
        means = [100 * rows["fixed"].get(g, np.nan) for g in groups]
        errors = [100 * rows["fixed_se"].get(g, np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + (s - (len(selections) - 1) / 2) * width, means, width,
               yerr=np.nan_to_num(errors), capsize=2, label=selection)  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(groups)), [f"{m}\nk={k}" for m, k in groups], fontsize=8)
    ax.set_ylabel("mistakes fixed, points vs. the full retrain")
    ax.legend(fontsize=8, title="removed")
    ax.set_title("Removing the proponents of the mistakes, and as many by each control",
                 fontsize=10)  # fmt: skip
    return fig
