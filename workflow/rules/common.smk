import copy
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

from tracinflow.config import (
    FASHION_MNIST_FILES,
    ConfigError,
    check_against_schema,
    check_dataset_source,
    brittleness_sets,
    brittleness_versions,
    check_version_links,
    evaluation_settings,
    claim_results,
    dataset_identity,
    load_schema,
    plants_noise,
    pretrained_weights_file,
    shared_checkpoint_names,
    version_method,
    version_settings,
    full_version,
    lds_version,
    removal_sets,
    removal_versions,
    with_evaluation_versions,
    with_study_versions,
)
from tracinflow.data.listing import NOT_WATCHED, read_source, stat_cache_file

# Before the schema fills in its default versions: a study config may name none of its own.
OWN_VERSIONS = "versions" in config
SCHEMA = load_schema(workflow.source_path("../schemas/config.schema.yaml"))
try:
    # first the library's check, whose messages name the deepest failing key and what it expects
    # (Snakemake's validate() reports a nested mistake as "not valid under any of the schemas")
    check_against_schema(config, SCHEMA)
except ConfigError as error:
    raise WorkflowError(f"config error: {error}") from None
# fills in the defaults
validate(config, schema="../schemas/config.schema.yaml")

try:
    CONFIG = with_study_versions(config, SCHEMA, OWN_VERSIONS)
    CONFIG = with_evaluation_versions(CONFIG, SCHEMA)
    VERSIONS = version_settings(CONFIG, SCHEMA)
    # the counterfactual evaluation's settings (defaults filled in, its default method), or None
    EVALUATION = evaluation_settings(CONFIG, SCHEMA)
    # every removal set a subset version may drop: the removal test's and the brittleness test's
    REMOVAL_SETS = (
        {
            **removal_sets(EVALUATION, EVALUATION["default"]),
            **brittleness_sets(EVALUATION, EVALUATION["default"]),
        }
        if EVALUATION
        else {}
    )
    check_version_links(VERSIONS, removal_sets=REMOVAL_SETS)
    check_dataset_source(config["dataset"])
except ConfigError as error:
    raise WorkflowError(f"config error: {error}") from None

# the noise study's settings (defaults filled in), or None
STUDY = CONFIG.get("study")
DATASET = config["dataset"]["name"]
DATASET_ROOT = config["dataset"]["root"]
DEMO = config["dataset"]["demo"]
# the sha256 of the dataset's files by their stat, so a run reads only files that changed
SOURCE_STAT_CACHE = stat_cache_file(".snakemake/tracinflow", DATASET_ROOT)
# The dataset folder as an input of the rules that read images. The demo's is make_demo_dataset's
# output, whose time (its .snakemake_timestamp) changes when that rule reruns, and whose rerun must
# rerun them; a folder of one's own is ancient(): its mtime changes only with its first level, and
# what says the images changed is build_manifest's fingerprint param, through the manifest.
DATASET_ROOT_INPUT = DATASET_ROOT if DEMO else ancient(DATASET_ROOT)
SPLITS = ["train", "val", "test"]
# train_model declares every checkpoint file as an output, so the epochs are one list for all
# versions (config.py refuses a version that overrides them); a checkpoint's name (epoch_EEE, or
# stage1_epoch_EEE with training.stage1.checkpoint_epochs) names its file and factor folders.
CHECKPOINTS = shared_checkpoint_names(VERSIONS)
STAGE1_CHECKPOINTS = [name for name in CHECKPOINTS if name.startswith("stage1_")]
STAGE2_CHECKPOINTS = [name for name in CHECKPOINTS if name not in STAGE1_CHECKPOINTS]
CHECKPOINT_PATTERN = r"(stage1_)?epoch_\d{3}"
# gpu=1 on the rules that run a model when the cluster has GPUs; the profile maps the resource to a
# partition and `--gpus` (gpu=0 adds nothing to a job's submission).
GPU = 1 if config["cluster"]["gpu"] else 0


wildcard_constraints:
    split="|".join(SPLITS),
    version="|".join(re.escape(name) for name in VERSIONS),


# --- settings as params: one shape for every rule --------------------------------------------------


def setting(*keys):
    """A version's setting at ``keys`` (e.g. ``setting("influence", "top_k")``) as a function of
    the wildcards, for ``params:``: a rule reruns exactly when the settings it reads change.
    """

    def lookup(wildcards):
        value = VERSIONS[wildcards.version]
        for key in keys:
            value = value[key]
        return value

    return lookup


