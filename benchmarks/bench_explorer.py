"""The explorer page at Animals-10 scale: its folder's size and how long until it is usable.

    .venv/bin/python benchmarks/bench_explorer.py            # 26,000 train + 6,000 test images
    .venv/bin/python benchmarks/bench_explorer.py --quick    # 2,000 + 500, a minute

Generates an image folder of the size of Animals-10 (JPEG files of 300 x 225 pixels, about 20 KB
each, whose content compresses like a photo's), tables of that size (three versions
compared, top-100 proponents and opponents per test image, every TracIn ranking), builds the
explorer with the workflow's own stage function, and opens the page in headless Chromium (Debian's
`chromium`, driven by Playwright): the time until the grid of test images is on screen with its
thumbnails, until one test image shows its proponents and opponents, and until the suspects
re-sort under another ranking. Each page time is the median of 3 fresh browser pages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tracinflow.analysis.rankings import RANKINGS
from tracinflow.stages.explorer import explorer

CLASSES = ["butterfly", "cat", "chicken", "cow", "dog", "elephant", "horse", "sheep", "spider",
           "squirrel"]  # fmt: skip
VERSIONS = ["baseline", "noisy", "cleaned"]


#: the octaves of a generated photo: (height, width) of a random field, its amplitude
OCTAVES = [((6, 8), 60), ((12, 16), 36), ((24, 32), 24), ((48, 64), 15), ((96, 128), 9)]


def photo(seed: int, size=(300, 225)) -> Image.Image:
    """Random fields of five scales, coarse ones strongest, and grain: a photo's falling spectrum,
    so it compresses like one (a 96-pixel WebP thumbnail of 2.6 KB; of matplotlib's photo of
    Grace Hopper, 2.3 KB), unlike plain noise (far larger) or flat colour (far smaller)."""
    rng = np.random.default_rng(seed)
    total = np.full((size[1], size[0], 3), 128.0, dtype=np.float32)
    for shape, amplitude in OCTAVES:
        field = rng.normal(0, 1, (*shape, 3)).astype(np.float32)
        as_image = Image.fromarray(np.clip((field + 4) * 32, 0, 255).astype(np.uint8))
        smooth = np.asarray(as_image.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        total += (smooth / 32 - 4) * amplitude
    total += rng.normal(0, 6, total.shape).astype(np.float32)
    return Image.fromarray(np.clip(total, 0, 255).astype(np.uint8))


def image_folder(root: Path, n: int, threads: int) -> pd.DataFrame:
    """``n`` JPEG files under ``root/<class>/``; the manifest's idx, path, class and label."""
    labels = np.arange(n) % len(CLASSES)
    paths = [f"{CLASSES[c]}/img_{i:05d}.jpg" for i, c in enumerate(labels)]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)

    def write(i):
        photo(i).save(root / paths[i], "JPEG", quality=85)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, range(n)))
    return pd.DataFrame({"idx": np.arange(n), "path": paths,
                         "class": [CLASSES[c] for c in labels], "label": labels})  # fmt: skip


def predictions(idx, labels, rng) -> pd.DataFrame:
    wrong = rng.random(len(idx)) < 0.12
    pred = np.where(
        wrong, (labels + rng.integers(1, len(CLASSES), len(idx))) % len(CLASSES), labels
    )
    return pd.DataFrame({"idx": idx, "label": labels, "pred": pred,
                         "confidence": rng.uniform(0.3, 1.0, len(idx))})  # fmt: skip


def top_k(test_idx, train_idx, k: int, rng) -> pd.DataFrame:
    """k proponents (positive, falling) and k opponents (negative, rising) per test image."""
    n = len(test_idx)
    parts = []
    for kind, sign in (("proponent", 1.0), ("opponent", -1.0)):
        values = -np.sort(-rng.exponential(1e-3, (n, k)), axis=1) * sign
        parts.append(pd.DataFrame({
            "test_idx": np.repeat(test_idx, k), "kind": kind, "rank": np.tile(np.arange(1, k + 1), n),
            "train_idx": rng.choice(train_idx, n * k), "influence": values.ravel(),
        }))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def tables(folder: Path, n_train: int, n_test: int, k: int, threads: int) -> dict:
    rng = np.random.default_rng(0)
    manifest = image_folder(folder / "images", n_train + n_test, threads)
    manifest["split"] = np.where(manifest["idx"] < n_train, "train", "test")
    train, test = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "test"]
    files = {"manifest": manifest}
    noisy = rng.random(len(train)) < 0.1
    files["train_set"] = pd.DataFrame({
        "idx": train["idx"], "label": np.where(noisy, (train["label"] + 1) % 10, train["label"]),
        "original_label": train["label"], "noisy": noisy, "dropped": False,
    })  # fmt: skip
    files["train"] = predictions(train["idx"].to_numpy(), train["label"].to_numpy(), rng)
    rankings = [r for r in RANKINGS if r != "cleanlab_kfold"]
    files["suspicion"] = pd.DataFrame(
        {"train_idx": train["idx"]} | {r: rng.normal(size=len(train)) for r in rankings}
    )
    for version in VERSIONS:
        files[f"test_{version}"] = predictions(
            test["idx"].to_numpy(), test["label"].to_numpy(), rng
        )
        files[f"topk_{version}"] = top_k(test["idx"].to_numpy(), train["idx"].to_numpy(), k, rng)
    paths = {}
    for name, frame in files.items():
        paths[name] = folder / f"{name}.parquet"
        frame.to_parquet(paths[name], index=False)
    return paths


