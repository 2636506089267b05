"""Faults under a real `snakemake` run, on a copy of the tiny workflow's finished tree."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from snakemake_runs import (
    job_processes,
    planned_jobs,
    planned_versions,
    run_snakemake,
    start_snakemake,
    tiny_config,
    wait_for,
    write_config,
)

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
    log = (finished_copy / "logs/extract_factors/v1_test.log").read_text()
    assert "results/v1/model/epoch_003.pt is not the checkpoint training wrote" in log
    assert "checkpoints.json records" in log and "snakemake -R train_model" in log
    assert not (finished_copy / target).exists()  # nothing that looks complete
    # retraining that version writes a good checkpoint again, and the factors follow
    run_snakemake(finished_copy, "--cores", "2", "-R", "train_model", target)
    assert (finished_copy / target / "meta.json").exists()


# --------------------------------------------------------------------------------------------------
# processes killed under a running snakemake


def file_bytes(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


KEPT_UPSTREAM = {"build_manifest", "split_dataset", "cache_images", "build_train_set", "train_model",
                 "predict"}  # fmt: skip


def v1_rerun_plan(workdir, untouched: set[str]) -> dict:
    """The jobs a dry run plans, checked to be v1's alone and none of the data, training,
    prediction or ``untouched`` rules."""
    dry = run_snakemake(workdir, "-n", "--cores", "1")
    jobs = planned_jobs(dry.stdout)
    assert planned_versions(dry.stdout) == {"v1"}
    assert not (KEPT_UPSTREAM | untouched) & set(jobs), jobs
    return jobs


def assert_same_bytes(workflow_copy, original, path: str) -> None:
    assert (workflow_copy / path).read_bytes() == (original / path).read_bytes(), path


def test_a_shard_job_killed_mid_run_reruns_that_shard_and_what_depends_on_it(
    finished_copy, tiny_workflow
):
    shard = "results/v1/influence/shards/t0_r1.parquet"
    run = start_snakemake(finished_copy, "--cores", "1", "--force", shard)
    victim = wait_for(lambda: job_processes(run, "influence_shard"), "the shard job to start", run)
    victim[0].send_signal(signal.SIGKILL)
    assert run.wait(timeout=120) != 0
    assert not (finished_copy / shard).exists()  # no partial table where the shard belongs
    assert not list((finished_copy / "results/v1/influence/shards").glob(".*.tmp"))
    jobs = v1_rerun_plan(finished_copy, {"extract_factors", "self_influence"})
    assert jobs["influence_shard"] == 1 and jobs["merge_topk"] == 1
    run_snakemake(finished_copy, "--cores", "2")
    for name in ("top_k_influences.parquet", "top_k_influences.csv"):
        assert_same_bytes(finished_copy, tiny_workflow.workdir, f"results/v1/influence/{name}")


def test_a_deleted_factor_folder_is_rebuilt_with_what_depends_on_it_alone(
    finished_copy, tiny_workflow
):
    folder = "results/v1/factors/epoch_003/test"
    shutil.rmtree(finished_copy / folder)
    # the test factors feed v1's four shards; the train and val factors are untouched
    jobs = v1_rerun_plan(finished_copy, {"self_influence", "validation_influence"})
    assert jobs["extract_factors"] == 1 and jobs["influence_shard"] == 4
    run_snakemake(finished_copy, "--cores", "2")
    assert file_bytes(finished_copy / folder) == file_bytes(tiny_workflow.workdir / folder)
    assert_same_bytes(
        finished_copy, tiny_workflow.workdir, "results/v1/influence/top_k_influences.parquet"
    )


def test_sigterm_to_snakemake_keeps_finished_jobs_and_reruns_the_ones_in_flight(
    finished_copy, tiny_workflow
):
    shards = sorted(finished_copy.glob("results/*/influence/shards/*.parquet"))
    for path in shards:
        path.unlink()
    run = start_snakemake(finished_copy, "--cores", "2", "--set-threads", "influence_shard=1")
    wait_for(
        lambda: any(p.exists() for p in shards) and len(job_processes(run, "influence_shard")) == 2,
        "a finished shard and two in flight",
        run,
    )
    run.send_signal(signal.SIGTERM)
    run.wait(timeout=180)
    finished = {p: p.stat().st_mtime_ns for p in shards if p.exists()}
    assert 0 < len(finished) < len(shards) - 1
    dry = run_snakemake(finished_copy, "-n", "--cores", "1", "--rerun-incomplete")
    assert planned_jobs(dry.stdout)["influence_shard"] == len(shards) - len(finished)
    run_snakemake(finished_copy, "--cores", "2", "--rerun-incomplete")
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not rerun
    for version in tiny_workflow.config["versions"]:
        path = f"results/{version}/influence/top_k_influences.parquet"
        assert_same_bytes(finished_copy, tiny_workflow.workdir, path)
    assert "Nothing to be done" in run_snakemake(finished_copy, "-n", "--cores", "1").stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as a full disk needs root")
def test_a_full_disk_fails_the_stage_cleanly_and_the_rerun_after_freeing_space_succeeds(
    finished_copy, tiny_workflow
):
    factors, folder = finished_copy / "results/v1/factors", "epoch_003/test"
    kept = finished_copy.parent / "factors-kept"
    shutil.move(factors, kept)
    factors.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(factors)], check=True)
    try:
        for epoch in kept.iterdir():  # the version's other factor folders, times kept
            for split in epoch.iterdir():
                if f"{epoch.name}/{split.name}" != folder:
                    shutil.copytree(split, factors / epoch.name / split.name)
        filler = factors / "filler"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            while True:  # take every block left
                handle.write(b"\0" * 65536)
                handle.flush()
        result = run_snakemake(finished_copy, "--cores", "1", check=False)
        assert result.returncode != 0
        log = (finished_copy / "logs/extract_factors/v1_test.log").read_text()
        assert "No space left on device" in log
        assert not (factors / folder).exists()  # no half-written folder that looks complete
        assert not [p for p in factors.rglob("*") if p.name.endswith(".tmp")]
        filler.unlink()
        run_snakemake(finished_copy, "--cores", "2")
        assert file_bytes(factors / folder) == file_bytes(kept / folder)
    finally:
        subprocess.run(["umount", "-l", str(factors)], check=False)


def slow_enough_training_config() -> dict:
    """The tiny config's first version on more digits and epochs: its training takes long enough
    (seconds) to be killed between its first saved epoch and its end."""
    config = tiny_config()
    config["dataset"]["demo"]["images_per_class"] = 100
    config["training"]["stage1"]["epochs"] = 3
    config["training"]["stage2"] |= {"max_epochs": 5, "checkpoint_epochs": [4, 5], "patience": None}
    config["versions"] = {"v1": {}}
    return config


def test_a_training_job_killed_mid_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path):
    write_config(tmp_path, slow_enough_training_config())
    model = tmp_path / "results/v1/model"
    target = str(model.relative_to(tmp_path) / "checkpoints.json")
    run_snakemake(tmp_path, "--cores", "2", target)
    uninterrupted = file_bytes(model)
    state = model / ".training/train_state.pt"
    run = start_snakemake(tmp_path, "--cores", "2", "--force", target)
    wait_for(state.exists, "the first saved epoch", run)
    (victim,) = job_processes(run, "train_model")
    victim.send_signal(signal.SIGKILL)
    assert run.wait(timeout=120) != 0
    # the killed run left its resume state, and no model file that looks complete
    assert (
        state.exists()
        and not list(model.glob("*.pt"))
        and not (model / "checkpoints.json").exists()
    )
    run_snakemake(tmp_path, "--cores", "2", target)
    log = (tmp_path / "logs/train_model/v1.log").read_text()
    resumed = re.search(r"resuming from train_state\.pt: stage (\d), epoch (\d+) done", log)
    assert resumed and (int(resumed[1]), int(resumed[2])) < (2, 5), log
    resumed_files = file_bytes(model)
    # every checkpoint, best.pt, checkpoints.json and the curves byte for byte; the history too,
    # but for its wall-clock seconds per epoch
    history = {name: pd.read_csv(io.BytesIO(files.pop(Path("history.csv"))))
               for name, files in (("resumed", resumed_files), ("uninterrupted", uninterrupted))}  # fmt: skip
    assert resumed_files == uninterrupted
    pd.testing.assert_frame_equal(
        history["resumed"].drop(columns="seconds"),
        history["uninterrupted"].drop(columns="seconds"),
        check_exact=True,
    )
    assert not state.parent.exists()
