"""Model files: checkpoints, the resume state of a training run, pretrained backbone weights; a
checkpoint loaded for inference.

Every one is read with ``torch.load(..., weights_only=True)`` (plain tensors and containers, no
pickled code) and written atomically.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from tracinflow._util.device import (
    DEFAULT_MEMORY_FORMAT,
    in_memory_format,
    inference_form,
    select_device,
)
from tracinflow._util.errors import InputError
from tracinflow._util.files import atomic_path
from tracinflow.train.loss import loss_from_checkpoint
from tracinflow.train.model import missing_weights_message, model_from_checkpoint, weights_url


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write a checkpoint (``{"model": state_dict, "arch": arch, ...}``, plain values) atomically.

    Through a file handle: given a path, torch.save names the archive's records after the file
    (here a random temporary name), so equal checkpoints would differ byte for byte."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(checkpoint, handle)


class CheckpointError(InputError):
    """A checkpoint file that cannot be used: unreadable, not what training wrote, or holding code."""


RETRAIN = "retrain the version (snakemake -R train_model ...) to write it again"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path) -> dict:
    """A checkpoint file's contents (or any state-dict file's), plain tensors and containers.

    ``torch.load(weights_only=True)``: a file that carries other pickled objects is refused
    without running any of their code, and a truncated or corrupt file is an error naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused {path}: it holds pickled objects beyond tensors and plain containers, which "
            f"could run code when loaded; it was read with torch.load(weights_only=True), so none "
            f"ran. Only files of tensors, numbers, strings, lists and dicts load ({err})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt ({err}); {RETRAIN}"
        ) from None


def verify_checkpoint(path, listed: list[dict]) -> None:
    """Check ``path`` is byte for byte the checkpoint train_model wrote: its sha256 against the one
    checkpoints.json (``listed``) records for that file name."""
    path = Path(path)
    recorded = {entry["file"]: entry.get("sha256") for entry in listed}
    expected = recorded.get(path.name)
    if expected is None:
        raise CheckpointError(f"{path} is not listed with a sha256 in checkpoints.json; {RETRAIN}")
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"{path} is not the checkpoint training wrote: its sha256 is {actual[:16]}..., "
            f"checkpoints.json records {expected[:16]}... (the file was replaced, truncated or "
            f"damaged after training); {RETRAIN}"
        )


def load_checkpoint(path, device="cpu", listed: list[dict] | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``path`` from the file alone; returns ``(model in eval mode, dict)``.
    With ``listed`` (checkpoints.json), the file is verified against its recorded sha256 first."""
    if listed is not None:
        verify_checkpoint(path, listed)
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, device), checkpoint


def load_for_inference(
    checkpoint_path,
    threads: int,
    device_name="auto",
    listed=None,
    memory_format: str = DEFAULT_MEMORY_FORMAT,
):
    """``(model, checkpoint, loss, device)`` of a checkpoint on ``device_name`` (the config's
    ``training.device``) in ``memory_format`` (``training.memory_format``) and its inference form
    (:func:`~tracinflow._util.device.inference_form`: in channels_last, its BatchNorms folded),
    the loss rebuilt from the checkpoint alone; ``listed``: checkpoints.json, to verify the file's
    sha256 against."""
    torch.set_num_threads(threads)
    device = select_device(device_name)
    model, checkpoint = load_checkpoint(checkpoint_path, device=device, listed=listed)
    model = inference_form(in_memory_format(model, memory_format))
    return model, checkpoint, loss_from_checkpoint(checkpoint).to(device), device


def save_train_state(path, state: dict) -> None:
    """Write a training run's resume state, as :func:`save_checkpoint` writes a checkpoint."""
    save_checkpoint(path, state)


def read_train_state(path, log) -> dict | None:
    """A training run's resume state, or None when there is none; an unreadable one only costs a
    restart from scratch (said in the log)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        log(f"ignoring unreadable {path.name} ({err}); starting from scratch")
        return None


def read_backbone_weights(path, arch_name: str) -> dict:
    """The state dict in a pretrained weights file (torchvision's ImageNet file, or a tracinflow
    checkpoint); a missing file says where to get it, an unreadable one says so."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_weights_message(arch_name, path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read pretrained weights {path} as a torch state dict: {err}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a tracinflow checkpoint
    if not isinstance(state, dict):
        raise ValueError(
            f"pretrained weights {path} hold a {type(state).__name__}, not a state dict"
        )
    return state


def fetch_weights(arch_name: str, dest) -> Path:
    """Fetch torchvision's ImageNet weights for ``arch_name`` into ``dest`` (needs network access).

    On failure the error names the URL and the file to place at ``dest`` by hand.
    """
    url = weights_url(arch_name)
    dest = Path(dest)
    try:
        with atomic_path(dest) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
            torch.load(tmp, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"could not download the {arch_name} ImageNet weights ({type(err).__name__}: {err}). "
            f"Fetch {url} on a machine with network access and place it at {dest}."
        ) from err
    return dest
