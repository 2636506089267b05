"""Model files: checkpoints, the resume state of a training run, pretrained backbone weights.

Every one is read with ``torch.load(..., weights_only=True)`` (plain tensors and containers, no
pickled code) and written atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tracinflow._util.files import atomic_path
from tracinflow.train.model import missing_weights_message, model_from_checkpoint, weights_url


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write a checkpoint (``{"model": state_dict, "arch": arch, ...}``, plain values) atomically."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path) -> dict:
    """A checkpoint file's contents (or any state-dict file's), plain tensors and containers."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved in ``path`` from the file alone; returns ``(model in eval mode, dict)``."""
    checkpoint = read_checkpoint(path)
    return model_from_checkpoint(checkpoint, device), checkpoint


def save_train_state(path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
