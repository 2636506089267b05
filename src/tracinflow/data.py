"""Data stages: scan an ImageFolder root, split it (stratified, leak-free), decode it into a cache.

The manifest is the contract every later stage reads: one row per readable image with a stable
``idx`` (position in path order), its path relative to the root, class, label, split, sha256 and size.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tracinflow import io
from tracinflow.images import decode_bytes, load_for_cache
from tracinflow.progress import Progress

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["idx", "path", "class", "label", "split", "sha256", "width", "height"]
REJECTED_COLUMNS = ["path", "reason"]


class DataError(ValueError):
    """A problem with the images themselves, worded for the person who owns the folder."""


def _imap(function: Callable, items: Iterable, workers: int, chunksize: int = 16):
    """Ordered map over a process pool (inline for one worker, so tests and small runs stay simple)."""
    if workers <= 1:
        yield from map(function, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(function, items, chunksize=chunksize)


def _inspect_file(path: Path) -> dict:
    """Read and fully decode one file: its hash and size, or why it is not a usable image."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return {"ok": False, "reason": f"cannot read file: {error}"}
    if not data:
        return {"ok": False, "reason": "empty file (0 bytes)"}
    try:
        image = decode_bytes(data)
    except Exception as error:  # PIL raises many types for corrupt data; all mean "not an image"
        return {"ok": False, "reason": f"not a readable image: {type(error).__name__}: {error}"}
    width, height = image.size
    return {
        "ok": True,
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
    }


def list_image_folder(root, extensions: Iterable[str]):
    """Class folders and candidate files under ``root``, and files that cannot be candidates.

    Returns ``(classes, candidates, rejected)``: sorted class folder names, ``(relative path,
    folder)`` pairs of image-extension files at any depth under a class folder, and rejected
    ``(relative path, reason)`` rows for everything else (nothing is dropped without a trace).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root '{root}' is not a folder; set dataset.root in the config")
    allowed = {ext.lower() for ext in extensions}
    classes, candidates, rejected = [], [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        relative = entry.relative_to(root).as_posix()
        if entry.is_file():
            rejected.append((relative, "not inside a class folder (<root>/<class>/<image>)"))
            continue
        if not entry.is_dir():
            continue
        classes.append(entry.name)
        for file in sorted(p for p in entry.rglob("*") if p.is_file()):
            relative = file.relative_to(root).as_posix()
            if file.suffix.lower() in allowed:
                candidates.append((relative, entry.name))
            else:
                rejected.append(
                    (
                        relative,
                        f"extension '{file.suffix}' is not an image extension {sorted(allowed)}",
                    )
                )
    return classes, candidates, rejected


def scan_image_folder(
    root,
    extensions: Iterable[str],
    class_names: dict | None = None,
    workers: int = 1,
    log=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every file under ``root`` and return ``(images, rejected)``.

    ``images`` has the manifest columns except ``split`` (plus ``folder``, the class folder name);
    ``class`` is the display name from ``class_names`` (folder name when unmapped) and ``label`` the
    position of the folder in sorted order. Unreadable files go to ``rejected`` with the reason.
    """
    root = Path(root)
    class_names = class_names or {}
    classes, candidates, rejected = list_image_folder(root, extensions)
    unknown = sorted(set(class_names) - set(classes))
    if unknown:
        raise DataError(
            f"dataset.class_names names folders that are not in '{root}': {unknown}; "
            f"the class folders are {classes}"
        )
    label_of = {folder: label for label, folder in enumerate(classes)}
    progress = Progress(len(candidates), f"scan {root}", unit="files", log=log)
    rows = []
    paths = [root / relative for relative, _ in candidates]
    for (relative, folder), result in zip(
        candidates, _imap(_inspect_file, paths, workers), strict=True
    ):
        progress.update()
        if not result["ok"]:
            rejected.append((relative, result["reason"]))
            continue
        rows.append(
            {
                "path": relative,
                "class": class_names.get(folder, folder),
                "folder": folder,
                "label": label_of[folder],
                "sha256": result["sha256"],
                "width": result["width"],
                "height": result["height"],
            }
        )
    images = pd.DataFrame(
        rows, columns=["path", "class", "folder", "label", "sha256", "width", "height"]
    )
    empty = sorted(set(classes) - set(images["folder"]))
    if empty:
        reasons = [f"{path}: {why}" for path, why in rejected if path.split("/")[0] in empty][:5]
        raise DataError(
            f"class folders without a single readable image: {empty} under '{root}'. Add images "
            f"or remove the folders. "
            + ("Rejected there: " + "; ".join(reasons) if reasons else "")
        )
    images = images.sort_values("path", kind="stable").reset_index(drop=True)
    images.insert(0, "idx", np.arange(len(images), dtype=np.int64))
    images = images.astype({"label": np.int64, "width": np.int64, "height": np.int64})
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values("path")
    return images, rejected_frame.reset_index(drop=True)