def get_factor_target(wildcards):
    """influence.target on the test split; train and val factors are always taken at the label
    (tracinflow.stages.factors), so a change of target reruns only the test side."""
    if wildcards.split != "test":
        return "label"
    return VERSIONS[wildcards.version]["influence"]["target"]


def memory_mb(base):
    """``mem_mb`` that doubles on every retry of a failed job (``retries`` in the profile)."""
    return lambda wildcards, attempt: base * attempt


def recorded_clean(version):
    """The version's `clean` settings as rules record them in params: without `list` when it is
    null, so a version that cleans by a ranking has the params it had before `list` existed (and
    is not rebuilt for it), or None."""
    clean = VERSIONS[version]["clean"]
    if not clean:
        return None
    return {key: v for key, v in clean.items() if key != "list" or v is not None}


def clean_setting(version):
    """The version's `clean` settings with the ranking resolved (null: the source version's
    reports.ranking), or None. A version cleaned by a marks file (`list`) has no ranking: its
    ranking stays None."""
    clean = recorded_clean(version)
    if not clean or clean.get("list"):
        return clean
    ranking = clean["ranking"] or VERSIONS[clean["from"]]["reports"]["ranking"]
    return {**clean, "ranking": ranking}


def get_clean_setting(wildcards):
    return clean_setting(wildcards.version)


def get_training_settings(wildcards):
    """The settings train_model reads: a change to them (and only them) retrains the version."""
    settings = VERSIONS[wildcards.version]
    params = copy.deepcopy(
        {key: settings[key] for key in ("seed", "model", "training")}
    )
    stage1 = params["training"]["stage1"]
    if not stage1["checkpoint_epochs"]:
        # not tracing stage 1 trains as before the key existed: results made then stay current
        del stage1["checkpoint_epochs"]
    return params


def has_planted_noise(version):
    """Whether the version's training set carries planted label flips (its own or, when it cleans
    another version's training set, that version's)."""
    return plants_noise(VERSIONS, version)


_SOURCE_CHANGES_TOLD = set()


def get_dataset_source(wildcards):
    """The fingerprint of the files under dataset.root (tracinflow.data.listing), as a param of
    build_manifest: any image added, removed, renamed or given other bytes, at any depth, reruns
    the manifest and everything after it; a file touched or copied back with the same bytes reruns
    nothing. When it differs from the folder the manifest was made from (source.json), the console
    names the files. The demo's folder is make_demo_dataset's output (rebuilt when its settings
    change), and, like every output, not watched for edits by hand: it gets a constant. (A
    fingerprint taken before that folder exists could not equal the one after, and Snakemake
    records the params a SLURM job had when the run was planned.)"""
    if DEMO:
        return NOT_WATCHED
    dataset = config["dataset"]
    source = read_source(
        DATASET_ROOT,
        dataset["extensions"],
        dataset["exclude_classes"],
        SOURCE_STAT_CACHE,
    )
    recorded = rules.build_manifest.output.source
    if source.digest not in _SOURCE_CHANGES_TOLD:
        _SOURCE_CHANGES_TOLD.add(source.digest)
        changes = source.changes_since(recorded)
        if changes:
            logger.warning(
                f"dataset.root '{DATASET_ROOT}' changed since the manifest was built ({recorded}): "
                f"{changes.describe()}. build_manifest reruns, and every stage after it."
            )
    return source.digest


# --- the counterfactual evaluation's versions and files (rules/evaluation.smk) --------------------

if EVALUATION:
    EVAL_REFERENCE = EVALUATION["reference"]
    EVAL_SETTINGS = VERSIONS[EVAL_REFERENCE]
    # the evaluation's own factors of the reference: every head layer, all checkpoints; the test
    # images at their label (LDS) and at the reference's prediction (removal)
    EVAL_SIDES = {
        "train": {"split": "train", "target": "label"},
        "test": {"split": "test", "target": "label"},
        "test_predicted": {"split": "test", "target": "prediction"},
    }
    # {version: (subset, training seed)} of the LDS retrains, in subset then seed order
    EVAL_LDS_VERSIONS = {
        lds_version(m, s): (m, s)
        for m in range(EVALUATION["lds"]["subsets"])
        for s in EVALUATION["lds"]["seeds"]
    }
    EVAL_REMOVALS = removal_versions(EVALUATION, EVALUATION["default"])
    EVAL_BRITTLE = brittleness_versions(
        EVALUATION, EVALUATION["default"], EVAL_SETTINGS["seed"]
    )
    # the model retrained on the whole training set with each removal seed (the reference's own
    # seed: the reference itself)
    EVAL_FULL = {
        s: (EVAL_REFERENCE if s == EVAL_SETTINGS["seed"] else full_version(s))
        for s in EVALUATION["removal"]["seeds"]
    }
    # the ensemble's other members: the whole training set retrained with each of its seeds
    EVAL_ENSEMBLE = {s: full_version(s) for s in EVALUATION["ensemble"]["seeds"]}


