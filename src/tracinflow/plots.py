"""Pictures of the influence reports: dashboards (distributions, top influencers, class heat map,
self-influence) and galleries of thumbnails decoded from the original image files.

Every figure uses matplotlib's ``Figure`` API (no pyplot global state; dashboards with
``layout="constrained"``, galleries on a fixed grid so thumbnails show at their native pixel size)
and is written atomically as a PNG at :data:`DPI`. Figure sizes are whole multiples of a quarter
inch, so every picture is exactly ``figsize * DPI`` pixels; the size formulas are in each
function's docstring. Class names are shown, never label indices; long names are shortened and
tick fonts shrink as the number of classes grows (2 to 100+ classes all render).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tracinflow.data import class_names_of
from tracinflow.images import RESAMPLE, decode_bytes
from tracinflow.io import atomic_path, write_text

DPI = 120
PROPONENT_COLOUR = "#1f77b4"  # blue: positive influence (helps)
OPPONENT_COLOUR = "#d62728"  # red: negative influence (hurts)
SUSPECT_COLOUR = "#d62728"
PAD_RGB = (255, 255, 255)  # around a thumbnail that is not square
MISSING_RGB = (200, 200, 200)  # the placeholder of an unreadable file
MAX_NAME = 18  # characters of a class name shown before it is shortened

DASHBOARD_FILES = {
    "influence_distributions": "influence_distributions.png",
    "top_influencers": "top_influencers.png",
    "class_influence_heatmap": "class_influence_heatmap.png",
    "self_influence_distribution": "self_influence_distribution.png",
}
REPORT_FILES = {
    "cross": "misprediction_cross_analysis.csv",
    "inspection": "mislabeled_inspection_report.csv",
    "influential": "influential_samples.csv",
    "class_influence": "class_influence.csv",
}
_TEXT_COLUMNS = [
    "test_true",
    "test_pred",
    "train_true",
    "train_pred",
    "kind",
    "ranking",
    "true_label",
    "predicted_label",
    "image_path",
    "train_class",
]


# --- helpers ------------------------------------------------------------------------------------


def _quarter(inches: float) -> float:
    """Round up to a whole quarter inch (exact in binary, so ``inches * DPI`` is a whole number)."""
    return math.ceil(inches * 4 - 1e-9) / 4


def _clip(value: float, low: float, high: float) -> float:
    return float(min(max(value, low), high))


def _tick_fontsize(k: int) -> float:
    """Tick label size for ``k`` categories: readable for a few, still legible for a hundred."""
    if k <= 15:
        return 9
    if k <= 40:
        return 7
    if k <= 70:
        return 5.5
    return 4.5


def _short(name, limit: int = MAX_NAME) -> str:
    text = str(name)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(_quarter(width), _quarter(height)), dpi=DPI, layout=layout)


def _save(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _fmt(value, sign: bool = True) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:+.3g}" if sign else f"{value:.3g}"


def _read_csv(path) -> pd.DataFrame:
    """A report CSV with its name columns kept as text (a class called "NA" or "01" stays so)."""
    header = pd.read_csv(path, nrows=0).columns
    text = {c: str for c in _TEXT_COLUMNS if c in header}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])


# --- dashboards ---------------------------------------------------------------------------------


def plot_influence_distributions(topk: pd.DataFrame, test_labels: pd.Series, class_names, path):
    """Per test class (its true label), box plots of the influence of its top-k proponents (blue)
    and opponents (red), side by side, with a zero line.

    ``topk``: ``test_idx, kind, rank, train_idx, influence``; ``test_labels``: test idx -> label;
    rows whose test idx has no label are left out. Size: width ``clip(3 + 0.5 K, 8, 30)`` x 6
    inches (``K`` = number of classes), e.g. 960 x 720 px for up to 10 classes.
    """
    names = [str(c) for c in class_names]
    k = len(names)
    fig = _figure(_clip(3 + 0.5 * k, 8, 30), 6)
    ax = fig.subplots()
    labels = pd.Series(test_labels)
    frame = topk[["test_idx", "kind", "influence"]].copy()
    frame["label"] = frame["test_idx"].map(labels)
    frame = frame[frame["label"].notna() & np.isfinite(frame["influence"].astype(float))]
    frame["label"] = frame["label"].astype(np.int64)
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
    ax.axhline(0, color="grey", linewidth=0.8)
    if k <= 15:
        counts = frame.groupby("label")["test_idx"].nunique()
        ticks = [f"{_short(n)}\n(n={int(counts.get(c, 0))})" for c, n in enumerate(names)]
    else:
        ticks = [_short(n) for n in names]
    rotation = 0 if k <= 6 else (45 if k <= 15 else 90)
    ax.set_xticks(
        range(k),
        ticks,
        rotation=rotation,
        ha="right" if rotation == 45 else "center",
        fontsize=_tick_fontsize(k),
    )
    ax.set_xlim(-0.7, k - 0.3)
    ax.set_xlabel(
        "true class of the test image (n = test images)"
        if k <= 15
        else "true class of the test image"
    )
    ax.set_ylabel("TracIn influence")
    ax.set_title("Influence of each test image's top-k proponents and opponents, per test class")
    ax.grid(axis="y", alpha=0.3)
    if handles:
        ax.legend(handles=handles, loc="best")
    else:
        ax.text(0.5, 0.5, "no influence values", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_top_influencers(influential: pd.DataFrame, path, n: int = 10):
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
    fig = _figure(10, _clip(1.6 + 0.28 * bars, 3.5, 40))
    ax = fig.subplots()
    if bars:
        y = np.arange(bars)[::-1]
        sums = rows["influence_sum"].to_numpy(float)
        colours = [PROPONENT_COLOUR if v > 0 else OPPONENT_COLOUR for v in sums]
        ax.barh(y, sums, color=colours, alpha=0.8)
        labels = [
            f"train {int(i)} ({_short(c)})"
            for i, c in zip(rows["train_idx"], rows["true_label"], strict=True)
        ]
        ax.set_yticks(y, labels, fontsize=_tick_fontsize(bars))
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
        _no_data(ax, "no training image with non-zero summed influence")
    ax.set_xlabel("summed influence over all test images' top-k lists")
    ax.set_title(f"Most helpful and most harmful training images (top {n} each)")
    return _save(fig, path)


def plot_class_influence_heatmap(class_influence: pd.DataFrame, path):
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
    side = _clip(2.5 + 0.55 * m, 6, 26)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    if values.size == 0:
        _no_data(ax, "no class influence")
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
            [_short(c) for c in cols],
            rotation=45 if len(cols) <= 15 else 90,
            ha="right" if len(cols) <= 15 else "center",
            fontsize=_tick_fontsize(len(cols)),
        )
        ax.set_yticks(
            range(len(rows)), [_short(r) for r in rows], fontsize=_tick_fontsize(len(rows))
        )
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
    return _save(fig, path)


def plot_self_influence_distribution(inspection: pd.DataFrame, path, n_suspects: int = 20):
    """Histogram of the training images' self-influence, with the top ``n_suspects`` of the
    inspection report (by its ``rank``) marked as red vertical lines; the legend names the ranking.

    The x axis is logarithmic when every value is positive and they span at least two decades.
    Size: 9 x 5 inches = 1080 x 600 px.
    """
    fig = _figure(9, 5)
    ax = fig.subplots()
    values = inspection["self_influence"].to_numpy(float)
    values = values[np.isfinite(values)]
    ranking = (
        str(inspection["ranking"].iloc[0])
        if "ranking" in inspection and len(inspection)
        else "rank"
    )
    if values.size == 0:
        _no_data(ax, "no self-influence values")
    else:
        log = bool(values.min() > 0 and values.max() / values.min() >= 100)
        bins_n = int(_clip(np.sqrt(values.size) * 2, 10, 80))
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
    return _save(fig, path)


# --- galleries ----------------------------------------------------------------------------------


def load_thumbnail(path, thumb_px: int) -> np.ndarray | None:
    """The image at ``path`` in RGB, its longer side scaled to ``thumb_px`` (aspect kept), centred
    on a ``thumb_px`` square of white; ``None`` when the file is missing or unreadable."""
    try:
        if path is None or (isinstance(path, float) and not np.isfinite(path)):
            return None
        image = decode_bytes(Path(path).read_bytes())
        width, height = image.size
        scale = thumb_px / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, RESAMPLE)
    except Exception:  # a gallery must never fail on one bad file
        return None
    canvas = Image.new("RGB", (thumb_px, thumb_px), PAD_RGB)
    canvas.paste(image, ((thumb_px - size[0]) // 2, (thumb_px - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _show_thumbnail(ax, path, thumb_px: int, caption: str, edge: str, fontsize: float = 7) -> None:
    pixels = load_thumbnail(path, thumb_px)
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


def _image_path(root, relative) -> Path | None:
    if relative is None or (isinstance(relative, float) and not np.isfinite(relative)):
        return None
    return Path(root) / str(relative)


MIN_SHOWN_PX = 64  # smaller thumbnails are shown enlarged to this


def _shown(thumb_px: int) -> float:
    """Side in inches at which a thumbnail is shown: its native size, at least MIN_SHOWN_PX."""
    return max(thumb_px, MIN_SHOWN_PX) / DPI


def _cell(thumb_px: int) -> tuple[float, float]:
    """(width, height) in inches of one captioned thumbnail: the image, room for four caption
    lines below it, and at least 1.5 inches across so captions never collide."""
    return _quarter(max(_shown(thumb_px) + 0.45, 1.5)), _quarter(_shown(thumb_px) + 1.0)


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
        f"label: {_short(row['train_true'], 14)}",
        f"pred: {_short(row['train_pred'], 14)}",
        f"score {_fmt(float(row['influence']))}",
    ]
    if "same_error" in row and str(row["same_error"]).lower() == "true":
        lines[-1] += " \u00b7 same error"
    return "\n".join(lines)


def misprediction_gallery(
    test_row: dict,
    proponents: pd.DataFrame,
    opponents: pd.DataFrame,
    dataset_root,
    path,
    thumb_px: int = 128,
    top: int = 5,
):
    """One PNG: the mispredicted test image at the left (captioned true / predicted / confidence),
    its top ``top`` proponents in the upper row and top opponents in the lower row, each captioned
    with train idx, label, prediction and influence score.

    ``test_row``: ``idx, path, true_label, predicted_label, confidence``; ``proponents`` /
    ``opponents``: ``train_idx, train_true, train_pred, influence, image_path`` (plus optional
    ``rank`` and ``same_error``). Paths are relative to ``dataset_root``; thumbnails come from the
    original files; a missing or unreadable file shows a grey "missing" placeholder; missing
    candidates leave empty slots. Size: ``(top + 2) * w`` x ``2 * h + 0.75`` inches with the cell
    ``w = q(max(s + 0.45, 1.5))``, ``h = q(s + 1.0)``, ``s = max(thumb_px, 64) / 120`` (``q``
    rounds up to a quarter inch): 1470 x 630 px for ``thumb_px=128, top=5``.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    cell_w, cell_h = _cell(thumb_px)
    width, height = _quarter((top + 2) * cell_w), _quarter(2 * cell_h + 0.75)
    fig = _figure(width, height, layout=None)
    side = _shown(thumb_px)

    # the test image: as large as its two-cell-wide column allows, title above, caption below
    test_side = max(min(2 * cell_w - 0.3, height - 1.4), side)
    ax = _place(fig, width, height, (2 * cell_w - test_side) / 2, height - 0.4 - test_side,
                test_side, test_side)  # fmt: skip
    confidence = test_row.get("confidence")
    conf_text = "n/a" if confidence is None or not np.isfinite(confidence) else f"{confidence:.2f}"
    _show_thumbnail(
        ax,
        _image_path(dataset_root, test_row.get("path")),
        round(test_side * DPI),
        f"true: {_short(test_row['true_label'])}\npred: {_short(test_row['predicted_label'])}\n"
        f"confidence {conf_text}",
        "black",
        fontsize=9,
    )
    ax.set_title(f"test {int(test_row['idx'])} (mispredicted)", fontsize=10, fontweight="bold")

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
            _show_thumbnail(
                cell,
                _image_path(dataset_root, row.get("image_path")),
                thumb_px,
                _neighbour_caption(row),
                colour,
            )
    return _save(fig, path)


