"""Ten times Animals-10's training set through the shard DAG, and a plan for an ImageNet-size run.

    python benchmarks/bench_scale.py            # 261,790 train x 5,979 test (about 3 minutes)
    python benchmarks/bench_scale.py --quick    # a tenth of that

Generates random float32 factor folders (5 checkpoints, final layer 256 -> 10) for 10x Animals-10's
26,179 training images and its 5,979 test images, then runs ``benchmarks/scale/Snakefile`` with
Snakemake: the workflow's own shard entry point (``workflow/scripts/influence_shard.py``), one job per
(test tile, train tile), and the exact merge. Prints one table: per-shard wall time and peak RSS from
Snakemake's benchmark files, the merge, a check of merged rows against dense scores, and the
throughput; then a plan for 1.28M train x 50k test from that throughput, with each shard's memory
from the kernel's layout (bounded by the tile sizes, whatever the totals).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_influence import FINAL, pair_flops, random_factors  # noqa: E402

from tracinflow.influence.kernel import block_shape, score_block  # noqa: E402
from tracinflow.io.factor_store import load_checkpoints, write_factor_dir  # noqa: E402

THREADS = 2
CHECKPOINTS = 5
K = 100


def generate(root: Path, n_train: int, n_test: int, rng) -> None:
    for c in range(1, CHECKPOINTS + 1):
        lr = 0.01 * 0.7 ** (c - 1)
        for split, n in (("test", n_test), ("train", n_train)):
            f = random_factors(n, FINAL, rng)
            write_factor_dir(root / f"epoch_{c:03d}" / split, f, epoch=c, lr=lr, loss={})


def run_dag(work: Path, test_tiles: int, train_tiles: int) -> float:
    config = {"factors": str(work / "factors"), "checkpoints": list(range(1, CHECKPOINTS + 1)),
              "test_tiles": test_tiles, "train_tiles": train_tiles, "k": K}  # fmt: skip
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake = Path(sys.executable).with_name("snakemake")
    t0 = time.perf_counter()
    subprocess.run(
        [str(snakemake), "-s", str(ROOT / "benchmarks/scale/Snakefile"), "-d", str(work),
         "--configfile", str(work / "config.yaml"), "--cores", str(THREADS), "--quiet"],
        check=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
             "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    return time.perf_counter() - t0


def check_rows(work: Path, rows: int = 8) -> str:
    """The merged top-k of the first ``rows`` test rows against a sort of their dense scores."""
    merged = pd.read_parquet(work / "merged.parquet")
    dirs = [work / "factors" / f"epoch_{c:03d}" for c in range(1, CHECKPOINTS + 1)]
    test = [f.rows(slice(0, rows)) for f in load_checkpoints([d / "test" for d in dirs])]
    dense = score_block(test, load_checkpoints([d / "train" for d in dirs]), device="cpu")
    same = 0
    for i in range(rows):
        best = np.argsort(-dense[i], kind="stable")[:K]
        got = merged[(merged["test_idx"] == i) & (merged["kind"] == "proponent")]["train_idx"]
        same += int(np.array_equal(got.to_numpy(), best))
    return f"{same} of {rows} test rows: proponents identical to a full sort of their dense scores"


def shard_table(work: Path) -> pd.DataFrame:
    """Per job: wall and peak RSS (benchmark file) and, for shards, the scoring time its log gives
    (the wall less the start-up of Python and torch)."""
    rows = []
    for path in sorted((work / "benchmarks").glob("*.tsv")):
        bench = pd.read_csv(path, sep="\t").iloc[0]
        log = work / "logs" / f"{path.stem}.log"
        scored = re.search(r"shard scored in ([0-9.]+) s", log.read_text())
        rows.append({"job": path.stem, "s": float(bench["s"]), "max_rss": float(bench["max_rss"]),
                     "scored_s": float(scored.group(1)) if scored else math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def shard_memory_mib(test_rows: int, d_in: int, d_out: int, ckpts: int, k: int) -> float:
    """A shard's working memory by the kernel's layout: the test tile's operands (padded to 64-byte
    rows), one train block's operands, the three score buffers, the running top-k (values, idx and
    pending candidates: at most 4k per row and kind) and the output frame."""
    bt, br = block_shape(32 * 2**20)
    width = (-(-d_in // 16) * 16 + -(-d_out // 16) * 16) * 4 * ckpts
    test = test_rows * width
    train = br * width
    topk = test_rows * 2 * 5 * k * 12
    frame = test_rows * 2 * k * 48
    return (test + train + 3 * bt * br * 4 + topk + frame) / 2**20


def imagenet_plan(gflops: float, base_mib: float) -> list[str]:
    """Shards, memory and time for 1.28M train x 50k test at the measured CPU throughput and at a
    stated GPU GEMM rate."""
    n_train, n_test, ckpts = 1_281_167, 50_000, 5
    lines = ["| head traced | shards (test x train tiles) | per shard: rows, memory, time (2 cores) | "
             "total CPU core-hours | total GPU-hours at 40 TFLOP/s |",
             "| --- | --- | --- | ---: | ---: |"]  # fmt: skip
    for name, dims in (("final layer 256 -> 1000", {"fc.4": (256, 1000)}),
                       ("head 2048 -> 512 -> 256 -> 1000",
                        {"fc.0": (2048, 512), "fc.2": (512, 256), "fc.4": (256, 1000)})):  # fmt: skip
        flops = pair_flops(dims) * ckpts
        t_tiles, r_tiles = 10, 64
        rows_t, rows_r = math.ceil(n_test / t_tiles), math.ceil(n_train / r_tiles)
        d_in = sum(a for a, _ in dims.values())
        d_out = sum(b for _, b in dims.values())
        memory = base_mib + shard_memory_mib(rows_t, d_in, d_out, ckpts, K)
        # the measured kernel rate, scaled by the flops per pair of this head
        seconds = rows_t * rows_r * flops / (gflops * 1e9)
        total_s = seconds * t_tiles * r_tiles
        gpu_h = n_train * n_test * flops / 40e12 / 3600
        lines.append(
            f"| {name} | {t_tiles * r_tiles} ({t_tiles} x {r_tiles}) | {rows_t:,} x {rows_r:,}, "
            f"{memory:,.0f} MiB, {seconds / 60:.1f} min | {total_s * THREADS / 3600:,.0f} | "
            f"{gpu_h:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    n_train, n_test = (26_179, 1_196) if args.quick else (261_790, 5_979)
    test_tiles, train_tiles = (1, 4) if args.quick else (2, 4)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        generate(work / "factors", n_train, n_test, rng)
        generated = time.perf_counter() - t0
        factor_gib = sum(f.stat().st_size for f in (work / "factors").rglob("*.npy")) / 2**30
        wall = run_dag(work, test_tiles, train_tiles)
        jobs = shard_table(work)
        check = check_rows(work)
    shards = jobs[jobs["job"].str.startswith("shard")]
    merge = jobs[jobs["job"] == "merge"].iloc[0]
    pairs = n_train * n_test * CHECKPOINTS
    flops = n_train * n_test * CHECKPOINTS * pair_flops(FINAL)
    gflops = flops / shards["scored_s"].sum() / 1e9
    print(f"\n### bench_scale{' --quick' if args.quick else ''} ({THREADS} CPU threads per shard "
          f"job, shards run one after another on 2 cores)\n")  # fmt: skip
    print("| measurement | result |\n| --- | --- |")
    print(f"| problem | {n_train:,} train x {n_test:,} test, {CHECKPOINTS} checkpoints, final "
          f"layer 256 -> 10, k {K}; factor files {factor_gib:.2f} GiB (generated in "
          f"{generated:.0f} s) |")  # fmt: skip
    print(f"| shards | {len(shards)} jobs ({test_tiles} test x {train_tiles} train tiles) of "
          f"{n_test // test_tiles:,} x {n_train // train_tiles:,} rows |")  # fmt: skip
    print(f"| per shard, wall (Snakemake benchmark files) | {shards['s'].min():.1f} to "
          f"{shards['s'].max():.1f} s, mean {shards['s'].mean():.1f} s; of which scoring (the "
          f"shard's log) {shards['scored_s'].min():.1f} to {shards['scored_s'].max():.1f} s, the "
          "rest is Python and torch starting |")  # fmt: skip
    print(f"| per shard, peak RSS | {shards['max_rss'].min():,.0f} to "
          f"{shards['max_rss'].max():,.0f} MiB |")  # fmt: skip
    print(f"| merge of {len(shards)} shards | {merge['s']:.1f} s, {merge['max_rss']:,.0f} MiB |")
    print(f"| DAG wall (snakemake start to end) | {wall:.0f} s |")
    print(f"| throughput (scoring) | {pairs / shards['scored_s'].sum() / 1e6:,.0f} M pair-checkpoints/s = "
          f"{gflops:,.1f} useful GFLOP/s on 2 cores |")  # fmt: skip
    print(f"| exactness | {check} |")
    print("\nPlanned from that throughput (the same kernel rate, scaled by each head's flops per "
          "pair; memory from the kernel's layout plus the measured process base):\n")  # fmt: skip
    base = float(shards["max_rss"].min()) - shard_memory_mib(
        n_test // test_tiles, 256, 10, CHECKPOINTS, K
    )
    for line in imagenet_plan(gflops, base):
        print(line)


if __name__ == "__main__":
    main()
