"""The data rules: make_demo_dataset, build_manifest, split_dataset, cache_images, results_stamp.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them: a dict, or Snakemake's named lists), its ``threads`` and a ``log`` function;
it reads the inputs, calls the data package and writes the outputs atomically.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tracinflow._util.files import atomic_path, write_csv, write_json, write_parquet
from tracinflow._util.progress import Progress
from tracinflow.data.cache import decode_split
from tracinflow.data.demo import DemoImages, digits_demo, fashion_mnist_demo, parse_idx
from tracinflow.data.listing import NOT_WATCHED
from tracinflow.data.scan import exclude_conflicting_duplicates, scan_source
from tracinflow.data.split import split_images, split_rows, split_summary


def read_idx(path) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return parse_idx(handle.read(), str(path))


def write_image_folder(demo: DemoImages, out_root, log=None) -> int:
    """Write grayscale arrays as 3-channel PNGs into ``out_root/<folder>/<prefix>_<i>.png``.

    Written into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a partial dataset that looks complete.
    """
    out_root = Path(out_root)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", dir=out_root.parent))
    try:
        for folder in demo.folders:
            (tmp_root / folder).mkdir()
        progress = Progress(len(demo.images), f"write {out_root}", unit="images", log=log)
        for number, (pixels, label) in enumerate(zip(demo.images, demo.labels, strict=True)):
            rgb = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
            rgb.save(tmp_root / demo.folders[int(label)] / f"{demo.prefix}_{number:05d}.png")
            progress.update()
        if out_root.exists():
            shutil.rmtree(out_root)
        tmp_root.rename(out_root)
    finally:
        if tmp_root.exists():
            shutil.rmtree(tmp_root)
    return len(demo.images)


def make_demo_dataset(inputs, outputs, params, threads=1, log=print) -> int:
    """The embedded demo as PNG files: Fashion-MNIST from its IDX ``inputs`` (``images``,
    ``labels``), or scikit-learn's digits; ``params["demo"]`` is the config's dataset.demo."""
    demo = params["demo"]
    per_class, seed = demo.get("images_per_class"), demo.get("seed", 0)
    if demo["source"] == "fashion_mnist":
        images, labels = read_idx(inputs["images"]), read_idx(inputs["labels"])
        chosen = fashion_mnist_demo(images, labels, per_class, seed, str(inputs["images"]))
    elif demo["source"] == "digits":
        chosen = digits_demo(per_class, seed)
    else:
        raise ValueError(f"unknown demo source {demo['source']!r}")
    count = write_image_folder(chosen, outputs["root"], log=log)
    log(f"wrote {count} demo images to {outputs['root']}")
    return count


def _log_conflicts(duplicates: pd.DataFrame, excluded: pd.DataFrame, log) -> None:
    conflicting = duplicates[duplicates["conflicting_labels"]]
    if conflicting.empty:
        return
    groups = conflicting["sha256"].nunique()
    if len(excluded):
        log(
            f"excluded {len(excluded)} copies of {groups} files whose byte-identical copies carry "
            f"different classes (label conflicts; dataset.conflicting_duplicates: keep trains on them)"
        )
    else:
        log(
            f"kept {len(conflicting)} copies of {groups} files whose byte-identical copies carry "
            f"different classes (dataset.conflicting_duplicates: keep): each trains with its own label"
        )


def build_manifest(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Every file under the dataset root decoded once: the readable images, the rejected files
    with their reason, and byte-identical duplicates; copies in different classes are rejected
    unless ``params["conflicting_duplicates"]`` is ``keep``; the class folders of
    ``params["exclude_classes"]`` are not read. ``source.json`` records the files as read (their
    sha256 and fingerprint), which the next run compares the folder with."""
    images, rejected, source = scan_source(
        inputs["root"], params["extensions"], params["class_names"], workers=threads, log=log,
        max_pixels=int(params["max_pixels"]), exclude=params["exclude_classes"],
    )  # fmt: skip
    if source["excluded"]:
        log(f"left out by dataset.exclude_classes: {', '.join(source['excluded'])}")
    if params["source"] not in (source["digest"], NOT_WATCHED):
        # the folder changed between planning and reading: this manifest is what was read, and
        # the next run, seeing another fingerprint than the one recorded, builds it again
        log("the dataset's files changed while they were read; the next run scans them again")
    images, excluded, duplicates = exclude_conflicting_duplicates(
        images, params["conflicting_duplicates"]
    )
    rejected = pd.concat([rejected, excluded], ignore_index=True).sort_values("path", kind="stable")
    rejected = rejected.reset_index(drop=True)
    log(
        f"{len(images)} images in {images['class'].nunique()} classes, {len(rejected)} rejected, "
        f"{len(duplicates)} files in byte-identical duplicate groups"
    )
    _log_conflicts(duplicates, excluded, log)
    for path, reason in rejected.itertuples(index=False):
        log(f"rejected {path}: {reason}")
    write_csv(outputs["rejected"], rejected)
    write_csv(outputs["duplicates"], duplicates)
    write_json(outputs["source"], source)
    write_parquet(outputs["images"], images)
    return images


def split_dataset(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """The manifest: the scanned images with their stratified split, and a count per class."""
    settings = params["split"]
    manifest = split_images(pd.read_parquet(inputs["images"]), settings, settings["seed"])
    summary = split_summary(manifest)
    log("images per class and split:\n" + summary.to_string(index=False))
    write_csv(outputs["summary"], summary)
    write_parquet(outputs["manifest"], manifest)
    return manifest


def write_cache(
    manifest: pd.DataFrame,
    root,
    split: str,
    size: int,
    out_path,
    resize="squash",
    workers=1,
    log=print,
) -> int:
    """Decode and resize one split into ``out_path`` (uint8, N x size x size x 3, .npy).

    Streams into a memory-mapped file, so memory is bounded by the pool's chunk, not the dataset,
    and renames it into place only when every row is written. Returns the number of rows.
    """
    n = len(split_rows(manifest, split))
    progress = Progress(n, f"cache {split}", unit="images", log=log)
    pixels = decode_split(manifest, root, split, size, resize, workers)
    with atomic_path(out_path) as tmp:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        for position, image in enumerate(pixels):
            cache[position] = image
            progress.update()
        cache.flush()
        del cache
    return n


def cache_images(inputs, outputs, params, threads=1, log=print) -> int:
    """One split of the dataset decoded into its cache (:func:`write_cache`)."""
    split = params["split"]
    n = write_cache(
        pd.read_parquet(inputs["manifest"]), inputs["root"], split, int(params["image_size"]),
        outputs["cache"], params["resize"], threads, log,
    )  # fmt: skip
    log(f"cached {n} {split} images")
    return n


def results_stamp(inputs, outputs, params, threads, log) -> None:
    """Record which dataset each folder of the results tree was made from (``params.folders``:
    folder -> the dataset's name and root as configured, to which it adds the absolute folder the
    root names from the working directory), so that a config of another dataset is refused at
    parse time (``tracinflow.config.claim_results``) instead of replacing them."""
    folders = {
        folder: {**made, "resolved_root": str(Path(made["root"]).resolve())}
        for folder, made in dict(params["folders"]).items()
    }
    write_json(outputs["stamp"], {"folders": folders})
    for folder, made in folders.items():
        log(f"{folder}: dataset {made['name']} ({made['resolved_root']})")
