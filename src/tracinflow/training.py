"""Two-stage training from the uint8 image cache: head only, then full fine-tuning.

Stage 1 trains the head ``fc`` with the backbone frozen (``requires_grad=False`` and eval-mode
BatchNorm, so every backbone tensor, running statistics included, stays bit-identical). Stage 2
fine-tunes everything with AdamW in two parameter groups (backbone, head), early-stops on the val
loss, but never before the last of ``stage2.checkpoint_epochs``, so every configured checkpoint exists.

Outputs in ``out_dir``: ``epoch_{E:03d}.pt`` at each configured stage-2 epoch, ``best.pt`` (lowest
stage-2 val loss), ``checkpoints.json``, ``history.csv``, ``training_curves.png``. While training,
``train_state.pt`` holds everything needed to resume after a kill (model, optimizer, generator state,
history, early-stopping counters); it is deleted once the run has finished and written its outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tracinflow.config import deep_merge
from tracinflow.io import atomic_path, write_csv, write_json
from tracinflow.loss import WeightedSmoothedCrossEntropy, class_weights_from_labels
from tracinflow.model import (
    autocast,
    backbone_parameters,
    create_model,
    features,
    head_parameters,
    make_arch,
    normalize,
    save_checkpoint,
    to_input,
)
from tracinflow.progress import format_duration

DEFAULT_SETTINGS = {
    "seed": 0,
    "model": {
        "arch": "small_resnet",
        "pretrained": None,
        "head": {"hidden": [512, 256], "negative_slope": 0.01},
        # optional: base width of small_resnet (ignored by the torchvision backbones)
        "width": 16,
    },
    "training": {
        "batch_size": 64,
        "class_weights": True,
        "label_smoothing": 0.1,
        "augment": {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True},
        "stage1": {"epochs": 5, "lr": 1.0e-3, "weight_decay": 0.01},
        "stage2": {
            "max_epochs": 100,
            "lr_backbone": 1.0e-5,
            "lr_head": 2.0e-4,
            "weight_decay": 0.01,
            "patience": 10,
            "checkpoint_epochs": [10, 20, 30, 40, 50],
        },
        "device": "auto",
    },
}

STATE_FILE = "train_state.pt"
HISTORY_COLUMNS = [
    "stage",
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr_head",
    "lr_backbone",
    "seconds",
]


def _print(line: str) -> None:
    print(line, flush=True)


def resolve_settings(settings: dict) -> dict:
    """``settings`` laid over :data:`DEFAULT_SETTINGS`, checked for values training cannot use."""
    s = deep_merge(DEFAULT_SETTINGS, settings or {})
    t = s["training"]
    s1, s2 = t["stage1"], t["stage2"]
    if int(t["batch_size"]) < 1:
        raise ValueError(f"training.batch_size must be >= 1, got {t['batch_size']}")
    if int(s1["epochs"]) < 0:
        raise ValueError(f"training.stage1.epochs must be >= 0, got {s1['epochs']}")
    if int(s2["max_epochs"]) < 1:
        raise ValueError(f"training.stage2.max_epochs must be >= 1, got {s2['max_epochs']}")
    epochs = sorted({int(e) for e in s2["checkpoint_epochs"]})
    if not epochs or epochs[0] < 1 or epochs[-1] > int(s2["max_epochs"]):
        raise ValueError(
            f"training.stage2.checkpoint_epochs must be non-empty and within 1..max_epochs "
            f"({s2['max_epochs']}), got {s2['checkpoint_epochs']}"
        )
    s2["checkpoint_epochs"] = epochs
    lo, hi = (float(v) for v in t["augment"]["crop_scale"])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(
            f"training.augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {[lo, hi]}"
        )
    return s


def select_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training.device is {name!r} but CUDA is not available")
    return device


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        return (
            f"device {device} ({torch.cuda.get_device_name(device)}), precision bf16 autocast, "
            f"channels_last, TF32 matmul/conv"
        )
    return f"device {device}, precision float32, {torch.get_num_threads()} threads"


def as_image_array(images) -> np.ndarray:
    """A path to a ``.npy`` cache is memory-mapped; an array (or memmap) is used as is."""
    if isinstance(images, (str, Path)):
        images = np.load(images, mmap_mode="r")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


# --- batches and augmentation -------------------------------------------------------------------


def load_batch(images: np.ndarray, rows: np.ndarray, pin: bool = False) -> torch.Tensor:
    """Rows of the (memory-mapped) uint8 cache as a (B, H, W, 3) tensor, read in index order."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
    return batch.pin_memory() if pin else batch