def evaluation_model_inputs(version, name, side):
    """A model's checkpoint, its checkpoint list, training set and the cache of the side's split:
    what the evaluation's factors of it read."""
    split = EVAL_SIDES[side]["split"]
    return {
        "checkpoint": checkpoint_file(version, name),
        "checkpoints": one(rules.train_model.output.checkpoints, version=version),
        "manifest": rules.split_dataset.output.manifest,
        "train_set": one(rules.build_train_set.output.train_set, version=version),
        "cache": one(rules.cache_images.output.cache, split=split),
    }


def get_evaluation_factor_inputs(wildcards):
    return evaluation_model_inputs(EVAL_REFERENCE, wildcards.ckpt, wildcards.side)


def get_ensemble_factor_inputs(wildcards):
    return evaluation_model_inputs(
        EVAL_ENSEMBLE[int(wildcards.seed)], wildcards.ckpt, wildcards.side
    )


def evaluation_factor_dirs(side):
    """The evaluation's factor folders of one side (train, test, test_predicted), in training
    order."""
    return expand(rules.evaluation_factors.output.factors, ckpt=CHECKPOINTS, side=side)


def ensemble_factor_dirs(side):
    """The ensemble's other members' factor folders of one side (train, test), by seed then
    epoch."""
    return [
        one(
            rules.ensemble_factors.output.factors,
            seed=seed,
            ckpt=name,
            side=side,
        )
        for seed in EVAL_ENSEMBLE
        for name in CHECKPOINTS
    ]


def outputs_of(pattern, versions):
    """An output of a versioned rule for each of ``versions``, in order."""
    return [one(pattern, version=v) for v in versions]


def get_summary_inputs(wildcards):
    """The tables the summary reads (the brittleness test's where it runs)."""
    inputs = {
        "lds": rules.lds.output.table,
        "removal": rules.removal.output.table,
    }
    if EVALUATION["brittleness"]:
        inputs["brittleness"] = rules.brittleness.output.table
    return inputs


# --- files of other rules, by the names those rules give them --------------------------------------


def one(pattern, **wildcards):
    """An output of another rule (``rules.<rule>.output.<name>``) with its wildcards filled in."""
    return expand(pattern, **wildcards)[0]


def get_demo_inputs(wildcards):
    """The raw files the demo is made from (none for scikit-learn's digits, which ship with it)."""
    if DEMO["source"] != "fashion_mnist":
        return {}
    images, labels = FASHION_MNIST_FILES
    return {
        "images": f"{DEMO['raw_dir']}/{images}",
        "labels": f"{DEMO['raw_dir']}/{labels}",
    }


def get_pretrained_weights(wildcards):
    """The backbone weights file when the version starts from one (a missing file is scheduled for
    download_weights, which names the file to place there when the network is unreachable).
    """
    model = VERSIONS[wildcards.version]["model"]
    path = pretrained_weights_file(model["arch"], model["pretrained"])
    return [str(path)] if path else []


def get_train_set_inputs(wildcards):
    """The manifest, and the other versions' outputs a training set is built from: the reference
    model's predictions for confusing noise, the source version's training set, predictions and
    suspicion scores for cleaning (or, cleaning by a marks file, that file instead of the scores),
    the source version's training set (and the evaluation's removal set) for a subset.
    """
    settings = VERSIONS[wildcards.version]
    inputs = {"manifest": rules.split_dataset.output.manifest}
    subset = settings["subset"]
    if subset:  # the source's training set, and the removal set it drops
        inputs["source_train_set"] = one(
            rules.build_train_set.output.train_set, version=subset["from"]
        )
        if subset["remove"]:
            inputs["removal"] = one(
                rules.removal_set.output.removal, removal_set=subset["remove"]
            )
        return inputs
    noise = settings["label_noise"]
    if noise and noise["mode"] == "confusing":
        inputs["reference"] = one(
            rules.predict.output.train, version=noise["reference"]
        )
    clean = clean_setting(wildcards.version)
    if clean:
        source = clean["from"]
        inputs["source_train_set"] = one(
            rules.build_train_set.output.train_set, version=source
        )
        inputs["source_predictions"] = one(rules.predict.output.train, version=source)
        if clean.get("list"):  # an input, so editing the marks rebuilds the version
            inputs["marks"] = clean["list"]
        elif clean["ranking"] != "oracle":  # the oracle needs the planted flips alone
            inputs["source_suspicion"] = one(
                rules.suspicion_scores.output.scores, version=source
            )
    return inputs


