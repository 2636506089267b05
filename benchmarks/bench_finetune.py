"""Fine-tuning choices on the demo's own data: BatchNorm statistics frozen or trained in stage 2, and
the stage-2 learning-rate schedule. Prints one markdown table of test accuracy after stage 1 and
after every stage-2 epoch, per variant.

Run after `make demo` (it reads the demo's cached split and training settings):

    .venv/bin/python benchmarks/bench_finetune.py             # 3 variants, about 2 min each on 2 cores
    .venv/bin/python benchmarks/bench_finetune.py --epochs 3  # shorter
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from tracinflow.config import deep_merge, pretrained_weights_file
from tracinflow.data.split import class_names_of, split_rows
from tracinflow.io.checkpoints import read_backbone_weights
from tracinflow.io.common import load_cache
from tracinflow.train.trainer import Trainer, evaluate

REPO = Path(__file__).resolve().parents[1]


def demo_data(config: dict):
    data = REPO / "results/data" / config["dataset"]["name"]
    if not (data / "manifest.parquet").exists():
        raise SystemExit(f"{data}/manifest.parquet not found: run `make demo` first")
    manifest = pd.read_parquet(data / "manifest.parquet")
    splits = {}
    for split in ("train", "val", "test"):
        rows = split_rows(manifest, split)
        splits[split] = (
            load_cache(data / f"cache/{split}.npy", mmap=False),
            rows["label"].to_numpy(),
        )
    return splits, len(class_names_of(manifest))


def run(settings: dict, splits, num_classes: int, weights) -> tuple[list[float], float]:
    """Test accuracy after stage 1 and after each stage-2 epoch, and the seconds it took."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        splits[s] for s in ("train", "val", "test")
    )
    device = torch.device("cpu")
    trainer = Trainer(settings, num_classes, x_train, y_train, x_val, y_val, device=device,
                      pretrained_state=weights, log=lambda _line: None)  # fmt: skip
    stage1_epochs = settings["training"]["stage1"]["epochs"]
    accuracies, start = [], time.perf_counter()
    for done in trainer.epochs():
        if done.stage == 2 or done.epoch == stage1_epochs:
            _, accuracy = evaluate(trainer.model, trainer.loss_fn, x_test, y_test, 256, device)
            accuracies.append(accuracy)
    return accuracies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/config.yaml"))
    parser.add_argument("--epochs", type=int, help="stage-2 epochs (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(Path(args.config).read_text())
    splits, num_classes = demo_data(config)
    model = config["model"]
    weights = read_backbone_weights(
        pretrained_weights_file(model["arch"], model["pretrained"]), model["arch"]
    )
    stage2 = dict(config["training"]["stage2"], patience=None)
    if args.epochs:
        stage2.update(max_epochs=args.epochs, checkpoint_epochs=[args.epochs])
    base = {"seed": config.get("seed", 0), "model": model,
            "training": deep_merge(config["training"], {"stage2": stage2, "device": "cpu"})}  # fmt: skip
    demo_schedule = stage2.get("lr_schedule", "constant")
    other = "constant" if demo_schedule == "cosine" else "cosine"
    variants = {
        f"demo settings (BatchNorm frozen, {demo_schedule})": {},
        f"BatchNorm statistics trained ({demo_schedule})": {"train_batchnorm": True},
        f"BatchNorm frozen, {other} schedule": {"lr_schedule": other},
    }
    epochs = stage2["max_epochs"]
    print(
        f"| variant | after stage 1 | {' | '.join(f'epoch {e}' for e in range(1, epochs + 1))} | time |"
    )
    print(f"| --- | ---: | {' | '.join('---:' for _ in range(epochs))} | ---: |")
    for name, change in variants.items():
        settings = deep_merge(base, {"training": {"stage2": change}})
        accuracies, seconds = run(settings, splits, num_classes, weights)
        cells = " | ".join(f"{100 * a:.1f}%" for a in accuracies)
        print(f"| {name} | {cells} | {seconds:.0f} s |", flush=True)
    n_test = len(splits["test"][1])
    print(
        f"\n{n_test} test images (one standard error is about "
        f"{100 * np.sqrt(0.25 / n_test):.1f} points at most); seed {base['seed']}; CPU, 2 threads."
    )


if __name__ == "__main__":
    main()
