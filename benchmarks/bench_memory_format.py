"""The CPU forms of the forward: PyTorch's default (contiguous, NCHW) memory format against
channels_last (NHWC), and bf16 autocast, for the demo's network (EfficientNet-Lite0, 64 px,
batch 64) on this machine's CPU. Prints the CPU model and the instruction-set flags that decide
which kernels oneDNN picks (these machines differ between sessions), then one markdown table:
images/s of a training step (forward, backward, SGD step) and of an inference forward, per form,
the forms interleaved round by round so that a busy neighbour slows each alike; then the inference
forward of the workflow's inference form in channels_last (BatchNorms folded, same-padding in the
kernel: what prediction and factor extraction run); then that inference form by rows per forward
pass at 32, 64 and 224 px: the rows the CPU runs (``forward_rows``, CPU_FORWARD_PIXELS worth of
input pixels), half and twice as many, and the whole batch of 256 (``influence.batch_size``).

    .venv/bin/python benchmarks/bench_memory_format.py            # 5 rounds, about 3 min on 2 cores
    .venv/bin/python benchmarks/bench_memory_format.py --rounds 3 --threads 1

Random weights: speed does not depend on their values, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time

import torch

from tracinflow._util.device import forward_rows, in_memory_format, inference_form
from tracinflow.train.model import build_model, make_arch

#: the workflow's inference form in channels_last (prediction and factor extraction): inference only
INFERENCE_FORM = "channels_last, inference form (BatchNorms folded, same-padding in the kernel)"

#: the flags of /proc/cpuinfo that say which vector units oneDNN may use
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    return f"{model}; flags: {', '.join(present) or 'none of ' + ', '.join(VECTOR_FLAGS)}"


def forms(bf16: bool) -> dict[str, tuple[torch.memory_format, bool]]:
    chosen = {
        "contiguous": (torch.contiguous_format, False),
        "channels_last": (torch.channels_last, False),
    }
    if bf16:
        chosen["channels_last + bf16 autocast"] = (torch.channels_last, True)
    return chosen


def images_per_second(model, x, y, memory_format, bf16: bool, train: bool, steps: int) -> float:
    model = model.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model.train(train)
    start = time.perf_counter()
    for _ in range(steps):
        if train:
            optimizer.zero_grad(set_to_none=True)
            with cast:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), cast:
                model(x)
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-bf16", action="store_true", help="leave bf16 autocast out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(make_arch("efficientnet_lite0", 10, image_size=(args.size, args.size)))
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    chosen = forms(bf16=not args.no_bf16)
    rates = {(name, task): [] for name in chosen for task in ("train", "infer")}
    for memory_format, bf16 in chosen.values():  # warm-up: oneDNN builds its kernels
        for task in ("train", "infer"):
            images_per_second(model, x, y, memory_format, bf16, task == "train", 1)
    # a copy: the forms above keep converting the same model between formats
    folded = inference_form(in_memory_format(copy.deepcopy(model).eval(), "channels_last"))
    rates[INFERENCE_FORM, "infer"] = []
    images_per_second(folded, x, y, torch.channels_last, False, False, 1)
    for _ in range(args.rounds):
        for name, (memory_format, bf16) in chosen.items():
            for task, steps in (("train", 3), ("infer", 6)):
                rates[name, task].append(
                    images_per_second(model, x, y, memory_format, bf16, task == "train", steps)
                )
        rates[INFERENCE_FORM, "infer"].append(
            images_per_second(folded, x, y, torch.channels_last, False, False, 6)
        )
    print(f"CPU: {cpu_description()}")
    print(
        f"torch {torch.__version__}, {args.threads} threads, EfficientNet-Lite0 at {args.size} px, "
        f"batch {args.batch}, {args.rounds} interleaved rounds (median, min-max)\n"
    )
    print(
        "| form | training step, images/s | vs contiguous | inference, images/s | vs contiguous |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    base = {task: statistics.median(rates["contiguous", task]) for task in ("train", "infer")}
    for name in [*chosen, INFERENCE_FORM]:
        cells = []
        for task in ("train", "infer"):
            values = rates.get((name, task))
            if values is None:  # the inference form does not train
                cells += ["", ""]
                continue
            median = statistics.median(values)
            cells += [
                f"{median:.0f} ({min(values):.0f}-{max(values):.0f})",
                f"{median / base[task]:.2f}x",
            ]
        print(f"| {name} | {' | '.join(cells)} |")
    rows_per_forward_table(args.rounds)


def rows_per_forward_table(rounds: int, batch: int = 256) -> None:
    """Images/s of the inference form on one batch of ``batch`` random images, run in forwards of
    ``rows`` rows each, the row counts interleaved round by round."""
    print(
        f"\nThe inference form (channels_last) on a batch of {batch}, by rows per forward pass "
        f"(median images/s of {rounds} interleaved rounds; vs the whole batch at once)\n"
    )
    print("| image size | rows per forward | images/s | vs one forward of the batch |")
    print("| --- | ---: | ---: | ---: |")
    for size in (32, 64, 224):
        torch.manual_seed(0)
        arch = make_arch("efficientnet_lite0", 10, image_size=(size, size))
        model = inference_form(in_memory_format(build_model(arch).eval(), "channels_last"))
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        chosen = forward_rows(x)
        candidates = sorted({max(chosen // 2, 1), chosen, min(2 * chosen, batch), batch})
        rates = {rows: [] for rows in candidates}
        with torch.inference_mode():
            model(x[:chosen])  # warm-up: oneDNN builds its kernels
            for _ in range(rounds):
                for rows in candidates:
                    start = time.perf_counter()
                    for piece in x.split(rows):
                        model(piece)
                    rates[rows].append(batch / (time.perf_counter() - start))
        whole = statistics.median(rates[batch])
        for rows in candidates:
            median = statistics.median(rates[rows])
            mark = " (the CPU's pieces)" if rows == chosen else ""
            print(f"| {size} px | {rows}{mark} | {median:.0f} | {median / whole:.2f}x |")


if __name__ == "__main__":
    main()