def checkpoint_file(version, name):
    """A version's file of the checkpoint called ``name`` (epoch_EEE, stage1_epoch_EEE)."""
    files = rules.train_model.output.stage1_epochs + rules.train_model.output.epochs
    return one(dict(zip(CHECKPOINTS, files, strict=True))[name], version=version)


def get_checkpoint_files(wildcards):
    """A version's checkpoint files in training order, as its factor folders list them."""
    return [checkpoint_file(wildcards.version, name) for name in CHECKPOINTS]


def get_factor_dirs(version, split):
    """The factor folders of every checkpoint of a version for one split, in training order."""
    return expand(rules.extract_factors.output.factors, version=version, split=split)


def get_shard_factors(wildcards):
    """A shard's factor folders, and the curvature it preconditions with (influence.method kfac or
    gauss_newton); with influence.ensemble, the same of each other member (by member, then
    epoch)."""
    influence = VERSIONS[wildcards.version]["influence"]
    curvature = influence["method"] != "tracin"
    members = influence["ensemble"]
    files = {
        "test": get_factor_dirs(wildcards.version, "test"),
        "train": get_factor_dirs(wildcards.version, "train"),
        "ensemble_test": [d for m in members for d in get_factor_dirs(m, "test")],
        "ensemble_train": [d for m in members for d in get_factor_dirs(m, "train")],
        "ensemble_curvature": [curvature_file(m) for m in members] if curvature else [],
    }
    if curvature:
        files["curvature"] = curvature_file(wildcards.version)
    return files


def curvature_file(version):
    return one(rules.curvature.output.inverses, version=version)


def get_train_factors(wildcards):
    return get_factor_dirs(wildcards.version, "train")


def get_validation_factors(wildcards):
    return {
        "val": get_factor_dirs(wildcards.version, "val"),
        "train": get_factor_dirs(wildcards.version, "train"),
    }


def ranks_by_cleanlab(version):
    """Whether a version's cleanlab ranking is used: its planted noise is evaluated, it reports by
    it, or another version cleans by it (the logistic regression costs a pass over the training
    images, so a version that needs none skips it)."""
    if (
        has_planted_noise(version)
        or VERSIONS[version]["reports"]["ranking"] == "cleanlab"
    ):
        return True
    cleanings = [clean_setting(other) or {} for other in VERSIONS]
    return any(
        c.get("from") == version and c["ranking"] == "cleanlab" for c in cleanings
    )


def get_cleanlab_inputs(wildcards):
    """The out-of-fold probabilities cleanlab ranks: the logistic regression's on the frozen
    pretrained features (pretrained backbones whose cleanlab ranking is used), and the k-fold
    models' (rankings.kfold folds)."""
    settings = VERSIONS[wildcards.version]
    inputs = {}
    if settings["model"]["pretrained"] and ranks_by_cleanlab(wildcards.version):
        inputs["cleanlab_logistic"] = one(
            rules.cleanlab_logistic.output.probs, version=wildcards.version
        )
    folds = settings["rankings"]["kfold"]
    if folds:
        inputs["kfold"] = expand(
            rules.train_fold.output.probs, version=wildcards.version, fold=range(folds)
        )
    return inputs


def get_trajectory_runs(wildcards):
    """The trajectories of the version's other trainings (rankings.trajectory_runs - 1 of them),
    which the trajectory rankings average with its own."""
    runs = VERSIONS[wildcards.version]["rankings"]["trajectory_runs"]
    if runs < 2:
        return {}
    return {
        "runs": expand(
            rules.train_run.output.trajectory,
            version=wildcards.version,
            run=range(1, runs),
        )
    }


def shard_files(version):
    """Every (test tile, train tile) shard of a version; counts come from config, so the whole
    fan-out is known when the workflow is parsed."""
    tiles = VERSIONS[version]["influence"]["shards"]
    return [
        one(rules.influence_shard.output.shard, version=version, t=t, r=r)
        for t in range(tiles["test"])
        for r in range(tiles["train"])
    ]


def get_shards(wildcards):
    return shard_files(wildcards.version)


def get_data_outputs():
    """Everything the data stages produce for the configured dataset, and the results tree's
    stamp."""
    return [
        rules.results_stamp.output.stamp,
        rules.split_dataset.output.manifest,
        rules.build_manifest.output.rejected,
        rules.build_manifest.output.duplicates,
        *expand(rules.cache_images.output.cache, split=SPLITS),
    ]


