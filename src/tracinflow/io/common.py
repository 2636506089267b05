"""What several stages read the same way: the image cache, a version's rows of a split, report
CSVs with class-name columns kept as text."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from tracinflow.data.cache import CacheRows
from tracinflow.data.split import split_rows
from tracinflow.data.train_set import train_set_rows

# Columns of the report CSVs that hold names; read as text, so a class called "NA" or "01" stays so.
TEXT_COLUMNS = [
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


def load_cache(path, mmap: bool = True) -> np.ndarray:
    """The cached images of a split (uint8 N x H x W x 3), memory-mapped by default."""
    return np.load(path, mmap_mode="r" if mmap else None)


def read_report_csv(path) -> pd.DataFrame:
    """A report CSV with its name columns kept as text."""
    header = pd.read_csv(path, nrows=0).columns
    text = {c: str for c in TEXT_COLUMNS if c in header}
    return pd.read_csv(path, dtype=text, keep_default_na=False, na_values=[""])


def version_split(manifest: pd.DataFrame, split: str, train_set_path, cache_path):
    """``(images, labels, idx)`` of a split as a version sees it: the train split is the version's
    training set (train_set.parquet: its labels, without dropped images), val and test the
    manifest's."""
    images = load_cache(cache_path)
    if split == "train":
        rows = train_set_rows(pd.read_parquet(train_set_path), manifest)
        images = CacheRows(images, rows["position"].to_numpy())
    else:
        rows = split_rows(manifest, split)
    return images, rows["label"].to_numpy(np.int64), rows["idx"].to_numpy(np.int64)


def optional_input(inputs, name: str):
    """The file of an input that a rule declares only sometimes (an empty list otherwise): the
    path, or None. Snakemake hands a one-file list as a list, a test may hand the path itself."""
    value = inputs.get(name)
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    files = list(value)
    if len(files) > 1:
        raise ValueError(f"input {name!r}: expected at most one file, got {files}")
    return files[0] if files else None


def per_member(files, members: int) -> list[list]:
    """An input listed by ensemble member, then checkpoint (``ensemble_train``, ...), as one list
    per member."""
    files = list(files)
    per = len(files) // members if members else 0
    return [files[m * per : (m + 1) * per] for m in range(members)]
