"""The prepared GPU check runs its every step (on the CPU, at toy sizes): the script a short GPU rental
depends on cannot rot unseen on machines without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
