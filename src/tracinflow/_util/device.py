"""The device and the form of the forward: every rule that runs a model picks its device from
``training.device`` and its memory format from ``training.memory_format``; prediction and factor
extraction run the checkpoint's inference form (:func:`inference_form`)."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

#: training.memory_format: how the network lays out its images and activations. channels_last
#: (NHWC) trains EfficientNet-Lite0 about 1.5-1.9x faster on the CPUs measured and is what CUDA's
#: convolutions prefer (benchmarks/bench_memory_format.py); contiguous is PyTorch's default: the
#: weights in NCHW and each image batch as it comes, so each convolution picks its layout from
#: its input as it did before this setting existed (an image batch made from (B, H, W, 3) pixels
#: by a permute is NHWC in memory), which is what reproduces the tables measured before it.
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
#: the settings: a format, or auto (:func:`resolve_memory_format`)
MEMORY_FORMAT_SETTINGS = ("auto", *MEMORY_FORMATS)
DEFAULT_MEMORY_FORMAT = "auto"


def select_device(name: str | None = "auto") -> torch.device:
    """``auto`` (or None) = CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training.device is {name!r} but CUDA is not available")
    return device


# Input pixels (rows x H x W) per forward pass on the CPU. Eval forwards of EfficientNet-Lite0 in
# channels_last, 2 threads, AMD EPYC: fastest at 64 rows of 64 px (1.42x the images/s of 256 rows),
# 256 rows of 32 px and 4-8 rows of 224 px (1.6x 64 rows): about 2**18 pixels each, where a
# forward's activations still fit the caches. Under OMP_WAIT_POLICY=PASSIVE (as `make` runs jobs)
# the best piece is about twice as large and gains less (1.18x at 64 px; bench_memory_format.py).
# A row's output does not depend on its batch.
CPU_FORWARD_PIXELS = 1 << 18


def forward_rows(images: torch.Tensor, device: torch.device | None = None) -> int:
    """Rows of the image batch ``images`` (B, C, H, W) per forward pass on ``device`` (default:
    where the images are): all of them off the CPU; on the CPU, :data:`CPU_FORWARD_PIXELS` worth
    (at least one)."""
    device = images.device if device is None else torch.device(device)
    if device.type != "cpu" or images.dim() != 4:
        return max(len(images), 1)
    return max(CPU_FORWARD_PIXELS // (images.shape[-2] * images.shape[-1]), 1)


def in_pieces(forward, images: torch.Tensor) -> torch.Tensor:
    """``forward(images)`` run on pieces of :func:`forward_rows` rows, concatenated: the same rows,
    computed at the CPU's faster size (an eval forward, in which rows never mix)."""
    rows = forward_rows(images)
    if len(images) <= rows:
        return forward(images)
    return torch.cat([forward(piece) for piece in images.split(rows)])


def describe_device(
    device: torch.device, fast_cuda: bool = False, memory_format: str | None = None
) -> str:
    """One log line: the device, the precision it computes in and the memory format."""
    layout = f", {memory_format}" if memory_format else ""
    if device.type == "cuda":
        precision = "bf16 autocast, TF32 matmul/conv" if fast_cuda else "float32"
        name = torch.cuda.get_device_name(device)
        return f"device {device} ({name}), precision {precision}{layout}"
    return f"device {device}, precision float32{layout}, {torch.get_num_threads()} threads"


def has_strided_pointwise_convolution(model: nn.Module) -> bool:
    """Whether ``model`` has a 1x1 convolution with a stride above 1 (a ResNet's downsampling)."""
    return any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1
        for m in model.modules()
    )


def resolve_memory_format(name: str, model: nn.Module, device: torch.device) -> str:
    """The memory format ``name`` (a :data:`MEMORY_FORMAT_SETTINGS` value) means for ``model`` on
    ``device``. ``auto``: channels_last on CUDA; on the CPU channels_last unless the network has a
    strided 1x1 convolution, and then contiguous: with torch 2.14.1 on the CPU the backward of
    such a convolution in channels_last corrupts the heap for small channel counts (4 -> 8 and
    8 -> 16 channels at 16 px, 2 threads: the process aborts or segfaults), which the ResNets'
    downsampling has and EfficientNet has not."""
    if name not in MEMORY_FORMAT_SETTINGS:
        raise ValueError(
            f"training.memory_format is {name!r}; choose one of {', '.join(MEMORY_FORMAT_SETTINGS)}"
        )
    if name != "auto":
        return name
    if device.type == "cuda" or not has_strided_pointwise_convolution(model):
        return "channels_last"
    return "contiguous"


