"""results/study/summary.md: the noise study's detection and cleaning summaries
(:mod:`tracinflow.analysis.study`) as markdown tables, mean ± std over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.analysis.markdown import markdown_table_from_cells, markdown_text
from tracinflow.analysis.study import DETECTION_METRICS

DETECTION_HEADER = [
    "noise", "ranking", "found at 5%", "found at 10%", "found at 20%", "ROC AUC", "AP", "seeds",
]  # fmt: skip
CLEANING_HEADER = [
    "noise", "variant", "test accuracy %", "noise cost", "gain over noisy",
    "share of cost recovered %", "gain over random", "flips fixed %", "seeds",
]  # fmt: skip


def _cell(mean: float, std: float, percent: bool) -> str:
    """``mean ± std`` (in percent when ``percent``); no ``± std`` for one seed."""
    if np.isnan(mean):
        return ""
    scale, digits = (100.0, ".1f") if percent else (1.0, ".3f")
    text = f"{mean * scale:{digits}}"
    return text if np.isnan(std) else f"{text} ± {std * scale:{digits}}"


def detection_markdown(summary: pd.DataFrame) -> str:
    """The detection summary as a markdown table: per setting and ranking, the share of flips
    found at 5/10/20% inspected (%), ROC AUC and AP, mean ± std over seeds."""
    rows = []
    for row in summary.itertuples(index=False):
        d = row._asdict()
        ranking = markdown_text(row.ranking)
        name = f"**{ranking}** (default)" if row.default else ranking
        cells = [
            _cell(d[f"{m}_mean"], d[f"{m}_std"], percent=m.startswith("found"))
            for m in DETECTION_METRICS
        ]
        rows.append([f"{markdown_text(row.mode)} {row.rate:.0%}", name, *cells, str(row.seeds)])
    return markdown_table_from_cells(DETECTION_HEADER, rows) + "\n"


def cleaning_markdown(summary: pd.DataFrame) -> str:
    """The cleaning summary as a markdown table (percentage points; mean ± std over seeds)."""
    rows = []
    for row in summary.itertuples(index=False):
        d = row._asdict()
        noise = "none" if row.mode == "none" else f"{markdown_text(row.mode)} {row.rate:.0%}"
        cells = [
            _cell(d[f"{m}_mean"], d[f"{m}_std"], percent=True) for m in ("accuracy", "cost", "gain")
        ]
        cells.append(_cell(row.recovered, np.nan, percent=True) if row.variant != "noisy" else "")
        over_random = _cell(row.gain_over_random_mean, row.gain_over_random_std, percent=True)
        if not np.isnan(row.gain_over_random_t):
            over_random += f" (t {row.gain_over_random_t:.1f})"
        cells += [over_random, _cell(row.flips_fixed_mean, row.flips_fixed_std, percent=True)]
        rows.append([noise, markdown_text(row.variant), *cells, str(row.seeds)])
    return markdown_table_from_cells(CLEANING_HEADER, rows) + "\n"


def study_summary_markdown(
    roles: pd.DataFrame, detection: pd.DataFrame, cleaning: pd.DataFrame
) -> str:
    """summary.md: a title naming the versions and seeds (``roles``), then the detection and the
    cleaning summary."""
    return (
        f"# Noise study: {len(roles)} versions, seeds {sorted(set(roles['seed']))}\n\n"
        "## Finding the planted flips (mean ± std over seeds; shares in %)\n\n"
        + detection_markdown(detection)
        + "\n## Cleaning (test accuracy and gains in percentage points; mean ± std over seeds)\n\n"
        + cleaning_markdown(cleaning)
    )
