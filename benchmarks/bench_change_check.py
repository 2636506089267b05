"""What noticing an edited image folder costs a run, at Animals-10 scale.

    .venv/bin/python benchmarks/bench_change_check.py            # 26,000 files, about a minute
    .venv/bin/python benchmarks/bench_change_check.py --quick    # 2,600 files

Writes 26,000 files in 10 class folders (Animals-10 has 26,179 images of about 22 KB: the sizes
are drawn around that; the bytes are random, since the check hashes files and never decodes
them), then times what the workflow does on every run: the parse-time check of the class folders
(``config.folders_without_images``), and the fingerprint of the folder
(``data.listing.read_source``, the ``source`` param of build_manifest, and its comparison with
``source.json``, what the manifest was built from) with no stat cache (the first run, or a copied
folder: every file is read and hashed), with the stat cache and nothing changed (every later run:
a listing and one stat per file), and after 100 files were touched and 10 replaced (the changes
named). Each time is the median of 5 runs (the spread in brackets); the files are in the page
cache (a cold cache adds the disk's or the network filesystem's read time to the first run
only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tracinflow.config import folders_without_images
from tracinflow.data.listing import RACY_SECONDS, read_source

CLASSES = ["cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora",
           "ragno", "scoiattolo"]  # fmt: skip
EXTENSIONS = [".jpg", ".jpeg", ".png"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_folder(root: Path, n: int, seed: int = 0) -> int:
    """``n`` files of random bytes under ``root/<class>/``, sizes log-normal around 22 KB."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(np.log(20_000), 0.5, n), 2_000, 400_000).astype(int)
    for i, size in enumerate(sizes):
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:06d}.jpeg").write_bytes(rng.bytes(int(size)))
    return int(sizes.sum())


def timed(function, repeats: int = 5) -> tuple[float, float, float]:
    """The median, lowest and highest wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def cell(stats) -> str:
    median, low, high = stats
    return f"{median * 1000:,.0f} ms ({low * 1000:,.0f}-{high * 1000:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,600 files instead of 26,000")
    args = parser.parse_args()
    n = 2_600 if args.quick else 26_000
    with tempfile.TemporaryDirectory(prefix="bench-change-check-") as tmp:
        root, cache = Path(tmp) / "raw-img", Path(tmp) / "stat-cache.json"
        total = write_folder(root, n)
        time.sleep(RACY_SECONDS + 1)  # files written just now are not cached (racily clean)
        rows = []
        rows.append(("class folders checked while parsing (each needs one image file)",
                     cell(timed(lambda: folders_without_images(root, CLASSES, EXTENSIONS)))))  # fmt: skip

        recorded = Path(tmp) / "source.json"
        recorded.write_text(json.dumps(read_source(root, EXTENSIONS).record(), indent=2))

        def check():
            """What a run does: the fingerprint, compared with source.json."""
            source = read_source(root, EXTENSIONS, cache=cache)
            changes = source.changes_since(recorded)
            return source, changes.describe() if changes else None

        def cold():
            cache.unlink(missing_ok=True)
            return check()

        rows.append(
            ("fingerprint, no stat cache (first run: every file hashed)", cell(timed(cold)))
        )
        cold()
        warm, named = check()
        assert warm.hashed == 0 and named is None, (warm.hashed, named)
        rows.append(("fingerprint, stat cache, nothing changed (every later run)",
                     cell(timed(check))))  # fmt: skip
        files = sorted(root.rglob("*.jpeg"))
        for path in files[:100]:
            os.utime(path, (1e9, 1e9))
        rng = np.random.default_rng(1)
        for path in files[200:210]:
            path.write_bytes(rng.bytes(path.stat().st_size))
        saved = cache.read_text()

        def edited():
            cache.write_text(saved)  # the cache as it was before the edit, every time
            return check()

        after, named = edited()
        assert named.startswith("10 files with other bytes"), named
        rows.append((f"fingerprint after 100 files touched and 10 replaced ({after.hashed} "
                     f"hashed, the 10 named)", cell(timed(edited))))  # fmt: skip
    print(f"{n:,} files, {total / 1e6:,.0f} MB, in {len(CLASSES)} class folders; {cpu_model()}, "
          f"{os.cpu_count()} cores; median of 5 (lowest-highest)\n")  # fmt: skip
    print("| step | time |")
    print("| --- | ---: |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