def in_memory_format(model: nn.Module, name: str = DEFAULT_MEMORY_FORMAT) -> nn.Module:
    """``model`` with its convolution weights, and from now on every image batch it is called
    with, in the memory format ``name`` (:data:`MEMORY_FORMAT_SETTINGS`; ``auto`` is resolved for
    the device the model is on by :func:`resolve_memory_format`). A float32 forward computes the
    same function in either format, rounded differently; checkpoints are saved contiguous.
    Setting it again changes the format (one input hook per model)."""
    parameters = list(model.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    name = resolve_memory_format(name, model, device)
    memory_format = MEMORY_FORMATS[name]
    model = model.to(memory_format=memory_format)
    if getattr(model, "memory_format", None) is None:
        model.register_forward_pre_hook(_images_in_model_format)
    model.memory_format = name  # plain attribute, as model.arch: not in the state dict
    return model


def images_in_model_format(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """An image batch (B, 3, H, W) in channels_last when :func:`in_memory_format` gave ``model``
    that format; unchanged otherwise (contiguous, or a model it never saw). Both the weights and
    the input decide the layout a convolution computes in; converting the images once keeps the
    whole forward in one. Contiguous leaves them as they come: converting them to NCHW would
    change how training rounds (a version trained before the setting existed would not
    reproduce)."""
    name = getattr(model, "memory_format", None)
    if name != "channels_last" or not isinstance(images, torch.Tensor) or images.dim() != 4:
        return images
    return images.contiguous(memory_format=MEMORY_FORMATS[name])


def _images_in_model_format(model: nn.Module, args: tuple) -> tuple:
    images, *rest = args
    return (images_in_model_format(model, images), *rest)


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of the eval-mode ``model`` in which every BatchNorm that takes a convolution's output
    directly has been folded into that convolution (weight ``w * g / sqrt(v + eps)``, bias
    ``b - m * g / sqrt(v + eps)``, computed in float64), or ``model`` itself when nothing folds.

    The same function, rounded differently, one elementwise pass fewer per convolution (with
    :func:`pad_statically`, EfficientNet-Lite0's inference forward at 64 px runs 1.34x plain
    channels_last's on the AMD EPYC VM: benchmarks/bench_memory_format.py). Which BatchNorm reads which
    convolution is seen, not assumed: one forward of ``probe`` (a small image batch) with hooks
    records them, and a folded copy whose output on ``probe`` differs from the model's by more
    than rounding is not used (the model is returned as it is). BatchNorm2d folds to nothing,
    timm's BatchNormAct2d to its activation; other norms stay."""
    if model.training:
        raise ValueError("fold_batchnorm folds the running statistics: call model.eval() first")
    folded = copy.deepcopy(model)
    pairs = _convolution_batchnorm_pairs(folded, probe)
    if not pairs:
        return model
    _replace_modules(folded, {norm: _what_is_left_of(norm) for _, norm in pairs})
    for conv, norm in pairs:
        _fold_into_convolution(conv, norm)
    return folded if _same_as(model, folded, probe) else model


def _run_with_hooks(model: nn.Module, probe: torch.Tensor, hooks: dict) -> None:
    """One no-grad forward of ``probe`` with the forward hook ``hooks[module]`` on each module,
    every hook removed afterwards."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()


def _replace_modules(model: nn.Module, replacements: dict) -> None:
    """Each submodule of ``model`` that is a key of ``replacements`` swapped for its value."""
    names = {module: name for name, module in model.named_modules()}
    for module, replacement in replacements.items():
        parent, _, attribute = names[module].rpartition(".")
        setattr(model.get_submodule(parent), attribute, replacement)


def _what_is_left_of(norm: nn.Module) -> nn.Module | None:
    """The module that replaces a folded BatchNorm, or None when it cannot fold."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if type(norm).__name__ == "BatchNormAct2d":  # timm: normalise, then drop, then act
        return nn.Sequential(norm.drop, norm.act)
    return None


def _convolution_batchnorm_pairs(model: nn.Module, probe: torch.Tensor) -> list:
    """``(conv, norm)`` for every foldable BatchNorm whose input, in a forward of ``probe``, is
    the output of a Conv2d, each module run once."""
    made_by, calls, kept, pairs = {}, {}, [], []

    def convolution_ran(module, args, output):
        calls[module] = calls.get(module, 0) + 1
        made_by[id(output)] = module
        kept.append(output)  # alive until the end, so that no other tensor takes its id

    def norm_ran(module, args, output):
        calls[module] = calls.get(module, 0) + 1
        conv = made_by.get(id(args[0]))
        if conv is not None:
            pairs.append((conv, module))

    hooks = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks[module] = convolution_ran
        elif isinstance(module, nn.BatchNorm2d):
            hooks[module] = norm_ran
    _run_with_hooks(model, probe, hooks)
    return [
        (conv, norm)
        for conv, norm in pairs
        if calls[conv] == calls[norm] == 1
        and norm.running_mean is not None
        and _what_is_left_of(norm) is not None
    ]


def _fold_into_convolution(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    weight = conv.weight
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    folded = torch.empty_like(weight)  # keeps the weight's memory format
    folded.copy_(weight.double() * scale.view(-1, *([1] * (weight.dim() - 1))))
    conv.weight = nn.Parameter(folded, requires_grad=weight.requires_grad)
    conv.bias = nn.Parameter(shift.to(weight.dtype), requires_grad=weight.requires_grad)


def inference_form(model: nn.Module) -> nn.Module:
    """The eval-mode ``model`` as the workflow predicts and extracts factors with it: in
    channels_last (the fast form, :func:`in_memory_format`) with its BatchNorms folded
    (:func:`fold_batchnorm`) and its "same" convolutions padded inside the kernel
    (:func:`pad_statically`), probed with two images of the size ``model.arch`` names; otherwise
    (contiguous: the form the published tables were measured in, or a model without ``arch``)
    as it is."""
    image_size = (getattr(model, "arch", None) or {}).get("image_size")
    if getattr(model, "memory_format", None) != "channels_last" or not image_size:
        return model
    parameter = next(model.parameters())
    probe = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(0))
    probe = probe.to(parameter.device, parameter.dtype)
    return pad_statically(fold_batchnorm(model, probe), probe)


def _same_as(model: nn.Module, folded: nn.Module, probe: torch.Tensor) -> bool:
    """Whether ``folded`` computes ``model``'s function on ``probe``, up to float32 rounding."""
    with torch.no_grad():
        want, got = model(probe), folded(probe)
    return isinstance(want, torch.Tensor) and torch.allclose(
        got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max())
    )


class StaticSameConvolution(nn.Conv2d):
    """A TensorFlow-"same" convolution (timm's Conv2dSame, which pads each input with a copy)
    for one input size, as a plain convolution that pads inside the kernel: symmetric padding,
    and where "same" pads one row or column more on the far side, a kernel one tap longer whose
    first tap is zero (so each output reads the same inputs with the same weights). Another input
    size is an error, not a silent shift."""

    def __init__(self, conv: nn.Conv2d, input_size: tuple[int, int]):
        pads = [
            max((-(-size // s) - 1) * s + k - size, 0)
            for size, k, s in zip(input_size, conv.kernel_size, conv.stride, strict=True)
        ]
        extra = [pad % 2 for pad in pads]  # "same" puts the odd one on the far side
        super().__init__(
            conv.in_channels, conv.out_channels,
            tuple(k + e for k, e in zip(conv.kernel_size, extra, strict=True)),
            stride=conv.stride, padding=tuple(pad - pad // 2 for pad in pads),
            groups=conv.groups, bias=conv.bias is not None,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )  # fmt: skip
        self.input_size = tuple(input_size)
        weight = torch.zeros_like(self.weight)
        weight[:, :, extra[0] :, extra[1] :] = conv.weight.detach()
        source = conv.weight  # keep its memory format
        if source.is_contiguous(memory_format=torch.channels_last) and not source.is_contiguous():
            weight = weight.contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
        if conv.bias is not None:
            self.bias = nn.Parameter(
                conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad
            )

    def forward(self, x):
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"this convolution was made for {self.input_size} inputs (the model's "
                f"arch image_size), got {tuple(x.shape[-2:])}"
            )
        return super().forward(x)


def pad_statically(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every timm Conv2dSame (dilation 1) replaced by a
    :class:`StaticSameConvolution` for the input size it sees on ``probe``, or ``model`` itself
    when there is none or the copy's output on ``probe`` differs by more than rounding. The pad's
    copy of each input was a sixth of EfficientNet-Lite0's forward at 64 px (2 threads)."""
    copied = copy.deepcopy(model)
    sizes = {}

    def convolution_ran(module, args, output):
        sizes.setdefault(module, []).append(tuple(args[0].shape[-2:]))

    _run_with_hooks(
        copied,
        probe,
        {
            module: convolution_ran
            for module in copied.modules()
            if type(module).__name__ == "Conv2dSame" and module.dilation == (1, 1)
        },
    )
    replacements = {
        conv: StaticSameConvolution(conv, seen[0]) for conv, seen in sizes.items() if len(seen) == 1
    }
    _replace_modules(copied, replacements)
    return copied if replacements and _same_as(model, copied, probe) else model


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
