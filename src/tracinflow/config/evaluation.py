"""The counterfactual evaluation (``evaluation:`` in the config): the retrains it generates as
versions of their own (LDS subsets, whole-set retrains with other seeds, removal and brittleness
sets), their names, and the checks the schema cannot make (docs/evaluation.md)."""

from __future__ import annotations

import copy

from tracinflow.config.methods import parse_method, version_method
from tracinflow.config.schema import ConfigError, deep_merge, with_defaults

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
