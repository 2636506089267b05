"""An image folder edited after a run, in real snakemake runs on a finished tree of a folder of
one's own (three classes, one image two folders deep): every kind of edit, at the first level of a
class folder and deeper, is noticed by the next dry run, which names the files and plans the
manifest and everything after it; an edit that leaves the bytes as they were plans nothing; the
rerun ends with the new pixels in the cache and the explorer, and up to date. A stage made to open
a changed file anyway stops, naming it, and leaves no page or gallery. A class folder with no
image is refused by the dry run or left out by ``dataset.exclude_classes``; one whose files all
fail to decode stops build_manifest with the message alone, no traceback.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_plain_folder, pattern_image, save
from snakemake_runs import planned_jobs, run_snakemake, write_config
from walkthrough import CI_SIZE

from tracinflow.config import deep_merge
from tracinflow.data.images import load_for_cache
from tracinflow.explorer.thumbnails import webp_thumbnail

pytestmark = pytest.mark.workflow

DEEP = "Coat/batch 1/deep dir/deep.png"
CONFIG = deep_merge(
    {
        "dataset": {"name": "mine", "root": "images", "demo": None},
        "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "versions": {"v1": {}},
    },
    CI_SIZE,
)
NOTHING = "Nothing to be done"


def make_images(root: Path) -> Path:
    make_plain_folder(root, {"Bag": 14, "Coat": 14, "Shirt": 14})
    save(pattern_image(777), root / DEEP)
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of CONFIG, and the jobs it ran."""
    workdir = tmp_path_factory.mktemp("edited-images")
    make_images(workdir / "images")
    write_config(workdir, CONFIG)
    run = run_snakemake(workdir, "--cores", "2")
    return workdir, planned_jobs(run.stdout + run.stderr)