def folder_size(folder: Path) -> tuple[int, int, int]:
    """Files, bytes, and bytes on disk (whole blocks) of a folder."""
    files = apparent = disk = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            stat = os.stat(os.path.join(dirpath, name))
            files, apparent, disk = files + 1, apparent + stat.st_size, disk + stat.st_blocks * 512
    return files, apparent, disk


PAGE_READY = """() => document.body.dataset.ready === '1' &&
  [...document.querySelectorAll('#main img')].filter(i => i.getBoundingClientRect().top < innerHeight)
  .every(i => i.complete && i.naturalWidth > 0)"""


def page_times(index: Path, chromium: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds until usable: the grid on screen with its thumbnails; one test image's
    proponents and opponents; the suspects under another ranking."""
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"grid": [], "test image": [], "suspects re-sorted": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            start = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_function(PAGE_READY, polling=20)
            times["grid"].append(time.perf_counter() - start)
            start = time.perf_counter()
            page.locator("#test-grid a.card").first.click()
            page.wait_for_selector("#proponents a.influencer")
            page.wait_for_function(PAGE_READY, polling=20)
            times["test image"].append(time.perf_counter() - start)
            page.goto(index.as_uri() + "#suspects")
            page.wait_for_selector("#suspect-grid")
            start = time.perf_counter()
            page.select_option("#ranking", "self_influence")
            page.wait_for_function("location.hash.includes('self_influence')", polling=20)
            page.wait_for_function(PAGE_READY, polling=20)
            times["suspects re-sorted"].append(time.perf_counter() - start)
            page.close()
        browser.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=26_000)
    parser.add_argument("--test", type=int, default=6_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2,000 + 500 images")
    args = parser.parse_args()
    if args.quick:
        args.train, args.test = 2_000, 500
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory(prefix="bench-explorer-") as scratch:
        folder = Path(scratch)
        start = time.perf_counter()
        paths = tables(folder, args.train, args.test, args.k, args.threads)
        generated = time.perf_counter() - start
        inputs = {"manifest": paths["manifest"], "train_set": paths["train_set"],
                  "train": paths["train"], "test": paths["test_noisy"], "topk": paths["topk_noisy"],
                  "suspicion": paths["suspicion"], "root": folder / "images",
                  "compare_test": [paths[f"test_{v}"] for v in VERSIONS],
                  "compare_topk": [paths[f"topk_{v}"] for v in VERSIONS]}  # fmt: skip
        params = {"version": "noisy", "ranking": "loss", "top": 10, "thumbnail_px": 96,
                  "planted": True, "compare": VERSIONS}  # fmt: skip
        start = time.perf_counter()
        explorer(inputs, {"explorer": folder / "explorer"}, params, threads=args.threads,
                 log=lambda line: print(line, file=sys.stderr))  # fmt: skip
        built = time.perf_counter() - start
        files, apparent, disk = folder_size(folder / "explorer")
        data = (folder / "explorer/data.js").stat().st_size
        times = page_times(folder / "explorer/index.html", chromium) if chromium else {}
    print(f"Explorer of {args.train:,} training and {args.test:,} test images (300 x 225 JPEG), "
          f"3 versions compared, top-{args.k} tables, {args.threads} threads\n")  # fmt: skip
    print("| measure | value |\n|---|---|")
    print(f"| images generated (not part of the page) | {generated:.0f} s |")
    print(f"| explorer rule's work (thumbnails + data) | {built:.0f} s |")
    print(f"| folder | {files:,} files, {apparent / 1e6:.0f} MB ({disk / 1e6:.0f} MB on disk) |")
    print(f"| data.js | {data / 1e6:.1f} MB |")
    for name, seconds in times.items():
        print(f"| until usable: {name} (median of 3) | {seconds:.2f} s |")
    if not chromium:
        print("| page times | not measured: no chromium (apt-get install chromium) |")


if __name__ == "__main__":
    main()
