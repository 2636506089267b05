"""The prepared GPU check runs its every step (on the CPU, at toy sizes): the script a short GPU rental
depends on cannot rot unseen on machines without CUDA. The scale benchmark's DAG (the workflow's own
shard entry point over generated factors) runs at a toy size, so `make bench` cannot break unseen
when the shard stage's inputs change. The k-fold experiment's margin is checked by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_step_on_the_cpu_at_toy_sizes():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    checks = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert [c.split(" ")[0] for c in checks] == [
        "device", "factors", "shard", "training", "extraction", "kernel", "kernel",
    ]  # fmt: skip
    # on one device the two sides are the same computation; float32 matches float64 closely
    assert "largest difference 0.0e+00" in table[3]
    assert "float32: error" in table[4] and "top-100 entries equal to the CPU's 100.0%" in table[4]


@pytest.mark.workflow
def test_the_scale_benchmarks_dag_runs_the_workflows_shard_stage_and_merges_exactly(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    bench_scale.generate(tmp_path / "factors", 300, 40, np.random.default_rng(0))
    bench_scale.run_dag(tmp_path, 2, 2)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 4
    assert bench_scale.check_rows(tmp_path).startswith("8 of 8 test rows: proponents identical")


def test_the_kfold_experiments_held_out_margin_is_the_logit_margin_of_the_given_label(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import aum_kfold
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([0, 2, 1])
    # by hand: 2 - 0.5; 1 - 3; a tie with the best other class
    np.testing.assert_allclose(
        aum_kfold.held_out_margin(probs, labels), [1.5, -2.0, 0.0], atol=1e-12
    )
    folds = tmp_path / "v/rankings/kfold"
    folds.mkdir(parents=True)
    for fold, rows in enumerate(([2, 0], [1])):
        frame = {"train_idx": [10 + r for r in rows], "label": labels[rows], "fold": fold}
        frame["probs"] = list(probs[rows])
        pd.DataFrame(frame).to_parquet(folds / f"fold_{fold}.parquet")
    got, got_labels = aum_kfold.out_of_fold_probs(tmp_path, "v", np.array([10, 11, 12]))
    np.testing.assert_array_equal(got, probs)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(ValueError, match="exactly once"):
        aum_kfold.out_of_fold_probs(tmp_path, "v", np.array([10, 11, 12, 13]))
