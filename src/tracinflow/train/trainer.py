"""Two-stage training from the uint8 image cache: head only, then full fine-tuning.

Stage 1 trains the head ``fc`` with the backbone frozen (``requires_grad=False`` and eval-mode
BatchNorm, so every backbone tensor, running statistics included, stays bit-identical). A frozen
backbone's features do not change, so by default (``stage1.cache_features``) they are computed once
per image, without augmentation, and the head trains on them: one backbone forward per image instead
of one per epoch. Stage 2 fine-tunes everything with AdamW in two parameter groups (backbone, head),
with BatchNorm's running statistics frozen unless ``stage2.train_batchnorm`` (a pretrained network's
statistics drift away from the batch statistics it would train with, and frozen ones keep the
trained function the one factor extraction evaluates, in eval mode); it early-stops on the val loss,
but never before the last of ``stage2.checkpoint_epochs``, so every configured checkpoint exists.

:class:`Trainer` holds no file: :meth:`Trainer.epochs` yields after every epoch, saying whether the
epoch is the best so far and whether it is a TracIn checkpoint, and :meth:`Trainer.state` is what a
killed run needs to resume. :func:`tracinflow.io.training.fit` (the ``train_model`` stage's and
the k-fold trainings') writes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from tracinflow._util.device import (
    DEFAULT_MEMORY_FORMAT,
    MEMORY_FORMAT_SETTINGS,
    describe_device,
    fast_cuda_math,
    in_memory_format,
    in_pieces,
    inference_form,
)
from tracinflow._util.progress import Progress, format_duration
from tracinflow.config import deep_merge
from tracinflow.train.augment import augment
from tracinflow.train.batches import as_image_array, batch_rows, iter_batches
from tracinflow.train.loss import WeightedSmoothedCrossEntropy, class_weights_from_labels
from tracinflow.train.model import (
    autocast,
    backbone_parameters,
    checkpoint_dict,
    cpu_state,
    create_model,
    features,
    head_parameters,
    make_arch,
    normalize,
    to_input,
)

# The schema's defaults (workflow/schemas/config.schema.yaml) of seed, model and training, for
# callers that give no config (the Python API); tests/test_config.py checks they are equal.
DEFAULT_SETTINGS = {
    "seed": 0,
    "model": {
        "arch": "efficientnet_lite0",
        "pretrained": "imagenet",
        "head": {"hidden": [512, 256], "negative_slope": 0.01},
        # optional: base width of small_resnet (ignored by the torchvision backbones)
        "width": 16,
    },
    "training": {
        "batch_size": 64,
        "class_weights": True,
        "label_smoothing": 0.1,
        "augment": {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True},
        "stage1": {
            "epochs": 5,
            "lr": 1.0e-3,
            "weight_decay": 0.01,
            "cache_features": True,
            "checkpoint_epochs": [],
        },
        "stage2": {
            "max_epochs": 100,
            "lr_backbone": 1.0e-5,
            "lr_head": 2.0e-4,
            "weight_decay": 0.01,
            "patience": 10,
            "checkpoint_epochs": [10, 20, 30, 40, 50],
            "train_batchnorm": False,
            "lr_schedule": "constant",
        },
        "device": "auto",
        "memory_format": DEFAULT_MEMORY_FORMAT,
    },
}

# What a checkpoint records of its epoch's history row, in this order.
CHECKPOINT_ROW_FIELDS = (
    "epoch", "stage", "lr_head", "lr_backbone", "train_loss", "train_accuracy", "val_loss",
    "val_accuracy",
)  # fmt: skip
#: trajectory.parquet: every training image's loss, label margin and correctness per epoch
TRAJECTORY_COLUMNS = ["train_idx", "stage", "epoch", "loss", "margin", "correct"]
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


def resolve_settings(settings: dict) -> dict:
    """``settings`` laid over :data:`DEFAULT_SETTINGS`, checked for values training cannot use."""
    s = deep_merge(DEFAULT_SETTINGS, settings or {})
    t = s["training"]
    s1, s2 = t["stage1"], t["stage2"]
    if t["memory_format"] not in MEMORY_FORMAT_SETTINGS:
        raise ValueError(
            f"training.memory_format must be one of {', '.join(MEMORY_FORMAT_SETTINGS)}, got "
            f"{t['memory_format']!r}"
        )
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
    stage1_epochs = sorted({int(e) for e in s1.get("checkpoint_epochs") or []})
    if stage1_epochs and (stage1_epochs[0] < 1 or stage1_epochs[-1] > int(s1["epochs"])):
        raise ValueError(
            f"training.stage1.checkpoint_epochs must be within 1..epochs ({s1['epochs']}), got "
            f"{s1['checkpoint_epochs']}"
        )
    s1["checkpoint_epochs"] = stage1_epochs
    lo, hi = (float(v) for v in t["augment"]["crop_scale"])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(
            f"training.augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {[lo, hi]}"
        )
    return s


# --- one epoch ----------------------------------------------------------------------------------


def _logits(model: nn.Module, x: torch.Tensor, head_only: bool) -> torch.Tensor:
    if not head_only:
        return model(x)
    with torch.no_grad():
        feats = features(model, x)
    return model.fc(feats)


LR_SCHEDULES = ("constant", "cosine")


def lr_scale(schedule: str, epoch: int, max_epochs: int) -> float:
    """The factor on stage 2's learning rates during ``epoch`` (1-based): 1 for ``constant``; for
    ``cosine``, half a cosine from 1 at the first epoch towards 0 after ``max_epochs``. One value per
    epoch, so each checkpoint has one learning rate in force (TracIn's eta_i)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max_epochs))
    raise ValueError(f"training.stage2.lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def set_train_mode(model: nn.Module, head_only: bool, train_batchnorm: bool) -> None:
    """Stage 1 (``head_only``): everything in eval mode. Stage 2: train mode, but BatchNorm layers
    in eval mode (frozen running statistics, weights still trained) unless ``train_batchnorm``."""
    model.train(not head_only)
    if not head_only and not train_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class NonFiniteLoss(FloatingPointError):
    """A batch's loss is NaN or infinite: training stops before the optimizer step."""


def update(loss_fn, optimizer, logits: torch.Tensor, y: torch.Tensor, batch: tuple[int, int]):
    """One optimizer step on the batch's mean loss; returns the batch's per-sample losses (a
    detached float32 tensor on the device, computed before the step). A NaN or infinite loss raises
    :class:`NonFiniteLoss` naming ``batch`` (number, count) before the step, so no weight is
    changed by it."""
    per_sample = loss_fn(logits.float(), y, reduction="none")
    if not bool(torch.isfinite(per_sample).all()):
        kind = "NaN" if bool(torch.isnan(per_sample).any()) else "infinite"
        raise NonFiniteLoss(f"the loss of batch {batch[0]} of {batch[1]} is {kind}")
    optimizer.zero_grad(set_to_none=True)
    per_sample.mean().backward()
    optimizer.step()
    return per_sample.detach()


def label_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin of each row's given label, ``z_y - max_{k != y} z_k`` (Pleiss et al. 2020's
    margin, whose mean over the epochs is the area under the margin): negative when the network
    prefers another class. float32, detached."""
    z = logits.detach().float()
    assigned = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return assigned - others


class EpochTrajectory:
    """Every training image's loss, label margin and correctness in one epoch, as training saw it:
    filled batch by batch from the logits and per-sample losses the optimizer step computes anyway
    (no extra forward pass), before that batch's step. In stage 2 these come from the augmented
    forward in training mode. Rows are the training set's rows (positions)."""

    def __init__(self, n: int, device: torch.device):
        self.loss = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
        self.margin = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
        self.correct = torch.zeros(n, dtype=torch.bool, device=device)

    def record(self, rows, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        rows = torch.as_tensor(rows, device=self.loss.device)
        self.loss[rows] = loss.float()
        self.margin[rows] = label_margin(logits, y)
        self.correct[rows] = logits.detach().argmax(1) == y

    def totals(self) -> tuple[float, float]:
        """(mean loss, accuracy) of the epoch."""
        return float(self.loss.double().mean()), float(self.correct.double().mean())

    def as_cpu(self) -> dict[str, torch.Tensor]:
        """The epoch's three tensors on the CPU (what the resume state keeps)."""
        if bool(torch.isnan(self.loss).any()):
            raise RuntimeError("an epoch ended with training images it never saw")
        return {"loss": self.loss.cpu(), "margin": self.margin.cpu(), "correct": self.correct.cpu()}


@torch.no_grad()  # not inference mode: the head trains on these tensors
def frozen_features(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The eval-mode backbone's pooled features of every image, float32 (N, d) on ``device``;
    ``progress`` counts the images."""
    model.eval()
    rows = np.arange(len(images))
    chunks = []
    for batch, _ in iter_batches(images, rows, rows, batch_size, pin=device.type == "cuda"):
        with autocast(device):
            inputs = to_input(batch, model.arch, device)
            chunks.append(in_pieces(lambda x: features(model, x), inputs).float())
        if progress is not None:
            progress.update(len(batch))
    return torch.cat(chunks)


def arch_from_settings(settings: dict, num_classes: int, image_size) -> dict:
    """The network description (:func:`~tracinflow.train.model.make_arch`) of a version's
    ``model`` settings for images of ``image_size`` (H, W)."""
    model = resolve_settings(settings)["model"]
    return make_arch(
        model["arch"],
        num_classes,
        hidden=model["head"]["hidden"],
        negative_slope=model["head"]["negative_slope"],
        image_size=image_size,
        width=int(model.get("width", 16)),
        pretrained=model["pretrained"],
    )


def pretrained_features(
    settings: dict,
    num_classes: int,
    images,
    pretrained_state: dict,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> np.ndarray:
    """The frozen pretrained backbone's pooled features (N, d) of ``images``, normalised as the
    version's model would see them, computed by its inference form (:func:`inference_form`:
    BatchNorms folded in channels_last, as prediction runs); float32 on the CPU."""
    images = as_image_array(images)
    arch = arch_from_settings(settings, num_classes, images.shape[1:3])
    training = resolve_settings(settings)["training"]
    model = in_memory_format(
        create_model(arch, pretrained_state).to(device), training["memory_format"]
    )
    model = inference_form(model.eval())
    batch_size = int(training["batch_size"])
    progress = Progress(len(images), "pretrained features", "images", log)
    return frozen_features(model, images, batch_size, device, progress).cpu().numpy()


def train_head_epoch(
    head: nn.Module,
    loss_fn: WeightedSmoothedCrossEntropy,
    optimizer: torch.optim.Optimizer,
    feats: torch.Tensor,
    labels: np.ndarray,
    batch_size: int,
    generator: torch.Generator,
    trajectory: EpochTrajectory | None = None,
) -> tuple[float, float]:
    """:func:`train_epoch` of stage 1 on the frozen backbone's stored features: the same
    permutation, the same batches, the same updates, without running the backbone."""
    order = torch.randperm(len(labels), generator=generator).numpy()
    targets = torch.tensor(
        labels, dtype=torch.int64, device=feats.device
    )  # a copy: labels may be read-only
    trajectory = trajectory or EpochTrajectory(len(labels), feats.device)
    batches = batch_rows(order, batch_size)
    for number, rows in enumerate(batches, start=1):
        rows = torch.from_numpy(rows).to(feats.device)
        batch = (number, len(batches))
        logits = head(feats[rows])
        loss = update(loss_fn, optimizer, logits, targets[rows], batch)
        trajectory.record(rows, logits, targets[rows], loss)
    return trajectory.totals()


@torch.inference_mode()
def evaluate_head(
    head: nn.Module, loss_fn: WeightedSmoothedCrossEntropy, feats: torch.Tensor, labels
) -> tuple[float, float]:
    """:func:`evaluate` on stored features of the frozen backbone."""
    y = torch.tensor(labels, dtype=torch.int64, device=feats.device)
    logits = head(feats).float()
    loss = loss_fn(logits, y, reduction="none").to(torch.float64).sum()
    return float(loss) / len(y), int((logits.argmax(1) == y).sum()) / len(y)


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
    train_batchnorm: bool = False,
    progress: Progress | None = None,
    trajectory: EpochTrajectory | None = None,
) -> tuple[float, float]:
    """One pass over a fresh permutation of the training rows; returns (mean loss, accuracy).
    ``progress`` counts the images (a long epoch reports how far it is); ``trajectory``, when
    given, receives every image's loss, margin and correctness.

    ``head_only`` (stage 1): the whole model stays in eval mode and the backbone runs without
    gradients, so its weights and BatchNorm statistics cannot change. Otherwise BatchNorm's running
    statistics stay frozen unless ``train_batchnorm`` (see :func:`set_train_mode`).
    """
    set_train_mode(model, head_only, train_batchnorm)
    arch = model.arch
    order = torch.randperm(len(labels), generator=generator).numpy()
    trajectory = trajectory or EpochTrajectory(len(labels), device)
    chunks = batch_rows(order, batch_size)
    batches = iter_batches(images, labels, order, batch_size, pin=device.type == "cuda")
    for number, (rows, (batch, y)) in enumerate(zip(chunks, batches, strict=True), start=1):
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
            logits = _logits(model, x, head_only)
        loss = update(loss_fn, optimizer, logits, y, (number, len(chunks)))
        trajectory.record(torch.from_numpy(rows), logits, y, loss)
        if progress is not None:
            progress.update(len(y))
    return trajectory.totals()


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
            logits = in_pieces(model, to_input(batch, model.arch, device))
        total_loss += loss_fn(logits.float(), y, reduction="none").sum()
        correct += (logits.argmax(1) == y).sum()
    n = len(labels)
    return float(total_loss) / n, int(correct) / n


# --- the run's state ----------------------------------------------------------------------------


@dataclass
class TrainingProgress:
    """Where a run is: the stage and its last completed epoch, the history rows, early stopping's
    counters and the checkpoints taken. Plain values, so a resume state loads with
    ``weights_only=True``."""

    stage: int
    epoch: int = 0
    done: bool = False
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    checkpoints: list[dict] = field(default_factory=list)
    #: per finished epoch: stage, epoch and the :meth:`EpochTrajectory.as_cpu` tensors
    trajectory: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class EpochDone:
    """One finished epoch: its history row; in stage 2 whether it has the best val loss so far (the
    best model); whether it is one of the checkpoint epochs (stage 2's, or stage 1's with
    ``stage1.checkpoint_epochs``)."""

    stage: int
    epoch: int
    row: dict
    improved: bool = False
    checkpoint: bool = False


def _check_split(name: str, images, labels, num_classes: int) -> None:
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels (need >= 1)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}")


# --- the two stages -----------------------------------------------------------------------------


class Trainer:
    """Two-stage training of one network on memory-mapped image arrays, resumable after a kill.

    ``train_images``/``val_images``: uint8 (N, H, W, 3) arrays; labels: int arrays in
    0..num_classes-1 in the same row order. ``settings`` has the shape of :data:`DEFAULT_SETTINGS`
    (missing keys take those defaults). ``pretrained_state``: the backbone's state dict when
    ``model.pretrained`` names a weights file. ``log`` receives one line per event.
    """

    def __init__(
        self,
        settings: dict,
        num_classes: int,
        train_images,
        train_labels,
        val_images,
        val_labels,
        *,
        device: torch.device,
        pretrained_state: dict | None = None,
        log: Callable[[str], None] = print,
    ):
        self.settings = resolve_settings(settings)
        self.device, self.log = device, log
        self.train_images, self.val_images = (
            as_image_array(train_images),
            as_image_array(val_images),
        )
        self.train_labels = np.asarray(train_labels, dtype=np.int64)
        self.val_labels = np.asarray(val_labels, dtype=np.int64)
        _check_split("train", self.train_images, self.train_labels, num_classes)
        _check_split("val", self.val_images, self.val_labels, num_classes)
        self.num_classes = num_classes
        self.arch = self._arch()
        t_cfg = self.settings["training"]
        weights = class_weights_from_labels(
            self.train_labels, num_classes, bool(t_cfg["class_weights"])
        )
        self.loss_fn = WeightedSmoothedCrossEntropy(
            weights, num_classes, float(t_cfg["label_smoothing"])
        ).to(device)
        self.loss_spec = self.loss_fn.settings()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.settings["seed"]))
            model = create_model(self.arch, pretrained_state)
        self.model = in_memory_format(model.to(device), t_cfg["memory_format"])
        self.generator = torch.Generator().manual_seed(int(self.settings["seed"]))
        self.batch_size = int(t_cfg["batch_size"])
        self.augment = {
            "enabled": bool(t_cfg["augment"]["enabled"]),
            "crop_scale": [float(v) for v in t_cfg["augment"]["crop_scale"]],
            "horizontal_flip": bool(t_cfg["augment"]["horizontal_flip"]),
        }
        stage1_epochs = int(t_cfg["stage1"]["epochs"])
        self.progress = TrainingProgress(stage=1 if stage1_epochs > 0 else 2)
        self._optimizer_state = None  # the optimizer of a resumed stage
        self._saved_optimizer = None  # the optimizer the resume state holds now
        self._describe()

    def _arch(self) -> dict:
        return arch_from_settings(self.settings, self.num_classes, self.train_images.shape[1:3])

    def _describe(self) -> None:
        arch, spec = self.arch, self.loss_spec
        parameters = sum(p.numel() for p in self.model.parameters())
        self.log(f"training {arch['name']} ({parameters:,} parameters)")
        self.log(
            describe_device(self.device, fast_cuda=True, memory_format=self.model.memory_format)
        )
        self.log(
            f"train {len(self.train_labels)} images, val {len(self.val_labels)}, "
            f"{self.num_classes} classes, image {self.train_images.shape[1]}x"
            f"{self.train_images.shape[2]}, batch {self.batch_size}, seed {self.settings['seed']}"
        )
        self.log(
            f"loss: class weights {[round(w, 4) for w in spec['class_weights']]}, label smoothing "
            f"{spec['label_smoothing']}; augmentation {self.augment}; pretrained {arch['pretrained']}"
        )

    # --- resuming

    @property
    def fingerprint(self) -> str:
        """Identifies a run: a saved state is resumed only by the run that wrote it."""
        h = hashlib.sha256()
        h.update(json.dumps(self.settings, sort_keys=True).encode())
        shapes = [self.num_classes, list(self.train_images.shape), list(self.val_images.shape)]
        h.update(json.dumps(shapes).encode())
        h.update(np.ascontiguousarray(self.train_labels, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.val_labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def state(self) -> dict:
        """Everything a killed run needs to continue after the last finished epoch."""
        optimizer = self._saved_optimizer
        return {
            "fingerprint": self.fingerprint,
            "model": cpu_state(self.model),
            "optimizer": cpu_state(optimizer) if optimizer is not None else {},
            "generator": self.generator.get_state(),
            "progress": asdict(self.progress),
        }

    def resume(self, state: dict | None, source: str = "the resume state") -> bool:
        """Continue from ``state`` (:meth:`state` of an earlier run) when it was written by this
        run's settings and data; otherwise start from scratch. Returns whether it resumed."""
        if state is None:
            return False
        if state.get("fingerprint") != self.fingerprint:
            self.log(
                f"ignoring {source}: written for other settings or data; starting from scratch"
            )
            return False
        self.model.load_state_dict(state["model"])
        self.generator.set_state(state["generator"])
        self.progress = TrainingProgress(**state["progress"])
        self._optimizer_state = state["optimizer"] or None
        self.log(
            f"resuming from {source}: stage {self.progress.stage}, epoch {self.progress.epoch} done"
        )
        return True

    # --- epochs

    def _optimizer(self, groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
        optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
        if self._optimizer_state is not None:
            optimizer.load_state_dict(self._optimizer_state)
            self._optimizer_state = None
        return optimizer

    def _train_and_validate(self, stage: int, epoch: int, optimizer, frozen) -> tuple[float, ...]:
        """One epoch's (train loss, train accuracy, val loss, val accuracy), or
        :class:`NonFiniteLoss` naming the stage, epoch and batch."""
        try:
            return self._epoch_numbers(stage, epoch, optimizer, frozen)
        except NonFiniteLoss as err:
            group = "stage1.lr" if stage == 1 else "stage2.lr_head / stage2.lr_backbone"
            raise NonFiniteLoss(
                f"training stopped in stage {stage}, epoch {epoch}: {err}. Lower the learning "
                f"rate (training.{group}) or look for broken images; the state after the last "
                f"completed epoch is kept, so a rerun resumes from it"
            ) from None

    def _epoch_numbers(self, stage: int, epoch: int, optimizer, frozen) -> tuple[float, ...]:
        """:meth:`_train_and_validate`'s work; in stage 1 on the ``frozen`` backbone's stored
        (train, val) features when it has them. Every training image's loss, margin and
        correctness go to the run's trajectory."""
        trajectory = EpochTrajectory(len(self.train_labels), self.device)
        if frozen is not None:
            head = self.model.fc
            train = train_head_epoch(
                head, self.loss_fn, optimizer, frozen[0], self.train_labels, self.batch_size,
                self.generator, trajectory,
            )  # fmt: skip
            val = evaluate_head(head, self.loss_fn, frozen[1], self.val_labels)
        else:
            # within an epoch, a line a minute: long epochs (a large dataset, a CPU) show how far
            images = Progress(len(self.train_labels), f"stage {stage} epoch {epoch}", "images",
                              self.log, every=60, final=False)  # fmt: skip
            train = train_epoch(
                self.model, self.loss_fn, optimizer, self.train_images, self.train_labels,
                self.batch_size, self.generator, self.augment, self.device, head_only=stage == 1,
                train_batchnorm=bool(self.settings["training"]["stage2"]["train_batchnorm"]),
                progress=images, trajectory=trajectory,
            )  # fmt: skip
            val = evaluate(
                self.model, self.loss_fn, self.val_images, self.val_labels, self.batch_size,
                self.device,
            )  # fmt: skip
        # a resumed run's progress holds the epochs before this one only: no entry to replace
        self.progress.trajectory.append({"stage": stage, "epoch": epoch} | trajectory.as_cpu())
        return *train, *val

    def _run_epoch(self, stage: int, epoch: int, optimizer, progress: Progress, frozen=None):
        by_name = {g.get("name"): float(g["lr"]) for g in optimizer.param_groups}
        # the backbone's learning rate is 0 while it is frozen
        lr_head, lr_backbone = by_name.get("head", 0.0), by_name.get("backbone", 0.0)
        start = time.perf_counter()
        train_loss, train_acc, val_loss, val_acc = self._train_and_validate(
            stage, epoch, optimizer, frozen
        )
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
        self.progress.history.append(row)
        rate = len(self.train_labels) / row["seconds"]
        progress.update(
            1,
            f"stage {stage} epoch {epoch}/{progress.total}: train loss {train_loss:.4f} acc "
            f"{train_acc:.4f} | val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.1f}s,"
            f" {rate:.0f} images/s",
        )
        return row

    def _stage1(self) -> Iterator[EpochDone]:
        """The head alone on the frozen backbone."""
        s1 = self.settings["training"]["stage1"]
        for p in backbone_parameters(self.model):
            p.requires_grad_(False)
        optimizer = self._optimizer(
            [{"params": head_parameters(self.model), "lr": float(s1["lr"]), "name": "head"}],
            float(s1["weight_decay"]),
        )
        total, done = int(s1["epochs"]), self.progress.epoch
        frozen = self._frozen_features() if s1["cache_features"] and done < total else None
        progress = Progress(total, "stage 1", "epochs", self.log, every=0, start=done)
        for epoch in range(done + 1, total + 1):
            row = self._run_epoch(1, epoch, optimizer, progress, frozen)
            self.progress.epoch = epoch
            if epoch == total:
                self.progress.stage, self.progress.epoch = 2, 0
            # after the last stage-1 epoch, stage 2 starts with a fresh optimizer
            self._saved_optimizer = optimizer if self.progress.stage == 1 else None
            checkpoint = epoch in s1["checkpoint_epochs"]
            if checkpoint:
                self._record_checkpoint(row)
            yield EpochDone(1, epoch, row, checkpoint=checkpoint)
        rows = [r for r in self.progress.history if r["stage"] == 1]
        self.log(
            f"stage 1 done: {len(rows)} epochs in {format_duration(sum(r['seconds'] for r in rows))}"
            f", val loss {rows[-1]['val_loss']:.4f} acc {rows[-1]['val_accuracy']:.4f}"
        )
        self._optimizer_state = None

    def _frozen_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's features of the train and val images, once for all of stage 1."""
        start = time.perf_counter()
        count = len(self.train_labels) + len(self.val_labels)
        # the summary below is the last line: the reporter adds none at the end
        progress = Progress(
            count, "stage 1: frozen-backbone features", "images", self.log, final=False
        )
        frozen = tuple(
            frozen_features(self.model, images, self.batch_size, self.device, progress)
            for images in (self.train_images, self.val_images)
        )
        seconds = time.perf_counter() - start
        self.log(
            f"stage 1: frozen-backbone features of {count} images in {format_duration(seconds)} "
            f"({count / max(seconds, 1e-9):.0f} images/s); the head trains on them, unaugmented"
        )
        return frozen

    def _stage2(self) -> Iterator[EpochDone]:
        """Everything, two learning rates, early stopping after the last checkpoint epoch."""
        s2 = self.settings["training"]["stage2"]
        for p in self.model.parameters():
            p.requires_grad_(True)
        optimizer = self._optimizer(
            [
                {
                    "params": backbone_parameters(self.model),
                    "lr": float(s2["lr_backbone"]),
                    "name": "backbone",
                },
                {"params": head_parameters(self.model), "lr": float(s2["lr_head"]), "name": "head"},
            ],
            float(s2["weight_decay"]),
        )
        self._saved_optimizer = optimizer
        total, state = int(s2["max_epochs"]), self.progress
        progress = Progress(total, "stage 2", "epochs", self.log, every=0, start=state.epoch)
        progress.bounded = s2["patience"] is not None
        while not state.done:
            epoch = state.epoch + 1
            scale = lr_scale(s2["lr_schedule"], epoch, total)
            for group in optimizer.param_groups:
                group["lr"] = scale * float(s2[f"lr_{group['name']}"])
            row = self._run_epoch(2, epoch, optimizer, progress)
            improved = row["val_loss"] < state.best_val_loss
            if improved:
                state.best_val_loss, state.best_epoch, state.bad_epochs = row["val_loss"], epoch, 0
            else:
                state.bad_epochs += 1
            checkpoint = epoch in s2["checkpoint_epochs"]
            if checkpoint:
                self._record_checkpoint(row)
            stopped_early = self._stops_early(epoch)
            state.epoch, state.done = epoch, stopped_early or epoch >= total
            yield EpochDone(2, epoch, row, improved=improved, checkpoint=checkpoint)
            if stopped_early:
                self.log(
                    f"early stopping after stage-2 epoch {epoch}: val loss has not improved for "
                    f"{state.bad_epochs} epochs (patience {s2['patience']})"
                )

    def _record_checkpoint(self, row: dict) -> None:
        """List the epoch's checkpoint (once, were the epoch run again after a resume)."""
        key = (row["stage"], row["epoch"])
        self.progress.checkpoints = [
            c for c in self.progress.checkpoints if (c.get("stage", 2), c["epoch"]) != key
        ] + [{k: row[k] for k in ("stage", "epoch", "lr_head", "lr_backbone", "val_loss")}]

    def _stops_early(self, epoch: int) -> bool:
        s2 = self.settings["training"]["stage2"]
        patience = s2["patience"]
        return bool(
            patience is not None
            and self.progress.bad_epochs >= int(patience)
            and epoch >= s2["checkpoint_epochs"][-1]
            and epoch < int(s2["max_epochs"])
        )

    def epochs(self) -> Iterator[EpochDone]:
        """Train what is left of both stages, yielding after every epoch (the caller saves the best
        model, the checkpoints, the history and :meth:`state` there)."""
        with fast_cuda_math(self.device):
            if self.progress.stage == 1:
                yield from self._stage1()
            yield from self._stage2()
        rows = [r for r in self.progress.history if r["stage"] == 2]
        total = int(self.settings["training"]["stage2"]["max_epochs"])
        self.log(
            f"stage 2 done: {len(rows)} of {total} epochs in "
            f"{format_duration(sum(r['seconds'] for r in rows))}; best epoch "
            f"{self.progress.best_epoch} (val loss {self.progress.best_val_loss:.4f}); "
            f"checkpoints {[c['epoch'] for c in self.progress.checkpoints]}"
        )

    # --- what the files hold

    def trajectory_frame(self, train_idx=None) -> pd.DataFrame:
        """The run's trajectory, one row per (epoch, training image): ``train_idx`` (the row's
        position when ``train_idx`` is None), stage, epoch, loss, margin, correct; in training
        order."""
        idx = np.arange(len(self.train_labels)) if train_idx is None else np.asarray(train_idx)
        if len(idx) != len(self.train_labels):
            raise ValueError(f"{len(idx)} train_idx for {len(self.train_labels)} training images")
        frames = [
            pd.DataFrame(
                {
                    "train_idx": idx.astype(np.int64),
                    "stage": np.full(len(idx), t["stage"], np.int8),
                    "epoch": np.full(len(idx), t["epoch"], np.int32),
                    "loss": t["loss"].numpy(),
                    "margin": t["margin"].numpy(),
                    "correct": t["correct"].numpy(),
                }
            )
            for t in self.progress.trajectory
        ]
        # stage 2 runs at least one epoch, so there is always a frame
        return pd.concat(frames, ignore_index=True)[TRAJECTORY_COLUMNS]

    def checkpoint(self, row: dict) -> dict:
        """A checkpoint of the model now: ``{"model": state_dict, "arch", "epoch", "stage", the
        learning rates in force during the epoch, its losses and accuracies, "seed", "loss"}``."""
        fields = {key: row[key] for key in CHECKPOINT_ROW_FIELDS}
        return checkpoint_dict(
            self.model, self.arch, **fields, seed=int(self.settings["seed"]), loss=self.loss_spec
        )

    def summary(self) -> dict:
        history, total = (
            self.progress.history,
            int(self.settings["training"]["stage2"]["max_epochs"]),
        )
        rows = [r for r in history if r["stage"] == 2]
        return {
            "arch": self.arch,
            "loss": self.loss_spec,
            "epochs_stage1": len(history) - len(rows),
            "epochs_stage2": len(rows),
            "stopped_early": bool(rows and rows[-1]["epoch"] < total),
            "best_epoch": self.progress.best_epoch,
            "best_val_loss": self.progress.best_val_loss,
            "checkpoints": self.progress.checkpoints,
        }
