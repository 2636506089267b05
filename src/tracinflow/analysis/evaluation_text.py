"""results/evaluation/summary.md: the LDS and removal tables with their settings and a plain
reading of what they say (including where the answer is "no better than random")."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.analysis.markdown import markdown_table, markdown_text


def _interval(row) -> str:
    return f"{row['lds']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def lds_reading(table: pd.DataFrame) -> str:
    """One paragraph: the default method's LDS and whether its CI excludes zero, the random
    control, the ceiling, and the method chosen on one half of the test images with its LDS on the
    other (the best method where the table has no choice)."""
    methods = table[table["kind"] == "method"]
    parts = []
    default = methods[methods["default"]]
    if len(default):
        row = default.iloc[0]
        verdict = (
            "above zero: it predicts retraining better than random scores"
            if row["ci_low"] > 0
            else "not distinguishable from zero: no better than random scores"
            if row["ci_high"] >= 0
            else "below zero: it predicts retraining worse than random scores"
        )
        parts.append(
            f"The default method, `{markdown_text(row['method'])}`, has an LDS of "
            f"{_interval(row)} (95% CI), {verdict}."
        )
    for kind, what in (("random", "Random scores"), ("ceiling", "One retrain predicting another")):
        rows = table[table["kind"] == kind]
        if len(rows):
            parts.append(f"{what}: {_interval(rows.iloc[0])}.")
    chosen = methods[methods["chosen"]] if "chosen" in methods else methods.iloc[:0]
    if len(chosen):
        row = chosen.iloc[0]
        parts.append(
            f"Chosen on a random half of the test images (LDS {row['lds_selection']:+.3f} there): "
            f"`{markdown_text(row['method'])}`, whose LDS on the other half is "
            f"{row['lds_held_out']:+.3f} [{row['held_out_ci_low']:+.3f}, "
            f"{row['held_out_ci_high']:+.3f}]."
        )
    elif len(methods):
        best = methods.loc[methods["lds"].idxmax()]
        parts.append(f"Best method: `{markdown_text(best['method'])}`, {_interval(best)}.")
    ensembles = table[table["kind"] == "ensemble"]
    if len(ensembles):
        best = ensembles.loc[ensembles["lds"].idxmax()]
        parts.append(
            f"Averaged over models retrained with other seeds (TRAK's ensembling, "
            f"influence.ensemble), the best is `{markdown_text(best['method'])}`: "
            f"{_interval(best)}, held-out half {best['lds_held_out']:+.3f}."
        )
    return " ".join(parts)


def removal_reading(table: pd.DataFrame) -> str:
    """One sentence per (method, k): its removal's effect on the mistakes against each control."""
    parts = []
    for (method, k), group in table.groupby(["method", "k"], sort=False):
        own = group[group["selection"] == "method"].iloc[0]
        text = (
            f"Removing the {int(own['removed'])} top-{int(k)} proponents of `{markdown_text(method)}` "
            f"changed the share of the mistakes predicted right by {100 * own['fixed']:+.1f} points "
            f"(± {100 * own['fixed_se']:.1f} SE over {int(own['seeds'])} seeds) against the full "
            f"retrain"
        )
        controls = [
            f"{100 * row['method_minus_this_fixed']:+.1f} ± {100 * row['method_minus_this_fixed_se']:.1f} "
            f"points against {row['selection']}"
            for _, row in group[group["selection"] != "method"].iterrows()
        ]
        parts.append(text + ("; the method minus each control: " + ", ".join(controls) if controls
                             else "") + ".")  # fmt: skip
    return " ".join(parts)


def _rounded(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = np.round(out[column], digits)
    return out


def brittleness_reading(table: pd.DataFrame) -> str:
    """Per selection, how many of the sampled images some k flipped, and the median smallest k."""
    parts = []
    for selection, group in table.groupby("selection", sort=False):
        flipped = group["smallest_k"].dropna()
        median = f", median smallest k {flipped.median():g}" if len(flipped) else ""
        parts.append(f"{selection}: {len(flipped)} of {len(group)} images flipped{median}")
    return "; ".join(parts) + "."


def _brittleness_section(table: pd.DataFrame | None, evaluation: dict) -> list[str]:
    if table is None:
        return []
    settings = evaluation["brittleness"]
    return [
        "## Brittleness: removing one image's proponents",
        f"For {settings['test_images']} test images the reference predicts right (a seeded "
        f"sample), each one's top-k proponents at its label (k in {settings['k']}) are removed, "
        f"and as many random images with the same labels, and the model retrained with the "
        f"reference's seed; `smallest_k` is the least k whose removal flipped the prediction "
        f"(empty: none did).",
        brittleness_reading(table),
        markdown_table(_rounded(table)),
    ]


def evaluation_summary_markdown(
    lds: pd.DataFrame,
    removal: pd.DataFrame,
    brittleness: pd.DataFrame | None = None,
    *,
    reference: str,
    evaluation: dict,
    default,
) -> str:
    """The whole summary.md."""
    settings, removal_settings = evaluation["lds"], evaluation["removal"]
    n_test = int(lds["n_test"].max()) if len(lds) else 0
    return (
        "\n\n".join(
            [
                f"# Is the answer right? The counterfactual evaluation of `{markdown_text(reference)}`",
                f"Every number is measured by retraining version `{markdown_text(reference)}`'s model "
                f"(its settings, its training set) without some of its training images. The default "
                f"method, what its reports and explorer use, is `{markdown_text(default)}`.",
                "## Linear datamodeling score (LDS)",
                f"{settings['subsets']} random subsets of {settings['fraction']:.0%} of the training "
                f"images, each retrained with the seeds {settings['seeds']}; the target is the mean "
                f"true-label margin of each of {n_test} test images ("
                f"{'all of them' if settings['test_images'] is None else 'a seeded sample'}); "
                f"a method's prediction is "
                f"the sum of its scores over a subset; LDS is the mean over test images of the "
                f"Spearman correlation over subsets, with a 95% bootstrap CI over subsets and test "
                f"images ({settings['bootstrap']} resamples). `lds_mistakes`: the same over the test "
                f"images the reference mispredicts. `lds_selection`: the LDS over a seeded random "
                f"half of the test images, on which one method is `chosen` (the sensitivity rows, "
                f"a curvature method at another damping, are not candidates); `lds_held_out`: the "
                f"LDS over the other half, with its CI.",
                lds_reading(lds),
                markdown_table(_rounded(lds)),
                "![LDS per method](lds.png)",
                "## Removing the proponents of the mistakes",
                f"For the reference's mispredicted test images, the union of each one's top-k "
                f"proponents at its predicted label (k in {removal_settings['k']}) is removed and the "
                f"model retrained with the seeds {removal_settings['seeds']}; as many images are "
                f"removed by each control ({', '.join(removal_settings['controls'])}: label-matched "
                f"random, same labels and nearest training loss, highest training loss). Each value "
                f"is the retrain's change against the same seed's retrain on the whole training set: "
                f"`fixed`, the share of the mistakes now predicted right; `margin`, their mean "
                f"true-label margin; `rest_accuracy`, the accuracy on the other test images; "
                f"`method_minus_this_*`, the method's removal minus the control's, paired by seed "
                f"(mean and standard error over seeds).",
                removal_reading(removal),
                markdown_table(_rounded(removal)),
                "![Removal against the controls](removal.png)",
                *_brittleness_section(brittleness, evaluation),
            ]
        )
        + "\n"
    )
