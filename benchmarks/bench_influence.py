"""The influence core on this machine: the shard kernel and factor extraction, against their limits.

    python benchmarks/bench_influence.py            # full run (about 4-6 minutes on 2 CPU cores)
    python benchmarks/bench_influence.py --quick    # smaller shapes, about a minute

Prints one markdown table. Every number comes from this run; the baselines run in the same run (each
shard in a child process, so its peak RSS is its own). Random factors and a randomly initialised
model: speed does not depend on the values, and nothing is downloaded.

* Kernel, final layer, Animals-10 scale (26,179 train x 5,979 test, 5 checkpoints, d_in 256, d_out
  10, k 100): ``shard_topk`` over everything as one shard, read from factor folders: wall time, peak
  RSS, useful GFLOP/s against a plain ``torch.mm`` of the same flop count in the same run.
* Kernel, every head layer (a ResNet-50 head: 2048 -> 512 -> 256 -> 10), the same rows.
* Peak RSS at three train-set sizes (a quarter, once and four times Animals-10's): flat, since the
  train rows stream through one grid block at a time.
* The seed's tracker (per test row: its scores against all train rows, top-k in Python heaps) on a
  subset of test rows, EXTRAPOLATED to all of them; and whether the two agree.
* ``influence.precision``: bf16 operands against float64 scores (max relative error, top-k overlap).
* Extraction on the demo's network (EfficientNet-Lite0 + the project head, 64 px): images/s of
  ``extract_factors`` (final layer, closed form; all head layers, autograd through the head)
  against a bare inference forward on the same batches (the limit) and the seed's per-sample
  forward+backward hook loop; and the memory of extraction held in memory vs streamed to a folder.
"""

from __future__ import annotations

import argparse
import heapq
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

from tracinflow.influence.factors import Factors, extract_factors  # noqa: E402
from tracinflow.influence.kernel import score_block  # noqa: E402
from tracinflow.io.factor_store import (  # noqa: E402
    extract_to_dir,
    load_checkpoints,
    write_factor_dir,
)
from tracinflow.stages.influence import shard_topk  # noqa: E402
from tracinflow.train.loss import WeightedSmoothedCrossEntropy  # noqa: E402
from tracinflow.train.model import build_model, make_arch  # noqa: E402

THREADS = 2
FINAL = {"fc.4": (256, 10)}
HEAD = {"fc.0": (2048, 512), "fc.2": (512, 256), "fc.4": (256, 10)}


def scale(quick: bool) -> dict:
    if quick:
        return dict(n_train=6000, n_test=1200, ckpts=5, k=100, naive_rows=50, rss_base=3000,
                    images=128, per_sample=16, batch=64, memory_images=1024)  # fmt: skip
    return dict(n_train=26179, n_test=5979, ckpts=5, k=100, naive_rows=200, rss_base=26179,
                images=512, per_sample=64, batch=64, memory_images=42000)  # fmt: skip


def pair_flops(dims: dict) -> int:
    """Useful flops per (test, train) pair and checkpoint: two dot products per layer (the +1 of
    the bias counted in the first) and the multiply-add that sums them."""
    return sum(2 * (d_in + 1) + 2 * d_out + 2 for d_in, d_out in dims.values())


# --------------------------------------------------------------------------------------------------
# factor folders and one shard in a child process


def random_factors(n: int, dims: dict, rng) -> Factors:
    act = {name: np.maximum(rng.standard_normal((n, d_in), dtype=np.float32), 0)
           for name, (d_in, _) in dims.items()}  # fmt: skip
    err = {name: rng.standard_normal((n, d_out), dtype=np.float32) * 0.1
           for name, (_, d_out) in dims.items()}  # fmt: skip
    d_out = dims["fc.4"][1]
    return Factors(
        act=act,
        err=err,
        labels=np.zeros(n, np.int64),
        logits=np.zeros((n, d_out), np.float32),
        idx=np.arange(n, dtype=np.int64),
        has_bias=dict.fromkeys(dims, True),
    )


