"""Faults under a real `snakemake` run, on a copy of the tiny workflow's finished tree."""

from __future__ import annotations

import shutil

import pytest
from snakemake_runs import run_snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture
def finished_copy(tiny_workflow, tmp_path):
    """The tiny workflow's results, logs and Snakemake metadata, copied with their times (so the
    copy is as up to date as the original and a fault injected here harms no other test)."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_workflow.workdir, workdir, symlinks=True)
    return workdir


def test_factor_extraction_refuses_a_truncated_checkpoint_and_leaves_no_factors(finished_copy):
    checkpoint = finished_copy / "results/v1/model/epoch_003.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-4096])  # newer than its factors: they rerun
    target = "results/v1/factors/epoch_003/test"
    result = run_snakemake(finished_copy, "--cores", "1", target, check=False)
    assert result.returncode != 0
    log = (finished_copy / "logs/extract_factors/v1_epoch_003_test.log").read_text()
    assert "results/v1/model/epoch_003.pt is not the checkpoint training wrote" in log
    assert "checkpoints.json records" in log and "snakemake -R train_model" in log
    assert not (finished_copy / target).exists()  # nothing that looks complete
    # retraining that version writes a good checkpoint again, and the factors follow
    run_snakemake(finished_copy, "--cores", "2", "-R", "train_model", target)
    assert (finished_copy / target / "meta.json").exists()
