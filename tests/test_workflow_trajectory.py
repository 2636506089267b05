"""The whole training run traced (training.stage1.checkpoint_epochs): train_model writes the stage-1
(head-only) checkpoints with stage 1's learning rate, extract_factors traces them like stage 2's,
and the shards' merged top-k equals a dense float64 recomputation of the method summed over every
checkpoint of both stages; the self-influence keeps each stage-1 checkpoint's term."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from snakemake_runs import planned_jobs, run_snakemake, tiny_config, write_config
from test_workflow_curvature import dense_topk

from tracinflow.influence.methods import method_scores
from tracinflow.io.factor_store import load_checkpoints

pytestmark = pytest.mark.workflow

STAGE1 = {"epochs": 2, "lr": 3e-3, "checkpoint_epochs": [1, 2]}
VERSIONS = {"t": {"influence": {"method": "kfac", "layers": "head",
                                "shards": {"test": 2, "train": 2}}}}  # fmt: skip


def config(stage1=STAGE1) -> dict:
    settings = copy.deepcopy(tiny_config())
    settings["training"]["stage1"] = dict(stage1)
    settings["versions"] = copy.deepcopy(VERSIONS)
    return settings


@pytest.fixture(scope="module")
def trajectory_workflow(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trajectory-workflow")
    write_config(workdir, config())
    run_snakemake(workdir, "--cores", "2", "results/t/influence/top_k_influences.parquet",
                  "results/t/influence/self_influence.parquet")  # fmt: skip
    return workdir


def float64_factors(out, split):
    """A split's factors at every checkpoint, stage 1's then stage 2's, in float64."""
    folders = sorted((out / "factors").glob(f"stage1_epoch_*/{split}"))
    folders += sorted((out / "factors").glob(f"epoch_*/{split}"))
    factors = load_checkpoints(folders)
    for side in factors:
        side.act = {k: np.asarray(v, np.float64) for k, v in side.act.items()}
        side.err = {k: np.asarray(v, np.float64) for k, v in side.err.items()}
    return factors


def test_the_stage1_checkpoints_are_written_and_traced_with_stage_1s_rate(trajectory_workflow):
    out = trajectory_workflow / "results/t"
    listed = json.loads((out / "model/checkpoints.json").read_text())
    assert [(c["stage"], c["epoch"], c["file"]) for c in listed] == [
        (1, 1, "stage1_epoch_001.pt"), (1, 2, "stage1_epoch_002.pt"),
        (2, 2, "epoch_002.pt"), (2, 3, "epoch_003.pt"),
    ]  # fmt: skip
    for epoch in (1, 2):
        meta = json.loads((out / f"factors/stage1_epoch_{epoch:03d}/train/meta.json").read_text())
        assert (meta["stage"], meta["epoch"], meta["lr"]) == (1, epoch, STAGE1["lr"])
    frame = pd.read_parquet(out / "influence/self_influence.parquet")
    assert {"self_influence_stage1_epoch_001", "self_influence_epoch_002"} <= set(frame.columns)
    terms = [c for c in frame.columns if c.startswith("self_influence_") and "epoch" in c]
    np.testing.assert_allclose(frame[terms].sum(axis=1), frame["self_influence"], rtol=1e-5)


def test_the_shards_top_k_sums_the_method_over_both_stages(trajectory_workflow):
    out = trajectory_workflow / "results/t"
    test, train = float64_factors(out, "test"), float64_factors(out, "train")
    assert len(test) == len(train) == 4
    scores = method_scores("kfac_head", test, train)
    stage2_alone = method_scores("kfac_head_stage2", test, train)
    assert not np.allclose(scores, stage2_alone)  # stage 1 is in the sum
    expected = dense_topk(scores, test[0].idx, train[0].idx, 5)
    got = pd.read_parquet(out / "influence/top_k_influences.parquet")
    got = got[["test_idx", "kind", "rank", "train_idx", "influence"]].astype({"kind": str})
    got = got.sort_values(["test_idx", "kind", "rank"]).reset_index(drop=True)
    expected = expected.sort_values(["test_idx", "kind", "rank"]).reset_index(drop=True)
    # the lists agree wherever a score is not within float32 rounding of the next one
    assert (got["train_idx"] == expected["train_idx"]).mean() > 0.98
    np.testing.assert_allclose(got["influence"], expected["influence"], rtol=1e-4,
                               atol=1e-5 * np.abs(scores).max())  # fmt: skip


def test_other_stage1_checkpoints_retrain_the_version(trajectory_workflow):
    target = "results/t/influence/top_k_influences.parquet"
    try:
        write_config(trajectory_workflow, config({**STAGE1, "checkpoint_epochs": [2]}))
        plan = planned_jobs(run_snakemake(trajectory_workflow, "-n", target).stdout)
        assert plan.get("train_model") == 1
        write_config(trajectory_workflow, config({**STAGE1, "checkpoint_epochs": []}))
        dry = run_snakemake(trajectory_workflow, "-n", target).stdout
        assert "stage1_epoch" not in dry
    finally:
        write_config(trajectory_workflow, config())