def copy_of(finished, tmp_path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(finished[0], tree, symlinks=True)
    return tree


def dry_run(tree: Path) -> str:
    run = run_snakemake(tree, "-n", "--cores", "2")
    return run.stdout + run.stderr


def other_pixels(path: Path, seed: int = 4242) -> None:
    save(pattern_image(seed, (22, 18)), path)


EDITS = {
    # edit: (what it does to the images folder, how the dry run names it)
    "added at depth 1": (
        lambda root: shutil.copyfile(root / "Bag/img_000.png", root / "Coat/added directly.png"),
        '1 file added ("Coat/added directly.png")',
    ),
    "added deeper": (
        lambda root: other_pixels(root / "Coat/batch 1/deep dir/added later.png"),
        '1 file added ("Coat/batch 1/deep dir/added later.png")',
    ),
    "removed at depth 1": (
        lambda root: (root / "Bag/img_003.png").unlink(),
        '1 file removed ("Bag/img_003.png")',
    ),
    "removed deeper": (lambda root: (root / DEEP).unlink(), f'1 file removed ("{DEEP}")'),
    "renamed at depth 1": (
        lambda root: (root / "Shirt/img_002.png").rename(root / "Shirt/renamed.png"),
        '1 file added ("Shirt/renamed.png"), 1 file removed ("Shirt/img_002.png")',
    ),
    "renamed deeper": (
        lambda root: (root / DEEP).rename(root / "Coat/batch 1/renamed.png"),
        f'1 file added ("Coat/batch 1/renamed.png"), 1 file removed ("{DEEP}")',
    ),
    "replaced at depth 1": (
        lambda root: other_pixels(root / "Coat/img_001.png"),
        '1 file with other bytes ("Coat/img_001.png")',
    ),
    "replaced deeper": (
        lambda root: other_pixels(root / DEEP),
        f'1 file with other bytes ("{DEEP}")',
    ),
    "replaced by an older file moved over it": (
        lambda root: os.replace(root / "Bag/img_005.png", root / "Bag/img_004.png"),
        '1 file removed ("Bag/img_005.png"), 1 file with other bytes ("Bag/img_004.png")',
    ),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_image_reruns_the_manifest_and_everything_after_it_naming_the_file(
    finished, tmp_path, edit
):
    tree = copy_of(finished, tmp_path)
    change, named = EDITS[edit]
    change(tree / "images")
    output = dry_run(tree)
    assert f"changed since the manifest was built (results/data/mine/source.json): {named}." in (
        output
    ), output[-3000:]
    # everything after the manifest: every job of the finished run but the results stamp
    ran = {rule: count for rule, count in finished[1].items() if rule != "results_stamp"}
    assert planned_jobs(output) == ran


def test_an_edit_that_leaves_the_bytes_as_they_were_reruns_nothing(finished, tmp_path):
    tree = copy_of(finished, tmp_path)
    root = tree / "images"
    for path in root.rglob("*.png"):  # touched: a new mtime, the same bytes
        os.utime(path, (1e9, 1e9 + 1))
    shutil.copy2(root / "Shirt/img_000.png", tmp_path / "kept.png")
    other_pixels(root / "Shirt/img_000.png")  # edited, then put back (another inode, a new ctime)
    os.replace(tmp_path / "kept.png", root / "Shirt/img_000.png")
    (root / "Bag/.DS_Store").write_bytes(b"")  # a hidden file: rejected, listed, but no image
    output = dry_run(tree)
    assert "1 file added" in output and NOTHING not in output  # rejected.csv will list it
    (root / "Bag/.DS_Store").unlink()
    output = dry_run(tree)
    assert NOTHING in output and "changed since" not in output, output[-3000:]


def test_the_rerun_after_an_edit_trains_on_the_new_pixels_and_ends_up_to_date(finished, tmp_path):
    tree = copy_of(finished, tmp_path)
    root = tree / "images"
    for path in (root / DEEP, root / "Coat/img_001.png"):
        other_pixels(path, seed=len(str(path)))
    run_snakemake(tree, "--cores", "2")
    manifest = pd.read_parquet(tree / "results/data/mine/manifest.parquet")
    size = CONFIG["dataset"]["image_size"]
    for relative in (DEEP, "Coat/img_001.png"):
        row = manifest.set_index("path").loc[relative]
        split_rows = manifest[manifest["split"] == row["split"]].sort_values("idx")
        cache = np.load(tree / f"results/data/mine/cache/{row['split']}.npy")
        position = split_rows["idx"].tolist().index(row["idx"])
        assert np.array_equal(cache[position], load_for_cache(root / relative, size))
        if row["split"] in ("train", "test"):
            thumb = tree / f"results/v1/explorer/thumbs/{row['idx']}.webp"
            px = CONFIG.get("reports", {}).get("explorer", {}).get("thumbnail_px", 128)
            assert thumb.read_bytes() == webp_thumbnail(root / relative, px)
    assert NOTHING in dry_run(tree)


@pytest.mark.parametrize("rule, output", [("explorer", "results/v1/explorer"),
                                          ("report_galleries", "results/v1/reports/galleries")])  # fmt: skip
def test_a_stage_made_to_open_a_changed_image_stops_naming_it_and_draws_nothing(
    finished, tmp_path, rule, output
):
    """The DAG is told to ignore the fingerprint (--rerun-triggers without params) and to rerun
    one drawing stage: the stage checks every file it opens against the manifest."""
    tree = copy_of(finished, tmp_path)
    changed = tree / "images/Coat/img_001.png"
    other_pixels(changed)
    run = run_snakemake(tree, "--cores", "2", "--rerun-triggers", "mtime", "-R", rule, check=False)
    console = run.stdout + run.stderr
    assert run.returncode != 0
    assert "tracinflow error: 1 image file changed since the manifest was built" in console
    assert f"'{changed}'" in console and "snakemake -R build_manifest" in console
    log = (tree / f"logs/{rule}/v1.log").read_text()
    assert "Traceback" not in log and "error: 1 image file changed" in log
    assert not (tree / output).exists()


# --- class folders without images --------------------------------------------------------------


def manifest_only(tmp_path, **dataset) -> Path:
    """A working folder with CONFIG's dataset settings changed by ``dataset``."""
    config = deep_merge(CONFIG, {"dataset": dataset})
    write_config(tmp_path, config)
    return tmp_path


def test_a_class_folder_without_an_image_file_stops_the_dry_run_and_can_be_excluded(tmp_path):
    make_plain_folder(tmp_path / "images", {"Bag": 6, "Coat": 6})
    (tmp_path / "images/Empty").mkdir()
    (tmp_path / "images/Notes/sub").mkdir(parents=True)
    (tmp_path / "images/Notes/sub/readme.txt").write_text("no picture here\n")
    workdir = manifest_only(tmp_path)
    run = run_snakemake(workdir, "-n", check=False)
    console = run.stdout + run.stderr
    assert run.returncode != 0
    assert re.search(r"class folders 'Empty', 'Notes' in 'images'.* hold no file with an image "
                     r"extension", console), console  # fmt: skip
    assert 'dataset.exclude_classes: ["Empty", "Notes"]' in console
    assert "Traceback" not in console and not (workdir / "results").exists()

    workdir = manifest_only(tmp_path, exclude_classes=["Empty", "Notes"])
    run_snakemake(workdir, "--cores", "2", "results/data/mine/images.parquet")
    images = pd.read_parquet(workdir / "results/data/mine/images.parquet")
    assert sorted(images["folder"].unique()) == ["Bag", "Coat"]
    rejected = pd.read_csv(workdir / "results/data/mine/rejected.csv")
    assert not rejected["path"].str.startswith(("Empty", "Notes")).any()  # never read
    log = (workdir / "logs/build_manifest/mine.log").read_text()
    assert "left out by dataset.exclude_classes: Empty, Notes" in log


def test_an_excluded_class_that_is_no_folder_stops_the_dry_run_naming_the_folders(tmp_path):
    make_plain_folder(tmp_path / "images", {"Bag": 6, "Coat": 6, "Shirt": 6})
    run = run_snakemake(manifest_only(tmp_path, exclude_classes=["Shrit"]), "-n", check=False)
    console = run.stdout + run.stderr
    assert run.returncode != 0
    assert "dataset.exclude_classes: no class folder named Shrit in 'images'" in console
    assert "the class folders there are Bag, Coat, Shirt" in console


def test_a_class_folder_of_unreadable_files_stops_build_manifest_with_the_message_alone(tmp_path):
    make_plain_folder(tmp_path / "images", {"Bag": 6, "Coat": 6})
    (tmp_path / "images/Broken").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "images/Broken" / name).write_bytes(b"not a picture")
    workdir = manifest_only(tmp_path)
    assert run_snakemake(workdir, "-n").returncode == 0  # the names look like images
    run = run_snakemake(workdir, "--cores", "2", "results/data/mine/images.parquet", check=False)
    console = run.stdout + run.stderr
    assert run.returncode != 0
    assert "tracinflow error: class folders without a single readable image: ['Broken']" in console
    assert "dataset.exclude_classes: ['Broken']" in console
    log = (workdir / "logs/build_manifest/mine.log").read_text()
    assert "Traceback" not in log and "error: class folders without a single readable" in log
    assert not (workdir / "results/data/mine/images.parquet").exists()
