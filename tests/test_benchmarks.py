"""The prepared GPU check runs its every step (on the CPU, at toy sizes): the script a short GPU rental
depends on cannot rot unseen on machines without CUDA. The scale benchmark's DAG (the workflow's own
shard entry point over generated factors) runs at a toy size, so `make bench` cannot break unseen
when the shard stage's inputs change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
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