def get_version_outputs(version):
    """Every file of one version: all outputs of its training, prediction, factor, influence and
    report rules. Asking for each of them, not only the last, makes a run restore one that was
    deleted, and rerun exactly what was made from it (Snakemake leaves a missing intermediate
    file alone while what was made from it is up to date)."""
    final_rules = [
        rules.build_train_set,
        rules.train_model,
        rules.predict,
        rules.merge_topk,
        rules.self_influence,
        rules.validation_influence,
        rules.suspicion_scores,
        rules.report_tables,
        rules.report_plots,
        rules.report_galleries,
        rules.explorer,
        *([rules.noise_detection] if has_planted_noise(version) else []),
    ]
    factors = [path for split in SPLITS for path in get_factor_dirs(version, split)]
    return (
        expand(
            [pattern for rule in final_rules for pattern in rule.output],
            version=version,
        )
        + factors
        + shard_files(version)
    )


def get_cross_version_inputs(wildcards):
    """The files of every version that the cross-version comparison reads, by kind, each a list in
    the versions' order."""
    files = {
        "metrics": rules.predict.output.metrics,
        "test_predictions": rules.predict.output.test,
        "topk": rules.merge_topk.output.parquet,
        "inspection": rules.report_tables.output.inspection,
        "train_set": rules.build_train_set.output.train_set,
        "checkpoints": rules.train_model.output.checkpoints,
        "best_model": rules.train_model.output.best,
    }
    return {
        kind: expand(pattern, version=list(VERSIONS)) for kind, pattern in files.items()
    }


def get_explorer_versions(wildcards):
    """The versions of a version's explorer's across-versions view, in config order: those its
    reports.explorer.compare names, or (null) the version and the versions whose training set it
    cleans (clean.from, and theirs), so a cleaned version is seen beside its source, and the page
    never reruns for an unrelated version."""
    named = VERSIONS[wildcards.version]["reports"]["explorer"]["compare"]
    if named is not None:
        return list(named)  # names checked at parse time (check_version_links)
    chain, name = [wildcards.version], wildcards.version
    while VERSIONS[name]["clean"] and VERSIONS[name]["clean"]["from"] not in chain:
        name = VERSIONS[name]["clean"]["from"]
        chain.append(name)
    return [version for version in VERSIONS if version in chain]


def get_explorer_inputs(wildcards):
    """The other versions' test predictions and top-k tables the explorer compares, each a list in
    the order of get_explorer_versions."""
    names = get_explorer_versions(wildcards)
    return {
        "compare_test": expand(rules.predict.output.test, version=names),
        "compare_topk": expand(rules.merge_topk.output.parquet, version=names),
    }


def get_cross_version_settings():
    """Every version's settings as the comparison records them (cleaning with its ranking)."""
    return {name: {**VERSIONS[name], "clean": clean_setting(name)} for name in VERSIONS}


def get_final_outputs():
    """What `snakemake` with no target builds: with a study, the study's tables; with an
    evaluation, its tables and the reference version's files (each version's full reports stay
    one `snakemake version_<name>` away)."""
    if STUDY or EVALUATION:
        outputs = get_data_outputs()
        if STUDY:
            outputs += list(rules.study.output)
        if EVALUATION:
            outputs += get_version_outputs(EVALUATION["reference"])
            outputs += [
                *rules.lds.output,
                *rules.removal.output,
                *rules.evaluation_summary.output,
            ]
            if EVALUATION["brittleness"]:
                outputs += list(rules.brittleness.output)
        return outputs
    return (
        get_data_outputs()
        + [path for version in VERSIONS for path in get_version_outputs(version)]
        + list(rules.cross_version.output)
    )


def claim_results_folders():
    """The results tree's stamp after this run (results_stamp writes it): every folder it records
    by the dataset it was made from, this config's versions and its cross-version (or study) folder
    among them. Refuses, while the workflow is parsed, a config of another dataset (name or root)
    whose results would go into a folder made from that one (tracinflow.config.claim_results).
    """
    summaries = [rules.study.output.summary] if STUDY else []
    summaries += [rules.evaluation_summary.output.summary] if EVALUATION else []
    summaries = summaries or [rules.cross_version.output.summary]
    try:
        return claim_results(
            rules.results_stamp.output.stamp,
            Path(rules.split_dataset.output.manifest).parent.parent,
            dataset_identity(config["dataset"]),
            [*VERSIONS, *(Path(summary).parent.name for summary in summaries)],
            workflow.overwrite_configfiles or workflow.configfiles,
        )
    except ConfigError as error:
        raise WorkflowError(f"config error: {error}") from None
