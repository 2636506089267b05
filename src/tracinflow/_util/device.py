"""The one device helper: every rule that runs a model picks its device from ``training.device``."""

from __future__ import annotations

import contextlib

import torch


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) = CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training.device is {name!r} but CUDA is not available")
    return device


def describe_device(device: torch.device, fast_cuda: bool = False) -> str:
    """One log line: the device and the precision it computes in."""
    if device.type == "cuda":
        precision = "bf16 autocast, channels_last, TF32 matmul/conv" if fast_cuda else "float32"
        return f"device {device} ({torch.cuda.get_device_name(device)}), precision {precision}"
    return f"device {device}, precision float32, {torch.get_num_threads()} threads"


@contextlib.contextmanager
def fast_cuda_math(device: torch.device):
    """TF32 matrix products and cuDNN autotuning on CUDA inside the block (training, where speed
    matters more than the last bits), restored afterwards; nothing changes elsewhere."""
    if device.type != "cuda":
        yield
        return
    previous = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = previous


@contextlib.contextmanager
def float32_matmul(device: torch.device, precision: str = "highest"):
    """float32 matrix products on CUDA at ``precision`` inside the block (torch's
    ``set_float32_matmul_precision``: ``highest`` = no TF32, for influence scores; ``high`` = TF32),
    restored afterwards; nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