def make_folders(root: Path, n_test: int, n_train: int, ckpts: int, dims: dict, rng, keep=False):
    """Factor folders per checkpoint and split; returns (test dirs, train dirs, lrs, arrays kept)."""
    dirs, kept = {"test": [], "train": []}, {"test": [], "train": []}
    lrs = [0.01 * 0.7**c for c in range(ckpts)]
    for c, lr in enumerate(lrs):
        for split, n in (("test", n_test), ("train", n_train)):
            f = random_factors(n, dims, rng)
            folder = root / f"epoch_{c + 1:03d}" / split
            write_factor_dir(folder, f, epoch=c + 1, lr=lr, loss={})
            dirs[split].append(folder)
            if keep:
                kept[split].append((f.act["fc.4"], f.err["fc.4"]))
    return dirs["test"], dirs["train"], lrs, kept


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``getrusage``: Linux carries ``ru_maxrss``
    across ``exec`` from the forking parent, so a child would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def shard_worker(spec_json: str) -> None:
    """Child process: one shard over every row; prints wall time and peak RSS as JSON."""
    torch.set_num_threads(THREADS)
    spec = json.loads(spec_json)
    base = peak_rss_mib()  # python, torch, pandas loaded
    t0 = time.perf_counter()
    frame = shard_topk(spec["test_dirs"], spec["train_dirs"], spec["k"], device="cpu")
    wall = time.perf_counter() - t0
    frame.to_parquet(spec["out"], index=False)
    print(json.dumps({"wall_s": wall, "peak_mib": peak_rss_mib(), "base_mib": base}))