def find_duplicates(images: pd.DataFrame) -> pd.DataFrame:
    """Byte-identical files: one row per file that shares its sha256 with another, with the group's
    size and whether the copies carry different labels (a labelling error worth a look)."""
    counts = images.groupby("sha256")["idx"].transform("size")
    dups = images.loc[counts > 1, ["sha256", "idx", "path", "class"]].copy()
    dups["copies"] = counts[counts > 1].to_numpy()
    dups["conflicting_labels"] = dups.groupby("sha256")["class"].transform("nunique").gt(1)
    return dups.sort_values(["sha256", "idx"]).reset_index(drop=True)


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


class _CacheLoader:
    """Picklable per-file job for the pool: decode, check the file is unchanged, resize."""

    def __init__(self, root, size, resize):
        self.root, self.size, self.resize = Path(root), size, resize

    def __call__(self, item):
        relative, sha256 = item
        path = self.root / relative
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            raise DataError(
                f"'{path}' changed since the manifest was built; rebuild it with "
                f"`snakemake -R build_manifest`"
            )
        return load_for_cache(path, self.size, self.resize)


def build_cache(
    manifest: pd.DataFrame,
    root,
    split: str,
    size: int,
    out_path,
    resize: str = "squash",
    workers: int = 1,
    log=None,
) -> int:
    """Decode and resize one split into ``out_path`` (uint8, N x size x size x 3, .npy).

    Streams into a memory-mapped file, so memory is bounded by the pool's chunk, not the dataset,
    and renames it into place only when every row is written. Returns the number of rows.
    """
    rows = split_rows(manifest, split)
    progress = Progress(len(rows), f"cache {split}", unit="images", log=log)
    items = list(zip(rows["path"], rows["sha256"], strict=True))
    with io.atomic_path(out_path) as tmp:
        cache = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3)
        )
        for position, pixels in enumerate(_imap(_CacheLoader(root, size, resize), items, workers)):
            cache[position] = pixels
            progress.update()
        cache.flush()
        del cache
    return len(rows)


def load_cache(path, mmap: bool = True) -> np.ndarray:
    """The cached images of a split, memory-mapped by default."""
    return np.load(path, mmap_mode="r" if mmap else None)


class CacheRows:
    """Some rows of an image cache, indexed like an array (``rows[i]``, ``rows[a:b]``,
    ``rows[positions]``) without copying the memory-mapped file: a version that trains on part of the
    train split (cleaning dropped some images) reads only its rows, in the cache's order."""

    def __init__(self, images: np.ndarray, positions):
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (positions.size and np.any(np.diff(positions) <= 0)):
            raise ValueError("cache positions must be strictly increasing (the cache's row order)")
        if positions.size and (positions[0] < 0 or positions[-1] >= len(images)):
            raise ValueError(f"cache positions out of range for a cache of {len(images)} images")
        self.images, self.positions = images, positions
        self.shape = (len(positions), *images.shape[1:])
        self.ndim, self.dtype = images.ndim, images.dtype

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows):
        return self.images[self.positions[rows]]


def train_set_rows(train_set: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows a version trains on (not dropped), in train-cache order, with ``position`` (row of
    cache/train.npy), ``idx`` and ``label`` (the training label, noisy where noise was planted)."""
    used = train_set.loc[~train_set["dropped"].to_numpy(bool), ["idx", "label"]]
    cache_idx = pd.Index(split_rows(manifest, "train")["idx"].to_numpy(np.int64))
    positions = cache_idx.get_indexer(used["idx"].to_numpy(np.int64))
    if (positions < 0).any():
        missing = used["idx"].to_numpy()[positions < 0][:5].tolist()
        raise DataError(
            f"train_set.parquet lists images that are not in the manifest's train split, e.g. idx "
            f"{missing}: it was built from another manifest; rerun with -R build_train_set"
        )
    rows = used.assign(position=positions).sort_values("position", kind="stable")
    return rows[["position", "idx", "label"]].reset_index(drop=True)


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, with totals: what a person checks after a split."""
    table = pd.crosstab(manifest["class"], manifest["split"]).reindex(columns=SPLITS, fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["(all)"] = table.sum(axis=0)
    return table.reset_index().rename(columns={"index": "class"})
