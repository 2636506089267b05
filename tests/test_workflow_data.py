"""Real snakemake runs of the data stages in a scratch working directory."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BAD_FILES, REPO, make_fake_fashion_mnist, make_messy_folder
from snakemake_runs import planned_jobs, run_snakemake, write_config

pytestmark = pytest.mark.workflow


def data_targets(name: str) -> list[str]:
    """The data stages' outputs, as targets (the default target also trains every version)."""
    data = f"results/data/{name}"
    caches = [f"{data}/cache/{split}.npy" for split in ("train", "val", "test")]
    return [f"{data}/rejected.csv", f"{data}/duplicates.csv", *caches]


def demo_config(raw_dir: Path, per_class: int) -> dict:
    with open(REPO / "config/config.yaml") as handle:
        config = yaml.safe_load(handle)
    config["dataset"]["demo"]["raw_dir"] = str(raw_dir)
    config["dataset"]["demo"]["images_per_class"] = per_class
    return config


def test_demo_config_dry_run_then_real_run(tmp_path):
    raw = make_fake_fashion_mnist(tmp_path / "raw", per_class=12)
    config = demo_config(raw, per_class=10)
    write_config(tmp_path, config)
    dry = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert planned_jobs(dry.stdout) == {
        "make_demo_dataset": 1,
        "build_manifest": 1,
        "split_dataset": 1,
        "results_stamp": 1,  # which dataset the results folders are made from
        "cache_images": 3,
        # three versions: baseline, noisy (planted flips), cleaned (noisy minus its suspects)
        "build_train_set": 3,
        "train_model": 3,
        "predict": 3,
        "extract_factors": 9,  # 3 versions x (train, val, test), 3 checkpoints each
        # the default influence, K-FAC on the head: each version's curvature inverses
        "curvature": 3,
        "influence_shard": 3,
        "merge_topk": 3,
        "self_influence": 3,
        "validation_influence": 3,
        # cleanlab's ranking on the pretrained backbone's features, where planted noise is evaluated
        "cleanlab_logistic": 2,
        "suspicion_scores": 3,
        "report_tables": 3,
        "report_plots": 3,
        "report_galleries": 3,
        "explorer": 3,
        "noise_detection": 2,
        "cross_version": 1,
        "all": 1,
    }
    assert not (tmp_path / "results").exists()  # a dry run writes nothing

    targets = data_targets("fashion_mnist_demo")
    run_snakemake(tmp_path, "--cores", "2", *targets)
    data = tmp_path / "results/data/fashion_mnist_demo"
    manifest = pd.read_parquet(data / "manifest.parquet")
    assert len(manifest) == 100
    assert "T-shirt/top" in set(manifest["class"])  # display names from dataset.class_names
    # the demo's 60/10/30 split, stratified
    assert manifest.groupby("class")["split"].value_counts().unstack().to_dict("list") == {
        "test": [3] * 10, "train": [6] * 10, "val": [1] * 10,
    }  # fmt: skip
    size = config["dataset"]["image_size"]
    for split, count in {"train": 60, "val": 10, "test": 30}.items():
        assert np.load(data / f"cache/{split}.npy", mmap_mode="r").shape == (count, size, size, 3)
    log = (tmp_path / "logs/cache_images/fashion_mnist_demo_train.log").read_text()
    assert "cache train: 60/60 images (100%)" in log

    again = run_snakemake(tmp_path, "-n", "--cores", "1", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_user_folder_with_bad_files_runs_through(tmp_path):
    root = make_messy_folder(tmp_path / "my images", per_class=10)
    config = {
        "dataset": {"name": "mine", "root": str(root), "demo": None, "image_size": 16},
        "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    }
    write_config(tmp_path, config)
    run_snakemake(tmp_path, "--cores", "2", *data_targets("mine"))
    data = tmp_path / "results/data/mine"
    rejected = pd.read_csv(data / "rejected.csv")
    # the bad files, and both copies of the file copied into the other class (a label conflict)
    assert set(rejected["path"]) == set(BAD_FILES) | {"cat/img_000.png", "dog/copy_of_cat.png"}
    duplicates = pd.read_csv(data / "duplicates.csv")
    assert len(duplicates) == 2
    manifest = pd.read_parquet(data / "manifest.parquet")
    assert manifest.groupby("sha256")["split"].nunique().max() == 1
    total = sum(
        np.load(data / f"cache/{s}.npy", mmap_mode="r").shape[0] for s in ("train", "val", "test")
    )
    assert total == len(manifest)

    # a split setting reruns the split and the caches, not the scan
    config["split"]["seed"] = 7
    write_config(tmp_path, config)
    dry = run_snakemake(tmp_path, "-n", "--cores", "1", *data_targets("mine"))
    assert planned_jobs(dry.stdout) == {"split_dataset": 1, "cache_images": 3}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"split": {"seed": "seven"}}, "'seven' is not of type 'integer'"),
        ({"datset": {}}, "'datset' was unexpected"),
        (
            {"dataset": {"demo": None, "root": "nowhere"}},
            "dataset.root: folder 'nowhere' does not exist",
        ),
        (
            {"dataset": {"demo": {"source": "digits"}}, "versions": {"v1": {"seed": 1.5}}},
            "versions.v1.seed: 1.5 is not of type 'integer'",
        ),
    ],
)
def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path, config, message):
    write_config(tmp_path, config)
    result = run_snakemake(tmp_path, "-n", "--cores", "1", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
