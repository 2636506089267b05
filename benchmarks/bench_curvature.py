"""What the curvature-aware methods cost in the workflow, against TracIn on the same factors.

    python benchmarks/bench_curvature.py           # about 5 minutes on 2 CPU cores
    python benchmarks/bench_curvature.py --quick   # small shapes, under a minute

Prints one markdown table. Random factor folders with the demo network's head (EfficientNet-Lite0:
1280 -> 512 -> 256 -> 10; speed does not depend on the values), at two sizes: the evaluation's
(1,200 train x 1,500 test, 3 checkpoints) and Animals-10's (26,179 x 5,979, 5 checkpoints; the
final layer only: the head's kernel there is bench_influence.py's). Per influence.method and layers,
each in its own child process (its peak RSS its own, 2 threads): the ``curvature`` job (the damped
inverses from the training factors) and one shard over everything (``shard_topk``, k 100, with the
curvature file: the test tile preconditioned, then the exact kernel), wall time and peak RSS,
against TracIn's shard over the same folders in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_influence import THREADS, make_folders, peak_rss_mib  # noqa: E402

from tracinflow.analysis.markdown import markdown_table  # noqa: E402
from tracinflow.stages.influence import curvature, shard_topk  # noqa: E402

HEAD = {"fc.0": (1280, 512), "fc.2": (512, 256), "fc.4": (256, 10)}
FINAL = {"fc.4": (256, 10)}
CASES = [("tracin", "final"), ("kfac", "final"), ("gauss_newton", "final"),
         ("tracin", "head"), ("kfac", "head")]  # fmt: skip


def worker(spec_json: str) -> None:
    """Child process: the curvature job (for a curvature method) and one shard over every row."""
    torch.set_num_threads(THREADS)
    spec = json.loads(spec_json)
    base = peak_rss_mib()
    curvature_s, path = 0.0, None
    if spec["method"] != "tracin":
        path = str(Path(spec["out"]) / "curvature.npz")
        started = time.perf_counter()
        curvature({"train": spec["train_dirs"]}, {"inverses": path},
                  {"method": spec["method"], "damping": 0.1}, threads=2, log=lambda _: None)  # fmt: skip
        curvature_s = time.perf_counter() - started
    started = time.perf_counter()
    shard_topk(spec["test_dirs"], spec["train_dirs"], 100, curvature=path, device="cpu")
    shard_s = time.perf_counter() - started
    print(json.dumps({"curvature_s": curvature_s, "shard_s": shard_s, "peak_mib": peak_rss_mib(),
                      "base_mib": base}))  # fmt: skip


def run_child(spec: dict) -> dict:
    """This script as a child process (2 threads, idle OpenMP threads sleeping as under `make`)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
               OMP_WAIT_POLICY="PASSIVE")  # fmt: skip
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    sizes = [("evaluation", 1200, 1500, 3), ("Animals-10", 26179, 5979, 5)]
    if args.quick:
        sizes = [("evaluation/8", 150, 190, 3), ("Animals-10/16", 1636, 374, 5)]
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for size, n_train, n_test, ckpts in sizes:
            for layers in ("final", "head"):
                if layers == "head" and size.startswith("Animals-10"):
                    continue
                root = Path(tmp) / size.replace("/", "_") / layers
                dims = FINAL if layers == "final" else HEAD
                test_dirs, train_dirs, _, _ = make_folders(root, n_test, n_train, ckpts, dims, rng)
                baseline = None
                for method, case_layers in CASES:
                    if case_layers != layers:
                        continue
                    out = root / method
                    out.mkdir()
                    spec = {"method": method, "out": str(out), "k": 100,
                            "test_dirs": [str(d) for d in test_dirs],
                            "train_dirs": [str(d) for d in train_dirs]}  # fmt: skip
                    got = run_child(spec)
                    baseline = baseline or got["shard_s"] + got["curvature_s"]
                    total = got["shard_s"] + got["curvature_s"]
                    rows.append({
                        "size": f"{size} ({n_train:,} x {n_test:,}, {ckpts} checkpoints)",
                        "influence.method": method, "layers": layers,
                        "curvature job (s)": round(got["curvature_s"], 2),
                        "shard (s)": round(got["shard_s"], 2),
                        "x TracIn's": round(total / baseline, 2),
                        "peak RSS (MiB)": round(got["peak_mib"]),
                    })  # fmt: skip
                    print(rows[-1], flush=True)
    import pandas as pd

    print(markdown_table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
