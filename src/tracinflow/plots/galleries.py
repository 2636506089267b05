"""Galleries of thumbnails from the original image files: a mispredicted test image with its
proponents and opponents, and the top mislabel suspects.

The galleries are laid out by hand on a fixed grid (not by a layout engine), so every thumbnail is
shown at its native pixel size; each function returns a ``Figure`` whose size its docstring gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from tracinflow.plots.figure import (
    DPI,
    MISSING_RGB,
    OPPONENT_COLOUR,
    PROPONENT_COLOUR,
    SUSPECT_COLOUR,
    figure,
    fmt,
    quarter,
    short,
)

# The picture of a manifest path at a size, or None (missing or unreadable file).
ThumbnailSource = Callable[[object, int], "np.ndarray | None"]


def _show_thumbnail(
    ax, pixels, thumb_px: int, caption: str, edge: str, fontsize: float = 7
) -> None:
    if pixels is None:
        ax.imshow(np.full((thumb_px, thumb_px, 3), MISSING_RGB, dtype=np.uint8))
        ax.text(
            0.5,
            0.5,
            "missing",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#444444",
            fontsize=9 if thumb_px >= 96 else 6,
        )
    else:
        ax.imshow(pixels)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(edge)
        spine.set_linewidth(1.5)
    ax.set_xlabel(caption, fontsize=fontsize)


MIN_SHOWN_PX = 64  # smaller thumbnails are shown enlarged to this


def _shown(thumb_px: int) -> float:
    """Side in inches at which a thumbnail is shown: its native size, at least MIN_SHOWN_PX."""
    return max(thumb_px, MIN_SHOWN_PX) / DPI


def _cell(thumb_px: int) -> tuple[float, float]:
    """(width, height) in inches of one captioned thumbnail: the image, room for four caption
    lines below it, and at least 1.5 inches across so captions never collide."""
    return quarter(max(_shown(thumb_px) + 0.45, 1.5)), quarter(_shown(thumb_px) + 1.0)


def _place(fig, width: float, height: float, left: float, bottom: float, w: float, h: float):
    """Axes at a fixed place given in inches (galleries are laid out by hand, not by an engine,
    so every thumbnail is shown at its native pixel size and the layout never depends on text)."""
    return fig.add_axes((left / width, bottom / height, w / width, h / height))


def _ordered(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    if "rank" in frame:
        return frame.sort_values(["rank", "train_idx"], kind="stable")
    key = frame["influence"].astype(float)
    return frame.assign(_key=-key if kind == "proponent" else key).sort_values(
        "_key", kind="stable"
    )


def _neighbour_caption(row) -> str:
    lines = [
        f"train {int(row['train_idx'])}",
        f"label: {short(row['train_true'], 14)}",
        f"pred: {short(row['train_pred'], 14)}",
        f"score {fmt(float(row['influence']))}",
    ]
    if "same_error" in row and str(row["same_error"]).lower() == "true":
        lines[-1] += " \u00b7 same error"
    return "\n".join(lines)


def _test_image(fig, test_row: dict, thumbnails, width: float, height: float, cell_w: float,
                side: float) -> None:  # fmt: skip
    """The test image at the left: as large as its two-cell-wide column allows, title above,
    caption below."""
    test_side = max(min(2 * cell_w - 0.3, height - 1.4), side)
    ax = _place(fig, width, height, (2 * cell_w - test_side) / 2, height - 0.4 - test_side,
                test_side, test_side)  # fmt: skip
    confidence = test_row.get("confidence")
    conf_text = "n/a" if confidence is None or not np.isfinite(confidence) else f"{confidence:.2f}"
    _show_thumbnail(
        ax,
        thumbnails(test_row.get("path"), round(test_side * DPI)),
        round(test_side * DPI),
        f"true: {short(test_row['true_label'])}\npred: {short(test_row['predicted_label'])}\n"
        f"confidence {conf_text}",
        "black",
        fontsize=9,
    )
    ax.set_title(f"test {int(test_row['idx'])} (mispredicted)", fontsize=10, fontweight="bold")


def misprediction_gallery(
    test_row: dict,
    proponents: pd.DataFrame,
    opponents: pd.DataFrame,
    thumbnails: ThumbnailSource,
    thumb_px: int = 128,
    top: int = 5,
):
    """One picture: the mispredicted test image at the left (captioned true / predicted /
    confidence), its top ``top`` proponents in the upper row and top opponents in the lower row,
    each captioned with train idx, label, prediction and influence score.

    ``test_row``: ``idx, path, true_label, predicted_label, confidence``; ``proponents`` /
    ``opponents``: ``train_idx, train_true, train_pred, influence, image_path`` (plus optional
    ``rank`` and ``same_error``). ``thumbnails(path, px)`` gives the picture of a manifest path
    (:class:`tracinflow.data.images.Thumbnails`: decoded from the original files) or None, shown
    as a grey "missing" placeholder; missing candidates leave empty slots. Size:
    ``(top + 2) * w`` x ``2 * h + 0.75`` inches with the cell ``w = q(max(s + 0.45, 1.5))``,
    ``h = q(s + 1.0)``, ``s = max(thumb_px, 64) / 120`` (``q`` rounds up to a quarter inch):
    1470 x 630 px for ``thumb_px=128, top=5``.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    cell_w, cell_h = _cell(thumb_px)
    width, height = quarter((top + 2) * cell_w), quarter(2 * cell_h + 0.75)
    fig = figure(width, height, layout=None)
    side = _shown(thumb_px)
    _test_image(fig, test_row, thumbnails, width, height, cell_w, side)
    band = cell_h + 0.3  # one row: its title (0.3 in), then the cells
    for r, (frame, kind, colour, title) in enumerate(
        (
            (proponents, "proponent", PROPONENT_COLOUR, "Top proponents (positive influence)"),
            (opponents, "opponent", OPPONENT_COLOUR, "Top opponents (negative influence)"),
        )
    ):
        band_top = height - 0.075 - r * band
        fig.text(2 * cell_w / width, (band_top - 0.05) / height, title, color=colour,
                 fontsize=9, fontweight="bold", ha="left", va="top")  # fmt: skip
        chosen = _ordered(frame, kind).head(top) if len(frame) else frame
        for slot in range(min(top, len(chosen))):
            row = chosen.iloc[slot]
            left = (2 + slot) * cell_w + (cell_w - side) / 2
            cell = _place(fig, width, height, left, band_top - 0.3 - 0.05 - side, side, side)
            caption = _neighbour_caption(row)
            _show_thumbnail(cell, thumbnails(row.get("image_path"), thumb_px), thumb_px, caption,
                            colour)  # fmt: skip
    return fig