def suspects_gallery(
    inspection: pd.DataFrame, dataset_root, path, n: int = 24, thumb_px: int = 128
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
    width, height = _quarter(max(cols * cell_w, 4)), _quarter(nrows * cell_h + 0.5)
    fig = _figure(width, height, layout=None)
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
            f"label: {_short(row['true_label'], 14)}\n"
            f"pred: {_short(row['predicted_label'], 14)}{conf}\n"
            f"score {_fmt(float(row['suspicion']), sign=False)}"
        )
        _show_thumbnail(
            ax,
            _image_path(dataset_root, row.get("image_path")),
            thumb_px,
            caption,
            SUSPECT_COLOUR if wrong else "grey",
        )
    if shown:
        title = f"Top {shown} mislabel suspects by {ranking}\n(red frame: label \u2260 prediction)"
    else:
        title = "No mislabel suspects"
    fig.text(0.5, 1 - 0.05 / height, title, ha="center", va="top", fontsize=10)
    return _save(fig, path)


# --- per-version drivers ------------------------------------------------------------------------


def write_version_plots(
    *,
    reports_dir,
    topk_path,
    test_predictions_path,
    manifest_path,
    out_dir,
    n_suspects: int,
    top_n: int,
    log: Callable[[str], None] = print,
) -> dict:
    """The four dashboards of one version from its report tables (file names in
    :data:`REPORT_FILES`, read from ``reports_dir``) into ``out_dir`` (:data:`DASHBOARD_FILES`).

    Returns ``{name: path}`` of the pictures written.
    """
    reports_dir, out_dir = Path(reports_dir), Path(out_dir)
    manifest = pd.read_parquet(manifest_path, columns=["label", "class"])
    names = class_names_of(manifest)
    test_labels = pd.read_parquet(test_predictions_path, columns=["idx", "label"]).set_index("idx")[
        "label"
    ]
    topk = pd.read_parquet(topk_path)
    written = {}
    for name, make in (
        (
            "influence_distributions",
            lambda p: plot_influence_distributions(topk, test_labels, names, p),
        ),
        (
            "top_influencers",
            lambda p: plot_top_influencers(
                _read_csv(reports_dir / REPORT_FILES["influential"]), p, top_n
            ),
        ),
        (
            "class_influence_heatmap",
            lambda p: plot_class_influence_heatmap(
                _read_csv(reports_dir / REPORT_FILES["class_influence"]), p
            ),
        ),
        (
            "self_influence_distribution",
            lambda p: plot_self_influence_distribution(
                _read_csv(reports_dir / REPORT_FILES["inspection"]), p, n_suspects
            ),
        ),
    ):
        written[name] = make(out_dir / DASHBOARD_FILES[name])
        log(f"wrote {written[name]}")
    return written


