"""What every picture shares: its resolution, colours, quarter-inch sizes and short class names.

Every figure uses matplotlib's ``Figure`` API (no pyplot global state) and is returned to the stage
that saves it (:func:`tracinflow._util.files.save_figure`, a PNG at :data:`DPI`). Figure sizes are
whole multiples of a quarter inch, so every picture is exactly ``figsize * DPI`` pixels.
"""

from __future__ import annotations

import math

import numpy as np

DPI = 120
PROPONENT_COLOUR = "#1f77b4"  # blue: positive influence (helps)
OPPONENT_COLOUR = "#d62728"  # red: negative influence (hurts)
SUSPECT_COLOUR = "#d62728"
MISSING_RGB = (200, 200, 200)  # the placeholder of an unreadable file
MAX_NAME = 18  # characters of a class name shown before it is shortened


def quarter(inches: float) -> float:
    """Round up to a whole quarter inch (exact in binary, so ``inches * DPI`` is a whole number)."""
    return math.ceil(inches * 4 - 1e-9) / 4


def clip(value: float, low: float, high: float) -> float:
    return float(min(max(value, low), high))


def tick_fontsize(k: int) -> float:
    """Tick label size for ``k`` categories: readable for a few, still legible for a hundred."""
    if k <= 15:
        return 9
    if k <= 40:
        return 7
    if k <= 70:
        return 5.5
    return 4.5


def short(name, limit: int = MAX_NAME) -> str:
    text = str(name)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(quarter(width), quarter(height)), dpi=DPI, layout=layout)


def no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def fmt(value, sign: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:+.3g}" if sign else f"{value:.3g}"
