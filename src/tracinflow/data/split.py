"""The stratified, leak-free, deterministic train/val/test split, and lookups by split."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from tracinflow.data import SPLITS, DataError
from tracinflow.data.scan import MANIFEST_COLUMNS


def class_split_counts(count: int, fractions: dict) -> dict:
    """How many images of a class of ``count`` images go to each split (val and test at least one)."""
    val = max(1, round(fractions["val"] * count))
    test = max(1, round(fractions["test"] * count))
    return {"train": count - val - test, "val": val, "test": test}


def _class_rng(seed: int, folder: str) -> np.random.Generator:
    # Seeded by the class folder's name, not its label, so adding a class leaves the others' split alone.
    return np.random.default_rng([seed, zlib.crc32(folder.encode())])


def split_images(images: pd.DataFrame, fractions: dict, seed: int) -> pd.DataFrame:
    """Stratified, deterministic train/val/test split; byte-identical copies share one split.

    Each class is cut separately by its own seeded shuffle, so split sizes per class are within one
    image of the requested fractions. Copies of one file (same sha256) are placed as a unit with the
    class of their first copy, so a duplicate never sits in train and test at once (leakage).
    """
    total = sum(fractions[name] for name in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise DataError(
            f"split fractions must sum to 1, got train+val+test = {total:g}; fix split.* in the config"
        )
    counts = images.groupby("folder").size()
    if len(counts) < 2:
        raise DataError(
            f"need at least 2 classes with readable images, found {len(counts)} "
            f"({', '.join(counts.index) or 'none'}); see rejected.csv for unreadable files"
        )
    too_small = {
        folder: n for folder, n in counts.items() if class_split_counts(n, fractions)["train"] < 1
    }
    if too_small:
        detail = ", ".join(f"'{folder}' has {n}" for folder, n in sorted(too_small.items()))
        raise DataError(
            f"classes too small to split into train/val/test ({detail} readable images; each "
            f"needs at least 3): add images to these classes or remove their folders"
        )

    first = images.groupby("sha256")["idx"].transform("min")
    home = images.set_index("idx").loc[first, "folder"].to_numpy()
    units = images.assign(unit=first.to_numpy(), home=home)
    split = pd.Series("", index=images.index, dtype=object)
    for folder, members in units.groupby("home", sort=True):
        unit_rows = members.groupby("unit").groups  # unit -> row labels, in unit order
        order = list(unit_rows)
        _class_rng(seed, folder).shuffle(order)
        wanted = class_split_counts(int(counts.get(folder, len(members))), fractions)
        filled = {"test": 0, "val": 0}
        for unit in order:
            rows = unit_rows[unit]
            target = next((s for s in ("test", "val") if filled[s] < wanted[s]), "train")
            if target != "train":
                filled[target] += len(rows)
            split.loc[rows] = target
    manifest = images.assign(split=split.to_numpy())
    return manifest[MANIFEST_COLUMNS].reset_index(drop=True)


def class_names_of(manifest: pd.DataFrame) -> list[str]:
    """Display names by label (the manifest's ``class`` of each ``label``)."""
    return manifest.drop_duplicates("label").sort_values("label")["class"].astype(str).tolist()


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest rows of one split in cache order (by idx): row i of cache/{split}.npy."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rows = manifest[manifest["split"] == split].sort_values("idx", kind="stable")
    return rows.reset_index(drop=True)


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, with totals: what a person checks after a split."""
    table = pd.crosstab(manifest["class"], manifest["split"]).reindex(columns=SPLITS, fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["(all)"] = table.sum(axis=0)
    return table.reset_index().rename(columns={"index": "class"})