def suspects_gallery(
    inspection: pd.DataFrame, thumbnails: ThumbnailSource, n: int = 24, thumb_px: int = 128
):
    """Thumbnails of the ``n`` most suspicious training images (by the report's ``rank``), each
    captioned with rank, train idx, label, prediction (confidence) and suspicion score, 8 a row;
    a red frame marks a training image whose label differs from the model's prediction.

    Size: ``max(C * w, 4)`` x ``R * h + 0.5`` inches for ``C = min(8, shown)`` columns and ``R``
    rows (cell ``w, h`` as in :func:`misprediction_gallery`): 1680 x 870 px for 24 at 128 px.
    """
    chosen = (
        inspection.sort_values("rank", kind="stable").head(n) if len(inspection) else inspection
    )
    shown = len(chosen)
    cols = min(8, max(shown, 1))
    nrows = max(1, math.ceil(shown / cols))
    cell_w, cell_h = _cell(thumb_px)
    width, height = quarter(max(cols * cell_w, 4)), quarter(nrows * cell_h + 0.5)
    fig = figure(width, height, layout=None)
    side = _shown(thumb_px)
    ranking = str(chosen["ranking"].iloc[0]) if "ranking" in chosen and shown else "suspicion"
    x0 = (width - cols * cell_w) / 2
    for slot in range(shown):
        row = chosen.iloc[slot]
        r, c = divmod(slot, cols)
        ax = _place(fig, width, height, x0 + c * cell_w + (cell_w - side) / 2,
                    height - 0.5 - r * cell_h - 0.05 - side, side, side)  # fmt: skip
        wrong = str(row["true_label"]) != str(row["predicted_label"])
        confidence = float(row["confidence"]) if "confidence" in row else float("nan")
        conf = f" ({confidence:.2f})" if np.isfinite(confidence) else ""
        caption = (
            f"#{int(row['rank'])}  train {int(row['train_idx'])}\n"
            f"label: {short(row['true_label'], 14)}\n"
            f"pred: {short(row['predicted_label'], 14)}{conf}\n"
            f"score {fmt(float(row['suspicion']), sign=False)}"
        )
        _show_thumbnail(
            ax,
            thumbnails(row.get("image_path"), thumb_px),
            thumb_px,
            caption,
            SUSPECT_COLOUR if wrong else "grey",
        )
    if shown:
        title = f"Top {shown} mislabel suspects by {ranking}\n(red frame: label \u2260 prediction)"
    else:
        title = "No mislabel suspects"
    fig.text(0.5, 1 - 0.05 / height, title, ha="center", va="top", fontsize=10)
    return fig


def confident_mistakes(predictions: pd.DataFrame, limit: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(all mispredicted test rows, the ``limit`` most confident of them)``, most confident
    first, ties by idx: the mistakes that get a gallery."""
    mistakes = predictions[predictions["pred"] != predictions["label"]].sort_values(
        ["confidence", "idx"], ascending=[False, True], kind="stable"
    )
    return mistakes, mistakes.head(max(0, limit))


def no_gallery_reason(mistakes: pd.DataFrame, limit: int) -> str:
    """Why there is no misprediction gallery (the folder's README.txt)."""
    if mistakes.empty:
        return (
            "No mispredicted test images: every test image was predicted correctly, so there are "
            "no misprediction galleries.\n"
        )
    return (
        f"{len(mistakes)} mispredicted test images, but galleries are disabled "
        f"(mispredictions: {limit}).\n"
    )
