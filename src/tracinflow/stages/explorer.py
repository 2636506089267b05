"""The explorer rule: one version's influence explorer, a static page folder.

Takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the rule gives
them), its ``threads`` and a ``log`` function; reads the version's tables, asks the explorer
package for the page's data and thumbnails, and writes the folder atomically.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from tracinflow._util.files import atomic_folder
from tracinflow._util.progress import Progress
from tracinflow.data import DataError
from tracinflow.data.images import ImageChanged, changed_images_message
from tracinflow.explorer.page import ASSET_FILES, DATA_FILE, data_script
from tracinflow.explorer.payload import explorer_payload
from tracinflow.explorer.thumbnails import thumbnail_name, webp_thumbnail

THUMBS = "thumbs"


def _write_thumbnail(source: Path, target: Path, longest: int, sha256: str | None) -> str | None:
    """Write one thumbnail; the reason when the file cannot be decoded (the page then shows a
    placeholder: one unreadable file must not stop the page). A file whose bytes are not the
    manifest's raises :class:`ImageChanged`: the page never shows pixels the model did not see."""
    try:
        target.write_bytes(webp_thumbnail(source, longest, sha256))
    except ImageChanged:
        raise
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def write_thumbnails(root, paths: Mapping[int, str], folder, longest: int, *,
                     sha256: Mapping[int, str] | None = None, threads: int = 1,
                     log: Callable[[str], None] = print) -> dict[int, str]:  # fmt: skip
    """A thumbnail of each ``{idx: path under root}`` in ``folder``, logging progress. Returns
    ``{idx: reason}`` of the images that could not be read. With the manifest's ``{idx:
    sha256}``, files whose bytes differ from it stop it with a :class:`DataError` naming them
    all, after the others are done."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths), "thumbnails", "images", log=log)
    failed, changed = {}, []
    sha256 = sha256 or {}
    # PIL decodes and encodes without holding the GIL, so threads share the work
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        jobs = {
            idx: pool.submit(
                _write_thumbnail,
                Path(root) / path,
                folder / thumbnail_name(idx),
                longest,
                sha256.get(idx),
            )
            for idx, path in paths.items()
        }
        for idx, job in jobs.items():
            try:
                reason = job.result()
            except ImageChanged as error:
                changed.append(error.path)
                reason = None
            if reason:
                failed[int(idx)] = reason
                log(f"no thumbnail for image {idx} ({paths[idx]}): {reason}")
            progress.update()
    if changed:
        raise DataError(changed_images_message(changed))
    return failed


def _tables(inputs) -> dict[str, pd.DataFrame]:
    names = {"manifest": "manifest", "train_set": "train_set", "train_pred": "train",
             "test_pred": "test", "topk": "topk", "suspicion": "suspicion"}  # fmt: skip
    return {table: pd.read_parquet(inputs[name]) for table, name in names.items()}


def _compared(inputs, names: list[str]) -> dict[str, dict]:
    """The across-versions view's files (``compare_test``, ``compare_topk``: lists in the order of
    ``names``)."""
    tests, topks = list(inputs.get("compare_test", [])), list(inputs.get("compare_topk", []))
    if not len(tests) == len(topks) == len(names):
        raise ValueError(f"{len(tests)} test and {len(topks)} top-k files for versions {names}")
    columns = ["test_idx", "kind", "train_idx", "influence"]
    return {
        name: {"test_pred": pd.read_parquet(test), "topk": pd.read_parquet(topk, columns=columns)}
        for name, test, topk in zip(names, tests, topks, strict=True)
    }


def _folder_size(folder: Path) -> tuple[int, int]:
    sizes = [entry.stat().st_size for entry in os.scandir(folder / THUMBS)]
    sizes += [(folder / name).stat().st_size for name in (*ASSET_FILES, DATA_FILE)]
    return len(sizes), sum(sizes)


def explorer(inputs, outputs, params, threads=1, log=print) -> dict:
    """``<explorer>/index.html`` of one version, its script, style and data, and ``thumbs/``: a
    thumbnail of every train and test image of the manifest, made from the original files under
    ``inputs["root"]``, each checked against the manifest's sha256. ``params``: ``version``, ``ranking`` (the suspects' default), ``top``
    (proponents and opponents per test image), ``thumbnail_px``, ``planted``, ``compare``
    (the versions of the across-versions view), ``method`` and ``ensemble`` (the attribution
    method and the other versions whose models it averages). Returns the payload."""
    tables = _tables(inputs)
    payload = explorer_payload(
        tables,
        version=params["version"],
        default_ranking=params["ranking"],
        top=params["top"],
        planted=params["planted"],
        compared=_compared(inputs, list(params["compare"])),
        method=params.get("method", "tracin_final"),
        ensemble=params.get("ensemble") or (),
    )
    images = payload["images"]
    paths = dict(zip(images["idx"], images["path"], strict=True))
    manifest = tables["manifest"]
    sha256 = dict(zip(manifest["idx"], manifest["sha256"], strict=True))
    assets = importlib.resources.files("tracinflow.explorer") / "assets"
    with atomic_folder(outputs["explorer"]) as folder:
        failed = write_thumbnails(
            inputs["root"], paths, folder / THUMBS, params["thumbnail_px"], sha256=sha256,
            threads=threads, log=log,
        )  # fmt: skip
        payload["missing_thumbnails"] = sorted(failed)
        for name in ASSET_FILES:
            (folder / name).write_text(assets.joinpath(name).read_text())
        (folder / DATA_FILE).write_text(data_script(payload))
        files, size = _folder_size(folder)
    log(
        f"explorer of {params['version']}: {len(payload['test']['idx']):,} test and "
        f"{len(payload['train']['idx']):,} training images, {files:,} files, {size / 1e6:.1f} MB"
        + (f"; {len(failed)} images without a thumbnail" if failed else "")
    )
    return payload
