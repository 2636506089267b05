"""Scan an ImageFolder root: every file decoded once, unreadable ones rejected with the reason."""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tracinflow._util.progress import Progress
from tracinflow.data import DataError
from tracinflow.data.images import MAX_PIXELS, decode_bytes, stable_reason
from tracinflow.data.listing import UNREADABLE, list_image_folder, source_record

MANIFEST_COLUMNS = ["idx", "path", "class", "label", "split", "sha256", "width", "height"]
REJECTED_COLUMNS = ["path", "reason"]


def ordered_map(function: Callable, items: Iterable, workers: int, chunksize: int = 16):
    """Ordered map over a process pool (inline for one worker, so tests and small runs stay simple)."""
    if workers <= 1:
        yield from map(function, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(function, items, chunksize=chunksize)


class _FileInspector:
    """Picklable per-file job for the pool: read and fully decode one file, giving its hash and
    size, or why it is not a usable image (a reason that is the same on every run)."""

    def __init__(self, max_pixels: int = MAX_PIXELS):
        self.max_pixels = max_pixels

    def __call__(self, path: Path) -> dict:
        try:
            data = path.read_bytes()
        except OSError as error:
            reason = f"cannot read file: {error.strerror or error}"
            return {"ok": False, "reason": reason, "sha256": UNREADABLE}
        sha256 = hashlib.sha256(data).hexdigest()
        if not data:
            return {"ok": False, "reason": "empty file (0 bytes)", "sha256": sha256}
        try:
            image = decode_bytes(data, self.max_pixels)
        except (
            Exception
        ) as error:  # PIL raises many types for corrupt data; all mean "not an image"
            reason = f"not a readable image: {stable_reason(error)}"
            return {"ok": False, "reason": reason, "sha256": sha256}
        width, height = image.size
        return {"ok": True, "sha256": sha256, "width": width, "height": height}


def _refuse_empty_classes(classes, images: pd.DataFrame, rejected, root) -> None:
    empty = sorted(set(classes) - set(images["folder"]))
    if empty:
        reasons = [f"{path}: {why}" for path, why in rejected if path.split("/")[0] in empty][:5]
        raise DataError(
            f"class folders without a single readable image: {empty} under '{root}'. Add images, "
            f"or leave the folders out with dataset.exclude_classes: {empty}. "
            + ("Rejected there: " + "; ".join(reasons) if reasons else "")
        )


def _refuse_unknown_names(class_names, classes, root) -> None:
    unknown = sorted(set(class_names) - set(classes))
    if unknown:
        raise DataError(
            f"dataset.class_names names folders that are not in '{root}': {unknown}; "
            f"the class folders are {classes}"
        )


def scan_image_folder(
    root,
    extensions: Iterable[str],
    class_names: dict | None = None,
    workers: int = 1,
    log=None,
    max_pixels: int = MAX_PIXELS,
    exclude: Iterable[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every file under ``root`` and return ``(images, rejected)``
    (:func:`scan_source` without the source record)."""
    images, rejected, _ = scan_source(
        root, extensions, class_names, workers, log, max_pixels, exclude
    )
    return images, rejected


def scan_source(
    root,
    extensions: Iterable[str],
    class_names: dict | None = None,
    workers: int = 1,
    log=None,
    max_pixels: int = MAX_PIXELS,
    exclude: Iterable[str] = (),
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Decode every file under ``root`` and return ``(images, rejected, source)``.

    ``images`` has the manifest columns except ``split`` (plus ``folder``, the class folder name);
    ``class`` is the display name from ``class_names`` (folder name when unmapped) and ``label`` the
    position of the folder in sorted order. Unreadable files, images of more than ``max_pixels``
    and symbolic links to files outside ``root`` go to ``rejected`` with the reason. The class
    folders named in ``exclude`` are not read. ``source`` is the
    :func:`~tracinflow.data.listing.source_record` of the files as read (what a later run
    compares the folder with).
    """
    root = Path(root)
    class_names = class_names or {}
    listing = list_image_folder(root, extensions, exclude)
    classes, candidates, rejected = listing.classes, listing.candidates, list(listing.rejected)
    _refuse_unknown_names(class_names, classes, root)
    label_of = {folder: label for label, folder in enumerate(classes)}
    # every file counts; those rejected without being read are done before decoding starts
    progress = Progress(len(candidates) + len(rejected), f"scan {root}", unit="files", log=log,
                        start=len(rejected))  # fmt: skip
    rows, sha256 = [], {}
    paths = [root / relative for relative, _ in candidates]
    for (relative, folder), result in zip(
        candidates, ordered_map(_FileInspector(max_pixels), paths, workers), strict=True
    ):
        progress.update()
        sha256[relative] = result["sha256"]
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
    _refuse_empty_classes(classes, images, rejected, root)
    images = images.sort_values("path", kind="stable").reset_index(drop=True)
    images.insert(0, "idx", np.arange(len(images), dtype=np.int64))
    images = images.astype({"label": np.int64, "width": np.int64, "height": np.int64})
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values("path")
    return images, rejected_frame.reset_index(drop=True), source_record(listing, sha256)


def find_duplicates(images: pd.DataFrame) -> pd.DataFrame:
    """Byte-identical files: one row per file that shares its sha256 with another, with the group's
    size and whether the copies carry different labels (a labelling error worth a look)."""
    counts = images.groupby("sha256")["idx"].transform("size")
    dups = images.loc[counts > 1, ["sha256", "idx", "path", "class"]].copy()
    dups["copies"] = counts[counts > 1].to_numpy()
    dups["conflicting_labels"] = dups.groupby("sha256")["class"].transform("nunique").gt(1)
    return dups.sort_values(["sha256", "idx"]).reset_index(drop=True)


#: what ``dataset.conflicting_duplicates`` may say about byte-identical copies in different classes
CONFLICT_POLICIES = ("exclude", "keep")
#: how the rejected.csv reason of an excluded conflicting copy begins
LABEL_CONFLICT = "label conflict:"


def _conflict_reason(others: pd.DataFrame, shown: int = 3) -> str:
    classes = ", ".join(sorted(set(others["class"].astype(str))))
    copies = [
        f"{path} ({name})" for path, name in zip(others["path"], others["class"], strict=True)
    ]
    more = f" and {len(copies) - shown} more" if len(copies) > shown else ""
    return (
        f"{LABEL_CONFLICT} the same bytes are also labelled {classes} "
        f"({', '.join(copies[:shown])}{more}); every copy is excluded from training "
        f"(dataset.conflicting_duplicates: keep trains on them)"
    )


def conflicting_copies(duplicates: pd.DataFrame) -> pd.DataFrame:
    """Every copy of a file whose byte-identical copies carry different classes, as rejected
    ``(path, reason)`` rows sorted by path; each reason names the other copies and their classes."""
    rows = []
    for _, group in duplicates[duplicates["conflicting_labels"]].groupby("sha256", sort=False):
        for path in group["path"]:
            rows.append((path, _conflict_reason(group[group["path"] != path])))
    frame = pd.DataFrame(rows, columns=REJECTED_COLUMNS).sort_values("path", kind="stable")
    return frame.reset_index(drop=True)


def _refuse_emptied_classes(images: pd.DataFrame, kept: pd.DataFrame) -> None:
    emptied = sorted(set(images["folder"]) - set(kept["folder"]))
    if emptied:
        raise DataError(
            f"every image of the class folders {emptied} is a byte-identical copy of a file in "
            f"another class (a label conflict, see duplicates.csv): fix the labels, or set "
            f"dataset.conflicting_duplicates: keep to train on the copies"
        )


def exclude_conflicting_duplicates(
    images: pd.DataFrame, policy: str = "exclude"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Apply ``dataset.conflicting_duplicates`` to a scan: ``(images, excluded, duplicates)``.

    With ``exclude``, every copy in a sha256 group whose copies carry different classes leaves
    ``images`` and is an ``excluded`` ``(path, reason)`` row; with ``keep``, none is. Same-class
    copies always stay. ``images`` is renumbered so ``idx`` stays 0..n-1 in path order, and
    ``duplicates`` (:func:`find_duplicates` of the whole scan) carries that ``idx``: empty (NA) for
    an excluded copy, which is in no manifest.
    """
    if policy not in CONFLICT_POLICIES:
        raise ValueError(
            f"conflicting_duplicates must be one of {CONFLICT_POLICIES}, got {policy!r}"
        )
    duplicates = find_duplicates(images)
    excluded = conflicting_copies(duplicates if policy == "exclude" else duplicates.iloc[0:0])
    kept = images[~images["path"].isin(excluded["path"])]
    _refuse_emptied_classes(images, kept)
    kept = kept.reset_index(drop=True).assign(idx=np.arange(len(kept), dtype=np.int64))
    duplicates["idx"] = duplicates["path"].map(kept.set_index("path")["idx"]).astype("Int64")
    return kept, excluded, duplicates