def run_child(flag: str, spec: dict, passive: bool = True) -> dict:
    """Run this script as a child with ``flag``. ``passive``: OMP_WAIT_POLICY=PASSIVE, as `make`
    runs every job (idle OpenMP threads sleep, so concurrent jobs on few cores do not spin against
    each other); otherwise OpenMP's default (threads spin a while before sleeping)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(
        [sys.executable, __file__, flag, json.dumps(spec)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_shard(test_dirs, train_dirs, k, out: Path, passive: bool = True) -> dict:
    spec = {"test_dirs": [str(d) for d in test_dirs], "train_dirs": [str(d) for d in train_dirs]}
    return run_child("--shard-worker", {**spec, "k": k, "out": str(out)}, passive)


def mm_gflops(m: int, n: int, flops: float) -> float:
    """A plain torch.mm of ``flops``: (m x K) @ (K x n) with K = flops / (2 m n), in column chunks."""
    inner = max(1, round(flops / (2 * m * n)))
    a, b = torch.randn(m, inner), torch.randn(n, inner)
    chunk = 4096
    out = torch.empty(m, chunk)
    torch.mm(a, b[:chunk].T, out=out)  # warm-up
    t0 = time.perf_counter()
    for start in range(0, n, chunk):
        part = b[start : start + chunk]
        torch.mm(a, part.T, out=out[:, : part.shape[0]])
    return 2 * m * n * inner / (time.perf_counter() - t0) / 1e9


# --------------------------------------------------------------------------------------------------
# kernel measurements


def bench_kernel(root: Path, p: dict, dims: dict, name: str, rng) -> tuple[list, object]:
    """One shard over everything for ``dims``; rows for the table and the folders made."""
    folders = make_folders(root / name, p["n_test"], p["n_train"], p["ckpts"], dims, rng,
                           keep=dims is FINAL)  # fmt: skip
    test_dirs, train_dirs = folders[0], folders[1]
    flops = p["n_test"] * p["n_train"] * p["ckpts"] * pair_flops(dims)
    shard = run_shard(test_dirs, train_dirs, p["k"], root / name / "shard.parquet")
    mm = mm_gflops(p["n_test"], p["n_train"], flops)
    achieved = flops / shard["wall_s"] / 1e9
    spinning = ""
    if dims is FINAL:  # the same shard with OpenMP's default wait policy
        other = run_shard(test_dirs, train_dirs, p["k"], root / name / "again.parquet", False)
        rate = flops / other["wall_s"] / 1e9
        spinning = (f"; with OpenMP's default wait policy (a job alone on its cores, as on a "
                    f"cluster) {other['wall_s']:.1f} s = {rate:,.1f} GFLOP/s = **{rate / mm:.0%}**")  # fmt: skip
    factor_mib = sum(f.stat().st_size for d in test_dirs + train_dirs for f in d.glob("*.npy"))
    layers = " + ".join(f"{n} {a}->{b}" for n, (a, b) in dims.items())
    rows = [
        (f"kernel, {layers}: one shard over everything, from factor folders, wall",
         f"{shard['wall_s']:.1f} s ({flops / 1e12:.2f} TFLOP useful)"),
        (f"kernel, {layers}: achieved (useful flops / wall)",
         f"{achieved:,.1f} GFLOP/s = **{achieved / mm:.0%}** of a plain torch.mm of the same flop "
         f"count ({mm:,.1f} GFLOP/s, same run), with OMP_WAIT_POLICY=PASSIVE as `make` runs jobs"
         f"{spinning}"),
        (f"kernel, {layers}: peak RSS of the shard's process",
         f"{shard['peak_mib']:,.0f} MiB ({shard['base_mib']:,.0f} MiB before the shard: python, "
         f"torch, pandas; factor files {factor_mib / 2**20:,.0f} MiB)"),
    ]  # fmt: skip
    return rows, folders


def bench_rss(root: Path, p: dict, rng) -> list:
    """Peak RSS of one shard at three train-set sizes (final layer)."""
    cells = []
    for factor in (0.25, 1, 4):
        n_train = int(p["rss_base"] * factor)
        test_dirs, train_dirs, _, _ = make_folders(
            root / f"rss_{factor}", p["n_test"], n_train, p["ckpts"], FINAL, rng
        )
        shard = run_shard(test_dirs, train_dirs, p["k"], root / f"rss_{factor}.parquet")
        cells.append(
            f"{n_train:,} train: {shard['peak_mib']:,.0f} MiB "
            f"(+{shard['peak_mib'] - shard['base_mib']:,.0f}, {shard['wall_s']:.1f} s)"
        )
        for d in test_dirs + train_dirs:  # free the disk before the next size
            for f in d.glob("*"):
                f.unlink()
    return [("kernel, final layer: peak RSS of a shard by train rows (above the pre-shard base)",
             "; ".join(cells))]  # fmt: skip


def naive_tracker(p: dict, kept: dict, lrs: list[float]) -> tuple[float, dict]:
    """The seed's approach: per test row, its scores against all train rows, top-k kept in Python
    heaps. Returns seconds per test row and the proponents of the rows done."""
    k = p["k"]
    train = [(torch.from_numpy(a), torch.from_numpy(e)) for a, e in kept["train"]]
    test = [(torch.from_numpy(a), torch.from_numpy(e)) for a, e in kept["test"]]
    found = {}
    t0 = time.perf_counter()
    for i in range(p["naive_rows"]):
        scores = torch.zeros(p["n_train"])
        for lr, (a_r, e_r), (a_t, e_t) in zip(lrs, train, test, strict=True):
            scores += lr * (a_r @ a_t[i] + 1) * (e_r @ e_t[i])
        best: list = []  # (score, -idx): larger is better, ties to the lower idx
        for j, value in enumerate(scores.tolist()):
            if len(best) < k:
                heapq.heappush(best, (value, -j))
            elif (value, -j) > best[0]:
                heapq.heapreplace(best, (value, -j))
        found[i] = [-j for _, j in sorted(best, reverse=True)]
    return (time.perf_counter() - t0) / p["naive_rows"], found


def agreement(result, naive: dict, kept: dict, lrs) -> str:
    """Share of rows with identical proponent lists; for the others the largest relative gap between
    float64 scores of entries the two lists order differently (float32 rounding)."""
    props = result[result["kind"] == "proponent"]
    same, gap = 0, 0.0
    for i, theirs in naive.items():
        ours = list(props.loc[props["test_idx"] == i, "train_idx"])
        if ours == theirs:
            same += 1
            continue
        exact = np.zeros(len(kept["train"][0][0]))
        for lr, (a_r, e_r), (a_t, e_t) in zip(lrs, kept["train"], kept["test"], strict=True):
            gram_a = a_r.astype(np.float64) @ a_t[i].astype(np.float64) + 1
            exact += lr * gram_a * (e_r.astype(np.float64) @ e_t[i].astype(np.float64))
        for a, b in zip(ours, theirs, strict=True):
            if a != b:
                gap = max(gap, abs(exact[a] - exact[b]) / abs(exact[b]))
    text = f"{same / len(naive):.1%} of the rows measured identical"
    if same < len(naive):
        text += (f"; the others swap entries whose float64 scores differ by at most {gap:.1e} "
                 "(relative): float32 rounding in another summation order")  # fmt: skip
    return text


def bench_naive(root: Path, p: dict, folders, shard_wall: float) -> list:
    import pandas as pd

    _, _, lrs, kept = folders
    result = pd.read_parquet(root / "final" / "shard.parquet")
    per_row, naive = naive_tracker(p, kept, lrs)
    total = per_row * p["n_test"]
    return [
        (f"seed's per-test-row Python heap tracker, {p['naive_rows']} test rows measured",
         f"{per_row * 1e3:.1f} ms/row; EXTRAPOLATED to all {p['n_test']:,} rows: {total:,.0f} s "
         f"= {total / shard_wall:.0f}x the shard kernel"),
        ("seed's tracker vs the shard kernel, proponent lists", agreement(result, naive, kept, lrs)),
    ]  # fmt: skip


def bench_precision(folders, rows: int = 256) -> list:
    """bf16 operands and float32 against float64 scores, on ``rows`` test rows x all train rows."""
    test_dirs, train_dirs = folders[0], folders[1]
    test = [f.rows(slice(0, rows)) for f in load_checkpoints(test_dirs)]
    train = load_checkpoints(train_dirs)
    exact = score_block(test, train, device="cpu", dtype=torch.float64)
    k = 100
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    cells = []
    for precision in ("float32", "bf16"):
        t0 = time.perf_counter()
        got = score_block(test, train, device="cpu", precision=precision)
        wall = time.perf_counter() - t0
        # against each test row's largest |score|: single small entries may cancel to anything
        err = float(np.max(np.abs(got - exact) / np.abs(exact).max(axis=1, keepdims=True)))
        top = np.argsort(-got, axis=1, kind="stable")[:, :k]
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top, truth, strict=True)])
        cells.append(f"{precision}: max error {err:.1e} of the row's largest score, top-{k} overlap {overlap:.1%}, "
                     f"{wall:.1f} s")  # fmt: skip
    return [(f"influence.precision vs float64 scores ({rows} test rows x all train, final layer; "
             "CPU bf16 emulates the operand rounding, no speed-up)", "; ".join(cells))]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# extraction on the demo's network


def demo_model():
    torch.manual_seed(0)
    arch = make_arch("efficientnet_lite0", 10, image_size=(64, 64))
    return build_model(arch).eval()


def per_sample_hooks(model, loss_fn, images, labels):
    """The seed's approach: one forward and one full backward per image, hooks on the final layer."""
    store = {}
    layer = model.fc[4]
    h1 = layer.register_forward_hook(lambda _m, args, _o: store.__setitem__("a", args[0].detach()))
    h2 = layer.register_full_backward_hook(
        lambda _m, _gi, go: store.__setitem__("e", go[0].detach())
    )
    errs = []
    try:
        for i in range(len(labels)):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[i : i + 1]), labels[i : i + 1], reduction="mean")
            loss.backward()
            errs.append(store["e"][0])
    finally:
        h1.remove()
        h2.remove()
    return torch.stack(errs)


