"""The detection curve of every suspicion ranking against the planted label flips."""

from __future__ import annotations

from collections.abc import Mapping

from tracinflow.analysis.detection import DETECTION_FRACTIONS


def plot_detection(
    curves: Mapping,
    default: str,
    title: str = "Finding the planted label flips",
):
    """Found fraction against inspected fraction, one line per ranking.

    ``curves`` maps a name to ``(inspected, found)`` from :func:`detection_curve`. The default
    ranking is drawn thicker; a dashed diagonal shows random inspection, dotted lines 5/10/20%.
    The figure is 7 x 5 inches at 120 dpi (840 x 600 pixels).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if default not in curves:
        raise ValueError(f"default ranking {default!r} is not one of {list(curves)}")
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="random (expected)")
    for fraction in DETECTION_FRACTIONS:
        ax.axvline(fraction, linestyle=":", color="lightgray", linewidth=1)
    for name, (x, y) in curves.items():
        is_default = name == default
        ax.plot(
            x,
            y,
            linewidth=2.8 if is_default else 1.3,
            label=f"{name} (default)" if is_default else str(name),
            zorder=3 if is_default else 2,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_xlabel("training images inspected, most suspect first")
    ax.set_ylabel("planted flips found")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
