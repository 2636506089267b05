"""The four dashboards of a version's reports: influence distributions per class, the top
influencers, the class x class influence heat map, the self-influence distribution.

Each function takes report tables and returns a ``Figure`` (sizes in its docstring); class names
are shown, never label indices; long names are shortened and tick fonts shrink as the number of
classes grows (2 to 100+ classes all render).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.plots.figure import (
    OPPONENT_COLOUR,
    PROPONENT_COLOUR,
    SUSPECT_COLOUR,
    clip,
    figure,
    no_data,
    short,
    tick_fontsize,
)


def _influence_boxes(ax, frame: pd.DataFrame, k: int) -> list:
    """Box plots per class of each kind's influence (proponents left, opponents right of the
    class); returns the legend handles of the kinds drawn."""
    from matplotlib.patches import Patch

    handles = []
    for offset, kind, colour, label in (
        (-0.2, "proponent", PROPONENT_COLOUR, "proponents (helpful)"),
        (0.2, "opponent", OPPONENT_COLOUR, "opponents (harmful)"),
    ):
        part = frame[frame["kind"] == kind]
        groups = {int(c): g["influence"].to_numpy(float) for c, g in part.groupby("label")}
        positions = [c for c in range(k) if c in groups and len(groups[c])]
        if not positions:
            continue
        handles.append(Patch(facecolor=colour, alpha=0.55, label=label))
        ax.boxplot(
            [groups[c] for c in positions],
            positions=[c + offset for c in positions],
            widths=0.35,
            patch_artist=True,
            manage_ticks=False,
            boxprops={"facecolor": colour, "alpha": 0.55, "edgecolor": colour},
            medianprops={"color": "black"},
            whiskerprops={"color": colour},
            capprops={"color": colour},
            flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colour, "alpha": 0.5},
        )
    return handles


def _class_axis(ax, frame: pd.DataFrame, names: list[str]) -> None:
    """Class names under the boxes (with the number of test images for up to 15 classes)."""
    k = len(names)
    if k <= 15:
        counts = frame.groupby("label")["test_idx"].nunique()
        ticks = [f"{short(n)}\n(n={int(counts.get(c, 0))})" for c, n in enumerate(names)]
    else:
        ticks = [short(n) for n in names]
    rotation = 0 if k <= 6 else (45 if k <= 15 else 90)
    ax.set_xticks(
        range(k),
        ticks,
        rotation=rotation,
        ha="right" if rotation == 45 else "center",
        fontsize=tick_fontsize(k),
    )
    ax.set_xlim(-0.7, k - 0.3)
    ax.set_xlabel(
        "true class of the test image (n = test images)"
        if k <= 15
        else "true class of the test image"
    )


def plot_influence_distributions(topk: pd.DataFrame, test_labels: pd.Series, class_names):
    """Per test class (its true label), box plots of the influence of its top-k proponents (blue)
    and opponents (red), side by side, with a zero line.

    ``topk``: ``test_idx, kind, rank, train_idx, influence``; ``test_labels``: test idx -> label;
    rows whose test idx has no label are left out. Size: width ``clip(3 + 0.5 K, 8, 30)`` x 6
    inches (``K`` = number of classes), e.g. 960 x 720 px for up to 10 classes.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    fig = figure(clip(3 + 0.5 * k, 8, 30), 6)
    ax = fig.subplots()
    labels = pd.Series(test_labels)
    frame = topk[["test_idx", "kind", "influence"]].copy()
    frame["label"] = frame["test_idx"].map(labels)
    frame = frame[frame["label"].notna() & np.isfinite(frame["influence"].astype(float))]
    frame["label"] = frame["label"].astype(np.int64)
    handles = _influence_boxes(ax, frame, k)
    ax.axhline(0, color="grey", linewidth=0.8)
    _class_axis(ax, frame, names)
    ax.set_ylabel("TracIn influence")
    ax.set_title("Influence of each test image's top-k proponents and opponents, per test class")
    ax.grid(axis="y", alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="best")
    else:
        ax.text(0.5, 0.5, "no influence values", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_top_influencers(influential: pd.DataFrame, n: int = 10):
    """Horizontal bars of the ``n`` most helpful (largest positive ``influence_sum``, blue, on top)
    and ``n`` most harmful (most negative, red, below) training images, each labelled
    ``train <idx> (<class>)``.

    Size: 10 x ``clip(1.6 + 0.28 B, 3.5, 40)`` inches for ``B`` bars, e.g. 1200 x 870 px for 20.
    """
    values = influential["influence_sum"].astype(float)
    helpful = influential[values > 0].sort_values(
        ["influence_sum", "train_idx"], ascending=[False, True]
    )
    harmful = influential[values < 0].sort_values(
        ["influence_sum", "train_idx"], ascending=[True, True]
    )
    # top to bottom: most helpful ... least helpful, least harmful ... most harmful
    rows = pd.concat([helpful.head(n), harmful.head(n).iloc[::-1]])
    bars = len(rows)
    fig = figure(10, clip(1.6 + 0.28 * bars, 3.5, 40))
    ax = fig.subplots()
    if bars:
        y = np.arange(bars)[::-1]
        sums = rows["influence_sum"].to_numpy(float)
        colours = [PROPONENT_COLOUR if v > 0 else OPPONENT_COLOUR for v in sums]
        ax.barh(y, sums, color=colours, alpha=0.8)
        labels = [
            f"train {int(i)} ({short(c)})"
            for i, c in zip(rows["train_idx"], rows["true_label"], strict=True)
        ]
        ax.set_yticks(y, labels, fontsize=tick_fontsize(bars))
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_ylim(-0.6, bars - 0.4)
        from matplotlib.patches import Patch

        ax.legend(
            handles=[
                Patch(
                    color=PROPONENT_COLOUR,
                    alpha=0.8,
                    label=f"most helpful ({len(helpful.head(n))})",
                ),
                Patch(
                    color=OPPONENT_COLOUR, alpha=0.8, label=f"most harmful ({len(harmful.head(n))})"
                ),
            ],
            loc="best",
        )
        ax.grid(axis="x", alpha=0.3)
    else:
        no_data(ax, "no training image with non-zero summed influence")
    ax.set_xlabel("summed influence over all test images' top-k lists")
    ax.set_title(f"Most helpful and most harmful training images (top {n} each)")
    return fig


def plot_class_influence_heatmap(class_influence: pd.DataFrame):
    """Summed influence of each train class (rows) on each test class (columns), on a diverging
    colour map centred at 0 (blue helps, red hurts); every cell is annotated when at most 15
    classes are on either axis.

    ``class_influence``: first column the train class, then one column per test class.
    Size: ``(S + 1.5) x S`` inches with ``S = clip(2.5 + 0.55 M, 6, 26)``, ``M`` the larger of
    rows and columns, e.g. 900 x 720 px for up to 6 classes, 3300 x 3120 px for 100.
    """
    frame = class_influence.set_index(class_influence.columns[0])
    values = frame.to_numpy(dtype=float) if frame.size else np.zeros((len(frame), frame.shape[1]))
    rows, cols = [str(r) for r in frame.index], [str(c) for c in frame.columns]
    m = max(len(rows), len(cols), 1)
    side = clip(2.5 + 0.55 * m, 6, 26)
    fig = figure(side + 1.5, side)
    ax = fig.subplots()
    if values.size == 0:
        no_data(ax, "no class influence")
    else:
        finite = values[np.isfinite(values)]
        top = float(np.abs(finite).max()) if finite.size else 0.0
        top = top if top > 0 else 1.0
        image = ax.imshow(
            np.ma.masked_invalid(values), cmap="RdBu", vmin=-top, vmax=top, aspect="auto"
        )
        fig.colorbar(image, ax=ax, label="summed influence (0 = white)", shrink=0.8)
        ax.set_xticks(
            range(len(cols)),
            [short(c) for c in cols],
            rotation=45 if len(cols) <= 15 else 90,
            ha="right" if len(cols) <= 15 else "center",
            fontsize=tick_fontsize(len(cols)),
        )
        ax.set_yticks(range(len(rows)), [short(r) for r in rows], fontsize=tick_fontsize(len(rows)))
        if max(len(rows), len(cols)) <= 15:
            for i in range(len(rows)):
                for j in range(len(cols)):
                    v = values[i, j]
                    ax.text(
                        j,
                        i,
                        "" if not np.isfinite(v) else f"{v:.3g}",
                        ha="center",
                        va="center",
                        fontsize=10 if m <= 6 else 8,
                        color="white" if np.isfinite(v) and abs(v) > 0.6 * top else "black",
                    )
    ax.set_xlabel("true class of the test image")
    ax.set_ylabel("class of the training image")
    ax.set_title("Class influence: train class (rows) on test class (columns)")
    return fig


def plot_self_influence_distribution(inspection: pd.DataFrame, n_suspects: int = 20):
    """Histogram of the training images' self-influence, with the top ``n_suspects`` of the
    inspection report (by its ``rank``) marked as red vertical lines; the legend names the ranking.

    The x axis is logarithmic when every value is positive and they span at least two decades.
    Size: 9 x 5 inches = 1080 x 600 px.
    """
    fig = figure(9, 5)
    ax = fig.subplots()
    values = inspection["self_influence"].to_numpy(float)
    values = values[np.isfinite(values)]
    ranking = (
        str(inspection["ranking"].iloc[0])
        if "ranking" in inspection and len(inspection)
        else "rank"
    )
    if values.size == 0:
        no_data(ax, "no self-influence values")
    else:
        log = bool(values.min() > 0 and values.max() / values.min() >= 100)
        bins_n = int(clip(np.sqrt(values.size) * 2, 10, 80))
        if log:
            bins = np.geomspace(values.min(), values.max(), bins_n + 1)
            ax.set_xscale("log")
        elif values.min() == values.max():
            bins = np.linspace(values.min() - 0.5, values.max() + 0.5, 11)
        else:
            bins = np.linspace(values.min(), values.max(), bins_n + 1)
        ax.hist(values, bins=bins, color="grey", alpha=0.7, label=f"{values.size} training images")
        suspects = inspection.sort_values("rank", kind="stable").head(n_suspects)
        marks = suspects["self_influence"].to_numpy(float)
        marks = marks[np.isfinite(marks)]
        for i, x in enumerate(marks):
            ax.axvline(
                x,
                color=SUSPECT_COLOUR,
                alpha=0.9,
                linewidth=1.5,
                label=f"top {len(marks)} suspects by {ranking}" if i == 0 else None,
            )
        ax.legend(loc="best")
        ax.set_xlabel("self-influence" + (" (log scale)" if log else ""))
    ax.set_ylabel("training images")
    ax.set_title("Self-influence of training images, with the most suspicious marked")
    return fig
