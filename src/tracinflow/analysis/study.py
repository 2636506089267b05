"""The noise study's tables: how well each ranking finds planted flips, and how much of the accuracy
the noise cost each cleaning gets back, as mean and standard deviation over seeds.

The study's versions come from :func:`tracinflow.config.study_versions`; each is described here by
its settings alone (:func:`study_roles`): a clean ``baseline``, a ``noisy`` version (a noise rate
and mode), or a ``cleaned`` one (an action and a ranking applied to a noisy version).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from tracinflow.analysis.detection import DETECTION_COLUMNS

DETECTION_METRICS = DETECTION_COLUMNS[1:6]
ROLE_COLUMNS = ["version", "role", "rate", "mode", "seed", "variant", "source"]


def study_roles(settings: Mapping[str, dict]) -> pd.DataFrame:
    """One row per version (``ROLE_COLUMNS``): its role, noise setting (rate, mode; the source's
    for a cleaned version), seed, variant (``baseline``, ``noisy`` or ``<action>_<ranking>``, a
    null ranking read as ``default``, a marks file's as ``list``; a cleaning that acts on another
    share than the noise rate, or on a count, says so: ``drop_default_0.45``,
    ``drop_default_n100``) and source (the noisy version a cleaned one cleans)."""
    rows = []
    for name, s in settings.items():
        noise, clean = s.get("label_noise"), s.get("clean")
        row = {"version": name, "seed": int(s["seed"]), "source": None}
        if clean:
            rate, mode = _source_noise(settings, clean["from"])
            ranking = "list" if clean.get("list") else clean.get("ranking") or "default"
            row |= {"role": "cleaned", "rate": rate, "mode": mode}
            variant = f"{clean['action']}_{ranking}{_amount_suffix(clean, rate)}"
            row |= {"variant": variant, "source": clean["from"]}
        elif noise and noise["rate"] > 0:
            row |= {"role": "noisy", "rate": noise["rate"], "mode": noise["mode"]}
            row["variant"] = "noisy"
        else:
            row |= {"role": "baseline", "rate": np.nan, "mode": None, "variant": "baseline"}
        rows.append(row)
    return pd.DataFrame(rows, columns=ROLE_COLUMNS)


def _source_noise(settings: Mapping[str, dict], source: str) -> tuple[float, str]:
    """The noise setting (rate, mode) of the version a cleaned one cleans; a clean version's is
    ``(0.0, "none")``, the baselines' row of the tables: what cleaning costs where nothing was
    flipped. (A study config cannot clean a cleaned version: :func:`with_study_versions`.)"""
    noise = settings[source].get("label_noise")
    if noise and noise["rate"] > 0:
        return noise["rate"], noise["mode"]
    return 0.0, "none"


def _amount_suffix(clean: dict, rate: float) -> str:
    """How much a cleaning acts on, where it is not the study's own (as many as were flipped):
    without it, versions that drop different shares by one ranking would share a variant and be
    averaged together."""
    if clean.get("count") is not None:
        return f"_n{int(clean['count'])}"
    fraction = clean.get("fraction")
    if fraction is not None and not np.isclose(fraction, rate):
        return f"_{fraction:g}"
    return ""


def _mean_std(frame: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1; NaN for one seed) of ``metrics`` per group of
    ``keys``, with the number of seeds, in the groups' first-seen order."""
    grouped = frame.groupby(keys, sort=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{metric}_{stat}" for metric, stat in out.columns]
    out["seeds"] = grouped.size()
    return out.reset_index()


def detection_summary(roles: pd.DataFrame, tables: Mapping[str, pd.DataFrame]):
    """``(per seed, summary)`` of the noisy versions' detection tables (noise_detection.csv,
    ``tables`` by version): per (rate, mode, ranking) the mean and std over seeds of the share of
    flips found at 5/10/20% inspected, ROC AUC and average precision."""
    noisy = roles.loc[roles["role"] == "noisy"]
    missing = sorted(set(noisy["version"]) - set(tables))
    if missing:
        raise ValueError(f"no detection table for the noisy versions {missing}")
    frames = []
    for row in noisy.itertuples(index=False):
        table = tables[row.version].copy()
        table.insert(0, "version", row.version)
        table.insert(1, "rate", row.rate)
        table.insert(2, "mode", row.mode)
        table.insert(3, "seed", row.seed)
        frames.append(table)
    per_seed = pd.concat(frames, ignore_index=True)
    summary = _mean_std(per_seed, ["rate", "mode", "ranking"], DETECTION_METRICS)
    defaults = per_seed.groupby(["rate", "mode", "ranking"], sort=False)["default"].any()
    summary["default"] = defaults.to_numpy()
    return per_seed, summary


def flips_fixed(train_set: pd.DataFrame, planted: int) -> float:
    """The share of ``planted`` flips a cleaned training set no longer trains on with a wrong
    label (dropped, or relabelled to the true class)."""
    left = int((train_set["noisy"].to_numpy(bool) & ~train_set["dropped"].to_numpy(bool)).sum())
    return 1.0 - left / planted if planted else float("nan")


def _baseline_accuracy(per_seed: pd.DataFrame, seed: int) -> float:
    rows = per_seed.loc[(per_seed["role"] == "baseline") & (per_seed["seed"] == seed)]
    if rows.empty:
        raise ValueError(f"the study has no baseline version for seed {seed}")
    return float(rows["accuracy"].iloc[0])


def _with_recovery(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Each noisy / cleaned row with the paired comparisons of its seed: the accuracy cost of the
    noise (baseline - noisy), the gain over noisy and over random removal, and the share of the
    cost recovered."""
    rows = per_seed.loc[per_seed["role"] != "baseline"].copy()
    accuracy = per_seed.set_index("version")["accuracy"]
    noisy_version = np.where(rows["role"] == "noisy", rows["version"], rows["source"])
    rows["noisy_accuracy"] = accuracy.loc[noisy_version].to_numpy()
    rows["baseline_accuracy"] = [_baseline_accuracy(per_seed, s) for s in rows["seed"]]
    rows["cost"] = rows["baseline_accuracy"] - rows["noisy_accuracy"]
    rows["gain"] = rows["accuracy"] - rows["noisy_accuracy"]
    rows["recovered"] = rows["gain"] / rows["cost"].where(rows["cost"] != 0)
    random_version = {v: f"{v}_drop_random" for v in noisy_version}
    random_accuracy = [accuracy.get(random_version[v], np.nan) for v in noisy_version]
    rows["gain_over_random"] = rows["accuracy"] - np.asarray(random_accuracy, dtype=np.float64)
    return rows


def cleaning_over_seeds(
    roles: pd.DataFrame,
    accuracies: Mapping[str, float],
    train_sets: Mapping[str, pd.DataFrame],
):
    """``(per seed, summary)`` of the study's test accuracies (``accuracies`` by version): per
    (rate, mode, variant) the mean and std over seeds of the accuracy, the noise's accuracy cost
    (baseline - noisy of the same seed), the gain over that noisy version, the gain over dropping
    as many random images and the share of the planted flips fixed (``train_sets``); and
    ``recovered``, the mean gain over the mean cost where the noise cost accuracy (the per-seed
    shares are in the per-seed table), and ``gain_over_random_t``, the paired t statistic of the
    gain over random removal."""
    per_seed = roles.copy()
    per_seed["accuracy"] = [float(accuracies[v]) for v in per_seed["version"]]
    planted = {
        v: int(train_sets[v]["noisy"].sum())
        for v in per_seed.loc[per_seed["role"] == "noisy", "version"]
    }
    per_seed["flips_fixed"] = [
        # a cleaning of a clean version fixes no flips (NaN)
        flips_fixed(
            train_sets[r.version], planted.get(r.source if r.role == "cleaned" else r.version, 0)
        )
        if r.role != "baseline"
        else np.nan
        for r in per_seed.itertuples(index=False)
    ]
    compared = _with_recovery(per_seed)
    per_seed = per_seed.merge(
        compared[["version", "cost", "gain", "recovered", "gain_over_random"]], on="version",
        how="left",
    )  # fmt: skip
    metrics = ["accuracy", "cost", "gain", "gain_over_random", "flips_fixed"]
    baselines = per_seed.loc[per_seed["role"] == "baseline"]
    summary = pd.concat(
        [
            _mean_std(
                baselines.assign(rate=0.0, mode="none"), ["rate", "mode", "variant"], metrics
            ),
            _mean_std(
                per_seed.loc[per_seed["role"] != "baseline"], ["rate", "mode", "variant"], metrics
            ),
        ],
        ignore_index=True,
    )
    # A ratio of means: the per-seed ratios explode where the noise cost is near zero; none where
    # the noise cost nothing.
    cost = summary["cost_mean"].where(summary["cost_mean"] > 0)
    summary["recovered"] = summary["gain_mean"] / cost
    # the paired t statistic of the gain over random removal, mean / (std / sqrt(seeds))
    spread = summary["gain_over_random_std"] / np.sqrt(summary["seeds"])
    summary["gain_over_random_t"] = summary["gain_over_random_mean"] / spread.where(spread > 0)
    return per_seed, summary
