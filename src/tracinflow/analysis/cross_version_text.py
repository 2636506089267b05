"""results/cross_version/summary.md: an overview paragraph and every cross-version table
(:mod:`tracinflow.analysis.cross_version`), capped at a few rows each, with the plots, linked by
their file names."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from tracinflow.analysis.cross_version import ALL_VERSIONS
from tracinflow.analysis.markdown import markdown_table, markdown_text

MAX_SUMMARY_ROWS = 20


def _capped_table(frame: pd.DataFrame, file_name: str, max_rows: int) -> str:
    if frame.empty:
        return "None."
    text = markdown_table(frame.head(max_rows))
    if len(frame) > max_rows:
        text += f"\n\n({len(frame) - max_rows} more in {file_name})"
    return text


def _overview(performance: pd.DataFrame, persistent: pd.DataFrame, min_versions: int) -> str:
    n = len(performance)
    test_images = performance["test_images"].max() if n else 0
    parts = [f"{n} version{'s' if n != 1 else ''} compared on the same {test_images} test images."]
    accuracy = performance["test_accuracy"].to_numpy(np.float64)
    if n and not np.isnan(accuracy).all():
        best = np.nanmax(accuracy)
        winners = [
            markdown_text(name) for name in performance.loc[accuracy == best, "version"].astype(str)
        ]
        parts.append(
            f"Best by test accuracy: {', '.join(winners)} ({best:.4g})."
            if len(winners) == 1
            else f"Best by test accuracy (tied): {', '.join(winners)} ({best:.4g})."
        )
    parts.append(
        f"{len(persistent)} test image{'s were' if len(persistent) != 1 else ' was'} "
        f"mispredicted by at least {min_versions} of the {n} version{'s' if n != 1 else ''}."
    )
    return " ".join(parts)


SUMMARY_FILES = (
    "performance", "cleaning", "persistent", "influencers", "candidates", "statistics", "pairs",
    "registry", "performance_plot", "statistics_plot",
)  # fmt: skip


def summary_markdown(
    *,
    performance: pd.DataFrame,
    persistent: pd.DataFrame,
    influencers: pd.DataFrame,
    candidates: pd.DataFrame,
    statistics: pd.DataFrame,
    pairs: pd.DataFrame,
    min_versions: int,
    top: int,
    files: Mapping[str, str],
    cleaning: pd.DataFrame | None = None,
    max_rows: int = MAX_SUMMARY_ROWS,
) -> str:
    """``summary.md``: an overview paragraph, every table (at most ``max_rows`` rows each, with a
    note of how many more the CSV holds) and the two plots, linked by their file names (the summary
    lies beside them). ``files`` names the files by the keys of :data:`SUMMARY_FILES`."""
    missing = [key for key in SUMMARY_FILES if key not in files]
    if missing:
        raise ValueError(f"summary_markdown: no file names for {missing}")
    sections = [
        "# Cross-version comparison",
        _overview(performance, persistent, min_versions),
        "## Performance",
        _capped_table(performance, files["performance"], max_rows),
        f"![Val and test accuracy per version]({files['performance_plot']})",
        *(
            [
                "## Cleaning",
                "Versions trained on another version's training set minus (or relabelled at) its "
                "top suspects by `ranking` (or those a marks file, `list`, marks mislabeled): the "
                "planted flips removed, and the test accuracy before and after (same test set).",
                _capped_table(cleaning, files["cleaning"], max_rows),
            ]
            if cleaning is not None and len(cleaning)
            else []
        ),
        "## Persistent mispredictions",
        f"Test images mispredicted by at least {min_versions} versions; `predictions` lists every "
        "version's predicted class.",
        _capped_table(persistent, files["persistent"], max_rows),
        "## Consistent influencers",
        f"Training images among the {top} most helpful (largest summed top-k influence) or most "
        f"harmful (most negative) of at least {min_versions} versions.",
        _capped_table(influencers, files["influencers"], max_rows),
        "## Shared mislabel candidates",
        f"Training images among the {top} top suspects of the mislabel inspection of at least "
        f"{min_versions} versions.",
        _capped_table(candidates, files["candidates"], max_rows),
        "## Influence statistics",
        _capped_table(statistics, files["statistics"], max_rows),
        f"![Top-k influence per version]({files['statistics_plot']})",
        "## Most confused class pairs",
        f'Off-diagonal test confusion counts; version "{ALL_VERSIONS}" sums over the versions.',
        _capped_table(pairs, files["pairs"], max_rows),
        "## Versions",
        f"Settings, training-set fingerprints, checkpoints and training times: "
        f"`{files['registry']}`.",
    ]
    return "\n\n".join(sections) + "\n"
