"""Shared fixtures: image folders built by the tests themselves, with every kind of bad file."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: pytest-xdist's worker count (`make test` runs one worker per core); 1 without xdist
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    # Each worker gets its share of the cores: torch in a worker would otherwise run a thread per
    # core as the other worker does, and oversubscribed OpenMP threads that spin while they wait
    # run many times slower. Set before anything imports torch; the workflow's jobs still set
    # their rule's threads themselves.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The property tests draw the same examples on every run and machine (a rare case found once is
# found every time, not by chance in CI); HYPOTHESIS_PROFILE=explore draws new ones while developing.
settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
#: Debian's chromium, which the explorer page's tests drive through Playwright (None: not here)
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """The system's Chromium: nothing downloads a browser."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


def pattern_image(seed: int, size=(24, 20), mode="RGB") -> Image.Image:
    """A deterministic, non-trivial picture (gradient plus noise) so resizing has work to do."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def make_plain_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/img_<i>.png`` with distinct RGB images of varying sizes."""
    for c, (name, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            size = (20 + (i % 5) * 3, 16 + (i % 3) * 4)
            save(
                pattern_image(seed * 100000 + c * 1000 + i, size), root / name / f"img_{i:03d}.png"
            )
    return root


BAD_FILES = {
    # relative path -> expected words in the rejection reason
    "cat/corrupt.jpg": "not a readable image",
    "cat/truncated.jpg": "not a readable image",
    "cat/empty.jpg": "empty file",
    "dog/text_renamed.jpg": "not a readable image",
    "dog/notes.txt": "not an image extension",
    "readme.txt": "not inside a class folder",
}

CONVERTED_FILES = [
    "cat/gray.png",
    "cat/rgba.png",
    "cat/cmyk.jpg",
    "cat/sixteen_bit.png",
    "cat/palette.png",
    "cat/sub/deeper/nested.PNG",
    "dog/upper.JPG",
    "dog/palette_transparent.png",
]


def make_messy_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of good images plus every kind of file the scan must reject or convert."""
    make_plain_folder(root, {"cat": per_class, "dog": per_class})
    good_jpeg = io.BytesIO()
    pattern_image(7, (64, 48)).save(good_jpeg, format="JPEG", quality=90)
    jpeg = good_jpeg.getvalue()
    (root / "cat/corrupt.jpg").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 500)))
    (root / "cat/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "cat/empty.jpg").write_bytes(b"")
    (root / "dog/text_renamed.jpg").write_text("this is not a picture\n")
    (root / "dog/notes.txt").write_text("notes\n")
    (root / "readme.txt").write_text("dataset readme\n")

    save(pattern_image(11, mode="L"), root / "cat/gray.png")
    save(pattern_image(12, mode="RGBA"), root / "cat/rgba.png")
    save(pattern_image(13, mode="CMYK"), root / "cat/cmyk.jpg", format="JPEG")
    sixteen = (np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 130).astype(np.uint16)
    save(Image.fromarray(sixteen), root / "cat/sixteen_bit.png")
    save(pattern_image(14).convert("P", palette=Image.Palette.ADAPTIVE), root / "cat/palette.png")
    save(pattern_image(15), root / "cat/sub/deeper/nested.PNG")
    save(pattern_image(16), root / "dog/upper.JPG", format="JPEG")
    transparent = pattern_image(17).convert("P", palette=Image.Palette.ADAPTIVE)
    save(transparent, root / "dog/palette_transparent.png", transparency=0)
    # A byte-identical copy across classes: the scan reports it and the split keeps copies together.
    shutil.copyfile(root / "cat/img_000.png", root / "dog/copy_of_cat.png")
    return root


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the gzipped IDX format of (Fashion-)MNIST."""
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


def make_fake_fashion_mnist(raw_dir: Path, per_class: int = 6, seed: int = 0) -> Path:
    """Real IDX files in Fashion-MNIST's layout with synthetic 28x28 pictures (tests must not need
    the Debian package)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    write_idx(raw_dir / "train-images-idx3-ubyte.gz", images)
    write_idx(raw_dir / "train-labels-idx1-ubyte.gz", labels)
    return raw_dir


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    return make_messy_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The tiny two-version config run for real, once per test session: first a targeted build of
    v1's report on the fresh tree (its output kept for the tests), then everything."""
    from types import SimpleNamespace

    from snakemake_runs import run_snakemake, tiny_config, write_config

    workdir = tmp_path_factory.mktemp("tiny-workflow")
    write_config(workdir, tiny_config())
    targeted = run_snakemake(workdir, "--cores", "2", "results/v1/reports/influence_report.txt")
    after_targeted = sorted(path.name for path in (workdir / "results").iterdir())
    run_snakemake(workdir, "--cores", "2")
    return SimpleNamespace(
        workdir=workdir,
        config=tiny_config(),
        targeted_output=targeted.stdout + targeted.stderr,
        results_after_targeted=after_targeted,
    )


#: the test files that take longest (minutes each, CI's --durations), started first: `make test`'s
#: workers take files in collection order, and a long file started last keeps one worker busy
#: while the other idles
LONGEST_FILES = (
    "test_workflow_evaluation.py",
    "test_workflow_slurm.py",
    "reliability/test_workflow_faults.py",
    "test_study.py",
    "test_explorer_page.py",
    "test_workflow_curvature.py",
)


def pytest_collection_modifyitems(config, items):
    """The longest files first, every other test in its collected order (the sort is stable)."""
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    tests = Path(__file__).parent

    def rank(item) -> int:
        try:
            name = Path(item.path).relative_to(tests).as_posix()
        except ValueError:
            return len(first)
        return first.get(name, len(first))

    items.sort(key=rank)