def rate(fn, n: int, repeat: int = 2) -> float:
    """Images per second of ``fn`` over ``n`` images, best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_extraction(p: dict) -> list:
    model, loss_fn = demo_model(), WeightedSmoothedCrossEntropy(None, 10, 0.1)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(p["images"], 3, 64, 64, generator=g)
    labels = torch.randint(0, 10, (p["images"],), generator=g)
    b, n = p["batch"], p["images"]
    batches = [(images[i : i + b], labels[i : i + b]) for i in range(0, n, b)]

    def bare():
        with torch.inference_mode():
            for x, _ in batches:
                model(x)

    bare()  # warm-up
    held = {}
    r_bare = rate(bare, n)
    r_final = rate(lambda: held.__setitem__("f", extract_factors(model, batches, loss_fn, device="cpu")), n)  # fmt: skip
    head = ("fc.0", "fc.2", "fc.4")
    r_head = rate(lambda: extract_factors(model, batches, loss_fn, layers=head, device="cpu"), n)
    m = p["per_sample"]
    per_sample_hooks(model, loss_fn, images[:2], labels[:2])  # warm-up
    errs = {}
    r_seed = rate(lambda: errs.setdefault("e", per_sample_hooks(model, loss_fn, images[:m], labels[:m])), m, 1)  # fmt: skip
    diff = float(np.abs(errs["e"].numpy() - held["f"].err["fc.4"][:m]).max())
    return [
        (f"bare inference forward, EfficientNet-Lite0 + head, 64 px ({n} images, batch {b})",
         f"{r_bare:,.0f} images/s (the limit)"),
        ("`extract_factors`, fc.4 (closed-form error signal, no backward)",
         f"{r_final:,.0f} images/s = {r_bare / r_final:.2f}x the bare forward's time"),
        ("`extract_factors`, fc.0 + fc.2 + fc.4 (autograd through the head only)",
         f"{r_head:,.0f} images/s = {r_bare / r_head:.2f}x the bare forward's time"),
        (f"seed: per-sample forward + backward with hooks ({m} images)",
         f"{r_seed:,.1f} images/s: `extract_factors` is {r_final / r_seed:,.0f}x faster; "
         f"largest difference of the fc.4 error signal {diff:.1e}"),
    ]  # fmt: skip


def memory_worker(spec_json: str) -> None:
    """Child process: extract ``n`` images in memory or streamed to a folder; prints peak RSS."""
    torch.set_num_threads(THREADS)
    spec = json.loads(spec_json)
    model, loss_fn = demo_model(), WeightedSmoothedCrossEntropy(None, 10, 0.1)
    n, b = spec["n"], 256
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 64, 64, generator=g)

    def loader():  # the same batch again and again: memory of the inputs stays one batch
        for start in range(0, n, b):
            yield x[: min(b, n - start)], torch.zeros(min(b, n - start), dtype=torch.long)

    base = peak_rss_mib()
    t0 = time.perf_counter()
    if spec["mode"] == "memory":
        extract_factors(model, loader(), loss_fn, layers=("fc.0", "fc.2", "fc.4"), device="cpu")
    else:
        extract_to_dir(model, loader(), loss_fn, spec["out"], epoch=1, lr=0.1, num_samples=n,
                       layers=("fc.0", "fc.2", "fc.4"), device="cpu")  # fmt: skip
    wall = time.perf_counter() - t0
    print(json.dumps({"grew_mib": peak_rss_mib() - base, "wall_s": wall}))


def bench_extraction_memory(root: Path, p: dict) -> list:
    n = p["memory_images"]
    factors_mib = n * (1280 + 512 + 512 + 256 + 256 + 10 + 20) * 4 / 2**20
    cells = []
    for mode in ("memory", "folder"):
        got = run_child("--memory-worker", {"n": n, "mode": mode, "out": str(root / "extracted")})
        cells.append(f"{mode}: process grew {got['grew_mib']:,.0f} MiB ({got['wall_s']:.0f} s)")
    return [(f"extraction of {n:,} images, all head layers ({factors_mib:,.0f} MiB of factors): "
             "held in memory vs streamed to a factor folder", "; ".join(cells))]  # fmt: skip


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, about a minute")
    parser.add_argument("--shard-worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard_worker or args.memory_worker:
        worker = shard_worker if args.shard_worker else memory_worker
        worker(args.shard_worker or args.memory_worker)
        return
    torch.set_num_threads(THREADS)
    p = scale(args.quick)
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    rows = [("problem", f"{p['n_train']:,} train x {p['n_test']:,} test, {p['ckpts']} checkpoints, "
                        f"k {p['k']}, float32 factors")]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_influence_") as tmp:
        root = Path(tmp)
        final_rows, folders = bench_kernel(root, p, FINAL, "final", rng)
        rows += final_rows
        wall = float(final_rows[0][1].split(" s")[0])
        rows += bench_naive(root, p, folders, wall)
        rows += bench_precision(folders)
        rows += bench_kernel(root, p, HEAD, "head", rng)[0]
        rows += bench_rss(root, p, rng)
        rows += bench_extraction(p)
        rows += bench_extraction_memory(root, p)
    print(f"\n### bench_influence{' --quick' if args.quick else ''} ({THREADS} CPU threads, torch "
          f"{torch.__version__}, total {time.perf_counter() - t_start:.0f} s)\n")  # fmt: skip
    print("| measurement | result |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
