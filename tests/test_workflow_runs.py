"""rankings.trajectory_runs: a version trained again with other training seeds (train_run jobs),
each run the same training as a version of its own with that seed and the same labels, the
trajectory rankings of the suspicion table the mean of the runs' own, and a killed run resuming
where it stopped."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from snakemake_runs import planned_jobs, run_snakemake, tiny_config, write_config

import tracinflow.io.training as training
from tracinflow.analysis.trajectory import trajectory_signals
from tracinflow.config import load_schema, version_settings
from tracinflow.stages.rankings import train_run

pytestmark = pytest.mark.workflow

NOISE = {"rate": 0.25, "seed": 3}


def config() -> dict:
    settings = copy.deepcopy(tiny_config())
    settings["versions"] = {
        # three trainings of one noisy training set: its own (seed 1), runs 1 and 2 (101, 201)
        "r": {"seed": 1, "label_noise": NOISE, "rankings": {"trajectory_runs": 3}},
        # what run 1 must be: the same labels trained as a version of its own with seed 101
        "r101": {"seed": 101, "label_noise": NOISE},
    }
    return settings


def test_the_runs_are_trainings_of_the_same_labels_and_the_rankings_average_them(
    tmp_path, monkeypatch
):
    write_config(tmp_path, config())
    targets = [
        "results/r/rankings/suspicion_scores.parquet",
        "results/r101/model/trajectory.parquet",
    ]
    dry = run_snakemake(tmp_path, "-n", "--cores", "2", *targets)
    assert planned_jobs(dry.stdout)["train_run"] == 2
    run_snakemake(tmp_path, "--cores", "2", *targets)
    out = tmp_path / "results"
    own = pd.read_parquet(out / "r/model/trajectory.parquet")
    runs = [pd.read_parquet(out / f"r/rankings/runs/run_{k}.parquet") for k in (1, 2)]
    # run 1 is, to the bit, the training of the same labels with training seed 1 + 100
    pd.testing.assert_frame_equal(runs[0], pd.read_parquet(out / "r101/model/trajectory.parquet"))
    # every run saw every image of the training set in every epoch, and the runs differ
    for run in runs:
        assert len(run) == len(own) and set(run["train_idx"]) == set(own["train_idx"])
        assert not np.array_equal(run["margin"].to_numpy(), own["margin"].to_numpy())
    suspicion = pd.read_parquet(out / "r/rankings/suspicion_scores.parquet")
    idx = suspicion["train_idx"].to_numpy()
    by_run = [trajectory_signals(frame, idx) for frame in [own, *runs]]
    for name in ("aum", "loss_sum", "forgetting"):
        mean = np.mean([signals[name] for signals in by_run], axis=0)
        np.testing.assert_allclose(suspicion[name], mean, rtol=1e-12)
        assert not np.allclose(suspicion[name], by_run[0][name])
    _a_killed_run_resumes_and_ends_as_the_uninterrupted_run(tmp_path, runs[0], monkeypatch)
    # one run (the default) plans no other training
    write_config(tmp_path, {**config(), "versions": {"r": {"seed": 1, "label_noise": NOISE}}})
    dry = run_snakemake(
        tmp_path, "-n", "--cores", "2", "results/r/rankings/suspicion_scores.parquet"
    )
    assert "train_run" not in dry.stdout


class _Killed(Exception):
    """Stands for a kill after an epoch's resume state was written."""


def _a_killed_run_resumes_and_ends_as_the_uninterrupted_run(workdir, uninterrupted, monkeypatch):
    """train_run (train_fold shares its training) stopped after its second epoch keeps its
    resume state in its scratch folder; started again it resumes there and writes run 1's
    trajectory to the bit, then removes the folder."""
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    version = version_settings(config(), schema)["r"]
    data = workdir / "results/data/digits"
    inputs = {
        "manifest": data / "manifest.parquet", "train_set": workdir / "results/r/train_set.parquet",
        "train": data / "cache/train.npy", "val": data / "cache/val.npy", "weights": [],
    }  # fmt: skip
    out = workdir / "again/run_1.parquet"
    scratch = workdir / "again/.run_1"
    params = {"settings": {key: version[key] for key in ("seed", "model", "training")},
              "run": "1", "scratch": str(scratch)}  # fmt: skip
    save = training.save_train_state
    saved = []

    def save_then_kill(path, state):
        save(path, state)
        saved.append(path)
        if len(saved) == 2:
            raise _Killed

    monkeypatch.setattr(training, "save_train_state", save_then_kill)
    # two threads, as the workflow's job ran: other thread counts sum in another order
    with pytest.raises(_Killed):
        train_run(inputs, {"trajectory": out}, params, threads=2, log=lambda line: None)
    monkeypatch.undo()
    assert (scratch / "scratch/train_state.pt").exists() and not out.exists()
    lines = []
    train_run(inputs, {"trajectory": out}, params, threads=2, log=lines.append)
    assert any(line.startswith("resuming from train_state.pt") for line in lines), lines
    pd.testing.assert_frame_equal(pd.read_parquet(out), uninterrupted, check_exact=True)
    assert not scratch.exists()
