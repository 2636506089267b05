"""Byte-identical files in the dataset folder: copies in different classes (a label conflict) are
excluded from training by default and named in rejected.csv; same-class copies are kept.

Real files on disk, through the stage function the build_manifest rule runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_plain_folder

from tracinflow.config import load_schema, with_defaults
from tracinflow.data import DataError
from tracinflow.data.listing import read_source
from tracinflow.data.scan import exclude_conflicting_duplicates, scan_image_folder
from tracinflow.data.split import split_images
from tracinflow.stages.data import build_manifest

CONFLICT = ["cat/img_000.png", "dog/same_as_cat.png"]
SAME_CLASS = ["cat/img_001.png", "cat/img_001_again.png"]


def folder_with_duplicates(root: Path) -> Path:
    """Two classes of distinct PNGs, plus one file copied into the other class and one copied
    within its own class."""
    make_plain_folder(root, {"cat": 6, "dog": 6})
    shutil.copyfile(root / CONFLICT[0], root / CONFLICT[1])
    shutil.copyfile(root / SAME_CLASS[0], root / SAME_CLASS[1])
    return root


def run_stage(tmp_path: Path, policy: str) -> tuple[dict, list[str]]:
    root = folder_with_duplicates(tmp_path / "images")
    out = tmp_path / "data"
    outputs = {name: out / f"{name}.{ext}" for name, ext in
               [("images", "parquet"), ("rejected", "csv"), ("duplicates", "csv"),
                ("source", "json")]}  # fmt: skip
    params = {"extensions": [".png"], "class_names": {}, "max_pixels": 10**6,
              "conflicting_duplicates": policy, "exclude_classes": [],
              "source": read_source(root, [".png"]).digest}  # fmt: skip
    lines: list[str] = []
    build_manifest({"root": root}, outputs, params, threads=1, log=lines.append)
    tables = {
        "images": pd.read_parquet(outputs["images"]),
        "rejected": pd.read_csv(outputs["rejected"]),
        "duplicates": pd.read_csv(outputs["duplicates"]),
    }
    return tables, lines


def test_copies_in_two_classes_are_excluded_and_named_in_rejected_csv(tmp_path):
    tables, lines = run_stage(tmp_path, "exclude")
    images, rejected, duplicates = tables["images"], tables["rejected"], tables["duplicates"]
    assert not set(CONFLICT) & set(images["path"])  # not in the manifest, so never trained on
    assert set(SAME_CLASS) <= set(images["path"])  # same-class copies stay
    assert len(images) == 6 + 6 + 2 - 2
    assert images["idx"].tolist() == list(range(len(images)))
    assert images["path"].is_monotonic_increasing

    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    assert set(reasons) == set(CONFLICT)
    assert reasons["cat/img_000.png"] == (
        "label conflict: the same bytes are also labelled dog (dog/same_as_cat.png (dog)); "
        "every copy is excluded from training (dataset.conflicting_duplicates: keep trains on them)"
    )
    assert "also labelled cat (cat/img_000.png (cat))" in reasons["dog/same_as_cat.png"]

    listed = duplicates.set_index("path")
    assert set(listed.index) == set(CONFLICT) | set(SAME_CLASS)
    assert listed.loc[CONFLICT, "conflicting_labels"].all()
    assert not listed.loc[SAME_CLASS, "conflicting_labels"].any()
    # idx is the manifest's: none for an excluded copy
    assert listed.loc[CONFLICT, "idx"].isna().all()
    by_path = images.set_index("path")["idx"]
    assert listed.loc[SAME_CLASS, "idx"].tolist() == by_path[SAME_CLASS].tolist()

    assert any(
        line.startswith("excluded 2 copies of 1 files") and "label conflicts" in line
        for line in lines
    ), lines
    assert f"rejected dog/same_as_cat.png: {reasons['dog/same_as_cat.png']}" in lines


def test_exclude_is_the_default(tmp_path):
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    assert with_defaults({}, schema)["dataset"]["conflicting_duplicates"] == "exclude"
    images = scan_image_folder(folder_with_duplicates(tmp_path / "images"), [".png"])[0]
    kept, excluded, _ = exclude_conflicting_duplicates(images)
    assert sorted(excluded["path"]) == CONFLICT
    assert not set(CONFLICT) & set(kept["path"])


def test_keep_trains_on_every_copy(tmp_path):
    tables, lines = run_stage(tmp_path, "keep")
    images, rejected, duplicates = tables["images"], tables["rejected"], tables["duplicates"]
    assert set(CONFLICT) | set(SAME_CLASS) <= set(images["path"])
    assert len(images) == 6 + 6 + 2
    assert rejected.empty
    assert duplicates.set_index("path").loc[CONFLICT, "conflicting_labels"].all()
    assert duplicates["idx"].notna().all()
    assert any(line.startswith("kept 2 copies of 1 files") for line in lines), lines


def test_the_split_of_the_kept_images_still_holds_copies_together(tmp_path):
    images = scan_image_folder(folder_with_duplicates(tmp_path / "images"), [".png"])[0]
    kept, _, _ = exclude_conflicting_duplicates(images, "exclude")
    manifest = split_images(kept, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert len(manifest) == len(kept)
    assert manifest.groupby("sha256")["split"].nunique().max() == 1


def test_a_class_left_empty_by_the_exclusion_stops_with_the_key_named(tmp_path):
    root = make_plain_folder(tmp_path / "images", {"cat": 3})
    shutil.copyfile(root / "cat/img_000.png", root / "dog.png")
    (root / "dog").mkdir()
    shutil.move(root / "dog.png", root / "dog/only.png")
    images = scan_image_folder(root, [".png"])[0]
    with pytest.raises(DataError, match=r"\['dog'\].*conflicting_duplicates: keep"):
        exclude_conflicting_duplicates(images)
    assert len(exclude_conflicting_duplicates(images, "keep")[0]) == 4


def test_an_unknown_policy_is_refused(tmp_path):
    images = scan_image_folder(folder_with_duplicates(tmp_path / "images"), [".png"])[0]
    with pytest.raises(ValueError, match=r"exclude.*keep.*'drop'"):
        exclude_conflicting_duplicates(images, "drop")


def test_the_report_counts_the_excluded_conflicting_copies(tmp_path):
    from tracinflow.analysis.report_text import dataset_section

    tables, _ = run_stage(tmp_path, "exclude")
    manifest = split_images(tables["images"], {"train": 0.5, "val": 0.25, "test": 0.25}, 0)
    lines = dataset_section(manifest, tables["rejected"])
    assert lines[0] == f"Dataset: {len(manifest)} images, 2 classes"
    assert lines[1] == (
        "Not used: 2 files (rejected.csv gives each one's reason), of them 2 byte-identical "
        "copies of files in other classes, excluded as label conflicts "
        "(dataset.conflicting_duplicates)"
    )
    kept, _ = run_stage(tmp_path / "keep", "keep")
    assert not any(
        line.startswith("Not used") for line in dataset_section(manifest, kept["rejected"])
    )