def iter_batches(images, labels, order, batch_size: int, pin: bool = False):
    """Yield ``(uint8 images, labels)`` for consecutive chunks of ``order``, the next one read ahead.

    Rows inside a batch are sorted (sequential reads from the memory map); which rows form each batch
    depends on ``order`` alone, so the result is deterministic.
    """
    chunks = [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]

    def load(rows):
        return load_batch(images, rows, pin), torch.from_numpy(np.asarray(labels[rows], np.int64))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield batch


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    crop_scale=(0.8, 1.0),
    horizontal_flip: bool = True,
    ratio=(3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random resized crop + horizontal flip of a uint8 (B, H, W, 3) batch -> float (B, 3, H, W) in [0, 1].

    Per image: area fraction ~ U(crop_scale), aspect ratio log-uniform in ``ratio``, a uniform
    position inside the image, a flip with probability 1/2; then one bilinear resample back to (H, W).
    The parameters come from ``generator`` (on CPU, 4 numbers per image whatever the device), so a
    seed fixes them.
    """
    b, h, w, _ = images.shape
    u = torch.rand(b, 4, generator=generator, dtype=torch.float64)
    scale = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    crop_w = torch.sqrt(scale * aspect * h / w).clamp(max=1.0)  # fraction of the width
    crop_h = torch.sqrt(scale / aspect * w / h).clamp(max=1.0)
    cx = (u[:, 2] * (1 - crop_w) + crop_w / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (u[:, 3] * (1 - crop_h) + crop_h / 2) * 2 - 1
    sign = torch.ones(b, dtype=torch.float64)
    if horizontal_flip:
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = crop_w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = crop_h
    theta[:, 1, 2] = cy
    x = images.permute(0, 3, 1, 2).float() / 255.0
    grid = F.affine_grid(theta.to(x.device, torch.float32), [b, 3, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --- one epoch ----------------------------------------------------------------------------------


def train_epoch(
    model: nn.Module,
    loss_fn: WeightedSmoothedCrossEntropy,
    optimizer: torch.optim.Optimizer,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    augment_settings: dict,
    device: torch.device,
    head_only: bool,
) -> tuple[float, float]:
    """One pass over a fresh permutation of the training rows; returns (mean loss, accuracy).

    ``head_only`` (stage 1): the whole model stays in eval mode and the backbone runs without
    gradients, so its weights and BatchNorm statistics cannot change.
    """
    model.train(not head_only)
    arch = model.arch
    order = torch.randperm(len(labels), generator=generator).numpy()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for batch, y in iter_batches(images, labels, order, batch_size, pin=device.type == "cuda"):
        y = y.to(device, non_blocking=True)
        if augment_settings["enabled"]:
            x = augment(
                batch.to(device, non_blocking=True),
                generator,
                augment_settings["crop_scale"],
                augment_settings["horizontal_flip"],
            )
            x = normalize(x, arch)
        else:
            x = to_input(batch, arch, device)
        with autocast(device):
            if head_only:
                with torch.no_grad():
                    feats = features(model, x)
                logits = model.fc(feats)
            else:
                logits = model(x)
        per_sample = loss_fn(logits.float(), y, reduction="none")
        optimizer.zero_grad(set_to_none=True)
        per_sample.mean().backward()
        optimizer.step()
        total_loss += per_sample.detach().sum()
        correct += (logits.detach().argmax(1) == y).sum()
    n = len(labels)
    return float(total_loss) / n, int(correct) / n


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: WeightedSmoothedCrossEntropy,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float]:
    """Mean per-sample loss and accuracy in eval mode, without augmentation."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    order = np.arange(len(labels))
    for batch, y in iter_batches(images, labels, order, batch_size, pin=device.type == "cuda"):
        y = y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(to_input(batch, model.arch, device))
        total_loss += loss_fn(logits.float(), y, reduction="none").sum()
        correct += (logits.argmax(1) == y).sum()
    n = len(labels)
    return float(total_loss) / n, int(correct) / n


# --- resumable state ----------------------------------------------------------------------------


def _fingerprint(
    settings: dict, num_classes: int, train_images, train_labels, val_images, val_labels
):
    """Identifies a run: a saved state is resumed only by the run that wrote it."""
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps([num_classes, list(train_images.shape), list(val_images.shape)]).encode())
    h.update(np.ascontiguousarray(train_labels, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(val_labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _cpu_state(module_or_optimizer) -> dict:
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_cpu(v) for v in value]
        return value

    return to_cpu(module_or_optimizer.state_dict())


def _save_state(path: Path, fingerprint, model, optimizer, generator, progress) -> None:
    state = {
        "fingerprint": fingerprint,
        "model": _cpu_state(model),
        "optimizer": _cpu_state(optimizer) if optimizer is not None else {},
        "generator": generator.get_state(),
        "progress": progress,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path, fingerprint: str, log) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt state only costs a restart from scratch
        log(f"ignoring unreadable {path.name} ({err}); starting from scratch")
        return None
    if state.get("fingerprint") != fingerprint:
        log(f"ignoring {path.name}: written for other settings or data; starting from scratch")
        return None
    return state


# --- outputs ------------------------------------------------------------------------------------


def _lrs(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(lr_head, lr_backbone) in force now; the backbone's is 0 while it is frozen."""
    by_name = {g.get("name"): float(g["lr"]) for g in optimizer.param_groups}
    return by_name.get("head", 0.0), by_name.get("backbone", 0.0)


def plot_training_curves(history: pd.DataFrame, path) -> None:
    """Loss and accuracy (train and val) against the epoch, stage 1 then stage 2."""
    from matplotlib.figure import Figure

    x = np.arange(1, len(history) + 1)
    n_stage1 = int((history["stage"] == 1).sum())
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in (
        (axes[0], "loss", "Loss (weighted, label-smoothed CE)"),
        (axes[1], "accuracy", "Accuracy"),
    ):
        ax.plot(x, history[f"train_{metric}"], marker=".", label="train")
        ax.plot(x, history[f"val_{metric}"], marker=".", label="val")
        if 0 < n_stage1 < len(history):
            ax.axvline(n_stage1 + 0.5, color="grey", linestyle="--", label="stage 2 starts")
        ax.set_title(title)
        ax.set_xlabel("epoch (stage 1, then stage 2)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _write_history(history: list[dict], out_dir: Path) -> pd.DataFrame:
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    write_csv(out_dir / "history.csv", frame)
    return frame


# --- the two stages -----------------------------------------------------------------------------


def train_model(
    train_images,
    train_labels,
    val_images,
    val_labels,
    num_classes: int,
    settings: dict,
    out_dir,
    *,
    threads: int | None = None,
    log: Callable[[str], None] = _print,
    epoch_callback: Callable[[int, int], None] | None = None,
) -> dict:
    """Train the two stages and write the model folder; returns a summary dict.

    ``train_images``/``val_images``: uint8 (N, H, W, 3) arrays (memory-mapped caches) or ``.npy``
    paths; labels: int arrays in 0..num_classes-1 in the same row order. ``settings`` has the shape
    of :data:`DEFAULT_SETTINGS` (missing keys take those defaults). ``log`` receives one line per
    event. ``epoch_callback(stage, epoch)`` runs after each epoch's state is saved (tests use it to
    simulate a kill). A run finding ``out_dir/train_state.pt`` from the same settings and data
    continues after its last completed epoch, with the same result as an uninterrupted run.
    """
    settings = resolve_settings(settings)
    t_cfg = settings["training"]
    s1, s2 = t_cfg["stage1"], t_cfg["stage2"]
    if threads:
        torch.set_num_threads(int(threads))
    device = select_device(t_cfg["device"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_images, val_images = as_image_array(train_images), as_image_array(val_images)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    for name, imgs, labs in (
        ("train", train_images, train_labels),
        ("val", val_images, val_labels),
    ):
        if len(imgs) != len(labs) or len(labs) == 0:
            raise ValueError(f"{name}: {len(imgs)} images but {len(labs)} labels (need >= 1)")
        if labs.min() < 0 or labs.max() >= num_classes:
            raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}")

    head = settings["model"]["head"]
    arch = make_arch(
        settings["model"]["arch"],
        num_classes,
        hidden=head["hidden"],
        negative_slope=head["negative_slope"],
        image_size=train_images.shape[1:3],
        width=int(settings["model"].get("width", 16)),
        pretrained=settings["model"]["pretrained"],
    )
    weights = class_weights_from_labels(train_labels, num_classes, bool(t_cfg["class_weights"]))
    loss_fn = WeightedSmoothedCrossEntropy(weights, num_classes, float(t_cfg["label_smoothing"]))
    loss_fn = loss_fn.to(device)
    loss_spec = loss_fn.settings()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(settings["seed"]))
        model = create_model(arch)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(int(settings["seed"]))
    batch_size = int(t_cfg["batch_size"])
    aug = {
        "enabled": bool(t_cfg["augment"]["enabled"]),
        "crop_scale": [float(v) for v in t_cfg["augment"]["crop_scale"]],
        "horizontal_flip": bool(t_cfg["augment"]["horizontal_flip"]),
    }

    log(f"training {arch['name']} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    log(_describe_device(device))
    log(
        f"train {len(train_labels)} images, val {len(val_labels)}, {num_classes} classes, image "
        f"{train_images.shape[1]}x{train_images.shape[2]}, batch {batch_size}, seed {settings['seed']}"
    )
    log(
        f"loss: class weights {[round(w, 4) for w in loss_spec['class_weights']]}, label smoothing "
        f"{loss_spec['label_smoothing']}; augmentation {aug}; pretrained {arch['pretrained']}"
    )

    state_path = out_dir / STATE_FILE
    fingerprint = _fingerprint(
        settings, num_classes, train_images, train_labels, val_images, val_labels
    )
    progress = {
        "stage": 1 if int(s1["epochs"]) > 0 else 2,
        "epoch": 0,  # last completed epoch of that stage
        "done": False,
        "history": [],
        "best_val_loss": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "checkpoints": [],
    }
    optimizer_state = None
    state = _load_state(state_path, fingerprint, log)
    if state is not None:
        model.load_state_dict(state["model"])
        generator.set_state(state["generator"])
        progress = state["progress"]
        optimizer_state = state["optimizer"] or None
        log(
            f"resuming from {state_path.name}: stage {progress['stage']}, epoch {progress['epoch']} done"
        )
    history = progress["history"]

    def fields(row: dict) -> dict:
        return {
            "epoch": row["epoch"],
            "stage": row["stage"],
            "lr_head": row["lr_head"],
            "lr_backbone": row["lr_backbone"],
            "train_loss": row["train_loss"],
            "train_accuracy": row["train_accuracy"],
            "val_loss": row["val_loss"],
            "val_accuracy": row["val_accuracy"],
            "seed": int(settings["seed"]),
            "loss": loss_spec,
        }

    def run_epoch(stage, epoch, total, optimizer):
        lr_head, lr_backbone = _lrs(optimizer)
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model,
            loss_fn,
            optimizer,
            train_images,
            train_labels,
            batch_size,
            generator,
            aug,
            device,
            head_only=stage == 1,
        )
        val_loss, val_acc = evaluate(model, loss_fn, val_images, val_labels, batch_size, device)
        row = {
            "stage": stage,
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr_head": lr_head,
            "lr_backbone": lr_backbone,
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        done = [r["seconds"] for r in history if r["stage"] == stage]
        eta = (total - epoch) * sum(done) / len(done)
        log(
            f"stage {stage} epoch {epoch}/{total}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.1f}s | "
            f"ETA {'<= ' if stage == 2 else ''}{format_duration(eta)}"
        )
        return row

    # Stage 1: the head alone on the frozen backbone.
    if progress["stage"] == 1:
        for p in backbone_parameters(model):
            p.requires_grad_(False)
        optimizer = torch.optim.AdamW(
            [{"params": head_parameters(model), "lr": float(s1["lr"]), "name": "head"}],
            weight_decay=float(s1["weight_decay"]),
        )
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        total = int(s1["epochs"])
        for epoch in range(progress["epoch"] + 1, total + 1):
            run_epoch(1, epoch, total, optimizer)
            _write_history(history, out_dir)
            progress["epoch"] = epoch
            if epoch == total:
                progress.update(stage=2, epoch=0)
            # after the last stage-1 epoch, stage 2 starts with a fresh optimizer
            stage_optimizer = optimizer if progress["stage"] == 1 else None
            _save_state(state_path, fingerprint, model, stage_optimizer, generator, progress)
            if epoch_callback is not None:
                epoch_callback(1, epoch)
        rows = [r for r in history if r["stage"] == 1]
        log(
            f"stage 1 done: {len(rows)} epochs in {format_duration(sum(r['seconds'] for r in rows))}, "
            f"val loss {rows[-1]['val_loss']:.4f} acc {rows[-1]['val_accuracy']:.4f}"
        )
        optimizer_state = None

    # Stage 2: everything, two learning rates, early stopping after the last checkpoint epoch.
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [
            {
                "params": backbone_parameters(model),
                "lr": float(s2["lr_backbone"]),
                "name": "backbone",
            },
            {"params": head_parameters(model), "lr": float(s2["lr_head"]), "name": "head"},
        ],
        weight_decay=float(s2["weight_decay"]),
    )
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    total = int(s2["max_epochs"])
    checkpoint_epochs = s2["checkpoint_epochs"]
    patience = s2["patience"]
    while not progress["done"]:
        epoch = progress["epoch"] + 1
        row = run_epoch(2, epoch, total, optimizer)
        if row["val_loss"] < progress["best_val_loss"]:
            progress.update(best_val_loss=row["val_loss"], best_epoch=epoch, bad_epochs=0)
            save_checkpoint(out_dir / "best.pt", model, arch, **fields(row))
        else:
            progress["bad_epochs"] += 1
        if epoch in checkpoint_epochs:
            name = f"epoch_{epoch:03d}.pt"
            save_checkpoint(out_dir / name, model, arch, **fields(row))
            progress["checkpoints"] = [c for c in progress["checkpoints"] if c["epoch"] != epoch]
            progress["checkpoints"].append(
                {
                    "epoch": epoch,
                    "file": name,
                    "lr_head": row["lr_head"],
                    "lr_backbone": row["lr_backbone"],
                    "val_loss": row["val_loss"],
                }
            )
        _write_history(history, out_dir)
        stopped_early = bool(
            patience is not None
            and progress["bad_epochs"] >= int(patience)
            and epoch >= checkpoint_epochs[-1]
            and epoch < total
        )
        progress["epoch"] = epoch
        progress["done"] = stopped_early or epoch >= total
        _save_state(state_path, fingerprint, model, optimizer, generator, progress)
        if epoch_callback is not None:
            epoch_callback(2, epoch)
        if stopped_early:
            log(
                f"early stopping after stage-2 epoch {epoch}: val loss has not improved for "
                f"{progress['bad_epochs']} epochs (patience {patience})"
            )

    rows = [r for r in history if r["stage"] == 2]
    write_json(out_dir / "checkpoints.json", progress["checkpoints"])
    frame = _write_history(history, out_dir)
    plot_training_curves(frame, out_dir / "training_curves.png")
    log(
        f"stage 2 done: {len(rows)} of {total} epochs in {format_duration(sum(r['seconds'] for r in rows))}; "
        f"best epoch {progress['best_epoch']} (val loss {progress['best_val_loss']:.4f}); "
        f"checkpoints {[c['epoch'] for c in progress['checkpoints']]}"
    )
    state_path.unlink(missing_ok=True)
    return {
        "arch": arch,
        "loss": loss_spec,
        "epochs_stage1": len(history) - len(rows),
        "epochs_stage2": len(rows),
        "stopped_early": bool(rows and rows[-1]["epoch"] < total),
        "best_epoch": progress["best_epoch"],
        "best_val_loss": progress["best_val_loss"],
        "checkpoints": progress["checkpoints"],
    }