def _clear_old_galleries(folder: Path) -> None:
    """Remove the galleries of an earlier run, so the folder shows this run's mistakes only."""
    for old in [*folder.glob("test_*.png"), folder / "README.txt"]:
        if old.is_file():
            old.unlink()


def write_galleries(
    *,
    reports_dir,
    manifest_path,
    test_predictions_path,
    dataset_root,
    out_dir,
    max_mispredictions: int = 20,
    n_suspects: int = 24,
    thumb_px: int = 128,
    top: int = 5,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """``out_dir/mispredictions/test_<idx>.png`` for the ``max_mispredictions`` most confident
    mispredicted test images (confidence descending, ties by idx), and ``out_dir/suspects.png``.

    The mistakes are the test predictions with ``pred != label``; their proponents and opponents
    come from the cross analysis (labels, predictions, scores) and the manifest (image paths). With
    no gallery to draw the folder holds a ``README.txt`` saying why. Returns the files written.
    """
    reports_dir, out_dir = Path(reports_dir), Path(out_dir)
    manifest = pd.read_parquet(manifest_path, columns=["idx", "path", "label", "class"])
    names = np.asarray(class_names_of(manifest), dtype=object)
    paths = manifest.set_index("idx")["path"]
    predictions = pd.read_parquet(
        test_predictions_path, columns=["idx", "label", "pred", "confidence"]
    )
    mistakes = predictions[predictions["pred"] != predictions["label"]].sort_values(
        ["confidence", "idx"], ascending=[False, True], kind="stable"
    )
    chosen = mistakes.head(max(0, max_mispredictions))
    cross = _read_csv(reports_dir / REPORT_FILES["cross"])
    cross["image_path"] = cross["train_idx"].map(paths)

    folder = out_dir / "mispredictions"
    folder.mkdir(parents=True, exist_ok=True)
    _clear_old_galleries(folder)
    written: list[Path] = []
    if chosen.empty:
        reason = (
            "No mispredicted test images: every test image was predicted correctly, so there are "
            "no misprediction galleries.\n"
            if mistakes.empty
            else f"{len(mistakes)} mispredicted test images, but galleries are disabled "
            f"(mispredictions: {max_mispredictions}).\n"
        )
        write_text(folder / "README.txt", reason)
        written.append(folder / "README.txt")
        log(reason.strip())
    by_test = dict(tuple(cross.groupby("test_idx"))) if len(cross) else {}
    for i, row in enumerate(chosen.itertuples(index=False), start=1):
        idx = int(row.idx)
        neighbours = by_test.get(idx, cross.iloc[0:0])
        test_row = {
            "idx": idx,
            "path": paths.get(idx),
            "true_label": names[int(row.label)],
            "predicted_label": names[int(row.pred)],
            "confidence": float(row.confidence),
        }
        target = misprediction_gallery(
            test_row,
            neighbours[neighbours["kind"] == "proponent"],
            neighbours[neighbours["kind"] == "opponent"],
            dataset_root,
            folder / f"test_{idx}.png",
            thumb_px=thumb_px,
            top=top,
        )
        written.append(target)
        log(
            f"gallery {i}/{len(chosen)}: test {idx} ({test_row['confidence']:.2f} confident) -> {target}"
        )
    inspection = _read_csv(reports_dir / REPORT_FILES["inspection"])
    written.append(
        suspects_gallery(inspection, dataset_root, out_dir / "suspects.png", n_suspects, thumb_px)
    )
    log(f"wrote {written[-1]} ({min(n_suspects, len(inspection))} suspects)")
    return written


__all__ = [
    "DASHBOARD_FILES",
    "DPI",
    "REPORT_FILES",
    "load_thumbnail",
    "misprediction_gallery",
    "plot_class_influence_heatmap",
    "plot_influence_distributions",
    "plot_self_influence_distribution",
    "plot_top_influencers",
    "suspects_gallery",
    "write_galleries",
    "write_version_plots",
]
