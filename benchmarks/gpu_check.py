"""The GPU path checked and timed in one short run (benchmarks/gpu_check.sh calls it).

    python benchmarks/gpu_check.py                       # on a machine with CUDA, under 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # the same steps at toy sizes (a smoke test)

Prints one markdown table:

* factors: ``extract_factors`` on CUDA against the CPU on the same model and images (the demo's
  EfficientNet-Lite0 + head at 64 px, random init), largest relative difference per array;
* shards: ``topk_influence`` on CUDA (float32, tf32, bf16) against float64 on the CPU: largest
  error relative to each row's largest score, and the share of identical top-k lists (float32);
* training one demo epoch (4,800 images, batch 64, everything trainable, bf16 autocast and
  channels_last as the trainer runs on CUDA); extraction images/s (final layer; all head layers);
* the kernel at Animals-10 scale (26,179 x 5,979, 5 checkpoints, final layer, k 100) and at 10x the
  train rows, per precision, with the GPU's own ``torch.mm`` rate of the same flop count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_influence import FINAL, demo_model, pair_flops, random_factors  # noqa: E402

from tracinflow._util.device import fast_cuda_math  # noqa: E402
from tracinflow.influence.factors import extract_factors  # noqa: E402
from tracinflow.influence.kernel import PRECISIONS, score_block, topk_influence  # noqa: E402
from tracinflow.train.loss import WeightedSmoothedCrossEntropy  # noqa: E402
from tracinflow.train.trainer import train_epoch  # noqa: E402

LOSS = WeightedSmoothedCrossEntropy(None, 10, 0.1)
HEAD = ("fc.0", "fc.2", "fc.4")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def check_factors(device, n: int) -> list:
    model = demo_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 3, 64, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, n, 64)]
    cpu = extract_factors(model, batches, LOSS, layers=HEAD, device="cpu")
    dev = extract_factors(model, batches, LOSS, layers=HEAD, device=device)
    worst = 0.0
    for layer in HEAD:
        for a, b in ((cpu.act[layer], dev.act[layer]), (cpu.err[layer], dev.err[layer])):
            worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
    return [(f"factors on {device} vs CPU ({n} images, fc.0/fc.2/fc.4 act and err)",
             f"largest difference {worst:.1e} of each array's largest value")]  # fmt: skip


def side(n: int, ckpts: int, rng, dims=FINAL):
    out = []
    for c in range(ckpts):
        f = random_factors(n, dims, rng)
        f.meta["lr"] = 0.01 * 0.7**c
        out.append(f)
    return out


def check_shards(device, n_test: int, n_train: int) -> list:
    rng = np.random.default_rng(2)
    test, train = side(n_test, 5, rng), side(n_train, 5, rng)
    exact = score_block(test, train, device="cpu", dtype=torch.float64)
    scale = np.abs(exact).max(axis=1, keepdims=True)
    cells = []
    cpu_top = topk_influence(test, train, 100, device="cpu")
    for precision in PRECISIONS:
        if precision == "tf32" and device.type != "cuda":
            continue
        got = score_block(test, train, device=device, precision=precision)
        err = float(np.max(np.abs(got - exact) / scale))
        top = topk_influence(test, train, 100, device=device, precision=precision)
        same = float((top["train_idx"].to_numpy() == cpu_top["train_idx"].to_numpy()).mean())
        cells.append(f"{precision}: error {err:.1e}, top-100 entries equal to the CPU's {same:.1%}")
    return [(f"shard scores on {device} vs float64 on the CPU ({n_test} x {n_train})",
             "; ".join(cells))]  # fmt: skip


def time_training(device, n: int) -> list:
    model = demo_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = np.random.default_rng(3).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)
    labels = np.random.default_rng(4).integers(0, 10, n)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    augment = {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True}
    loss_fn = LOSS.to(device)

    def epoch():
        with fast_cuda_math(device):
            return train_epoch(model, loss_fn, optimizer, images, labels, 64,
                               torch.Generator().manual_seed(0), augment, device, False)  # fmt: skip

    _, wall = timed(epoch, device)
    return [(f"training one demo epoch on {device} ({n:,} images, batch 64, all trainable)",
             f"{wall:.1f} s = {n / wall:,.0f} images/s")]  # fmt: skip


def time_extraction(device, n: int) -> list:
    model = demo_model()
    x = torch.randn(n, 3, 64, 64)
    y = torch.randint(0, 10, (n,))
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, n, 256)]
    extract_factors(model, batches[:1], LOSS, device=device)  # warm-up
    cells = []
    for name, layers in (("fc.4", ("fc.4",)), ("all head layers", HEAD)):
        _, wall = timed(lambda chosen=layers: extract_factors(model, batches, LOSS, layers=chosen, device=device), device)  # fmt: skip
        cells.append(f"{name}: {n / wall:,.0f} images/s")
    return [(f"extraction on {device} ({n:,} images, batch 256)", "; ".join(cells))]


def gemm_rate(device, m: int, n: int, flops: float) -> float:
    inner = max(1, round(flops / (2 * m * n)))
    a = torch.randn(m, inner, device=device)
    b = torch.randn(n, inner, device=device)
    torch.mm(a, b[:1024].T)
    _, wall = timed(lambda: [torch.mm(a, b[i : i + 16384].T) for i in range(0, n, 16384)], device)
    return 2 * m * n * inner / wall / 1e9


def time_kernel(device, n_test: int, n_train: int, label: str) -> list:
    rng = np.random.default_rng(5)
    test, train = side(n_test, 5, rng), side(n_train, 5, rng)
    flops = n_test * n_train * 5 * pair_flops(FINAL)
    mm = gemm_rate(device, n_test, n_train, flops)
    cells = []
    for precision in PRECISIONS:
        if precision == "tf32" and device.type != "cuda":
            continue
        _, wall = timed(lambda p=precision: topk_influence(test, train, 100, device=device, precision=p), device)  # fmt: skip
        cells.append(f"{precision}: {wall:.2f} s ({flops / wall / 1e9:,.0f} GFLOP/s)")
    return [(f"kernel on {device}, {label} ({n_train:,} x {n_test:,}, 5 checkpoints, final layer, "
             f"k 100; torch.mm of the same flops: {mm:,.0f} GFLOP/s float32)", "; ".join(cells))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes (checks the script runs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu --quick)")
    q = args.quick
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = [("device", f"{name}, torch {torch.__version__}")]
    rows += check_factors(device, 64 if q else 512)
    rows += check_shards(device, *((50, 300) if q else (500, 26_179)))
    rows += time_training(device, 256 if q else 4_800)
    rows += time_extraction(device, 256 if q else 26_179)
    rows += time_kernel(device, *((200, 2_000) if q else (5_979, 26_179)), "Animals-10 scale")
    rows += time_kernel(device, *((200, 20_000) if q else (5_979, 261_790)), "10x the train rows")
    print(f"\n### gpu_check ({time.perf_counter() - t0:.0f} s)\n")
    print("| check | result |\n| --- | --- |")
    for check, result in rows:
        print(f"| {check} | {result} |")


if __name__ == "__main__":
    main()
