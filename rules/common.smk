import re

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tracinflow.config import (
    ConfigError,
    check_dataset_source,
    check_version_links,
    load_schema,
    version_settings,
)

validate(config, schema="../workflow/schemas/config.schema.yaml")

try:
    VERSIONS = version_settings(
        config,
        load_schema(workflow.source_path("../workflow/schemas/config.schema.yaml")),
    )
    check_version_links(VERSIONS)
    check_dataset_source(config["dataset"])
except ConfigError as error:
    raise WorkflowError(f"config error: {error}") from None

DATASET = config["dataset"]["name"]
DATASET_ROOT = config["dataset"]["root"]
DEMO = config["dataset"]["demo"]
SPLITS = ["train", "val", "test"]
# gpu=1 on the rules that run a model when the cluster has GPUs; the profile maps the resource to a
# partition and `--gpus` (gpu=0 adds nothing to a job's submission).
GPU = 1 if config["cluster"]["gpu"] else 0


wildcard_constraints:
    dataset=re.escape(DATASET),
    split="|".join(SPLITS),
    version="|".join(re.escape(name) for name in VERSIONS),


def get_data_outputs():
    """Everything the data stages produce for the configured dataset."""
    return [
        f"results/data/{DATASET}/manifest.parquet",
        f"results/data/{DATASET}/rejected.csv",
        f"results/data/{DATASET}/duplicates.csv",
        *expand(f"results/data/{DATASET}/cache/{{split}}.npy", split=SPLITS),
    ]


def get_training_settings(wildcards):
    """The settings train_model reads: a change to them (and only them) retrains the version."""
    settings = VERSIONS[wildcards.version]
    return {key: settings[key] for key in ("seed", "model", "training")}


def get_pretrained_weights(wildcards):
    """The backbone weights file when the version starts from one (a missing file is scheduled for
    download_weights, which names the file to place there when the network is unreachable).
    """
    pretrained = VERSIONS[wildcards.version]["model"]["pretrained"]
    return [pretrained] if pretrained else []


def checkpoint_epochs(version):
    return VERSIONS[version]["training"]["stage2"]["checkpoint_epochs"]


def influence_setting(version, key):
    return VERSIONS[version]["influence"][key]


def report_setting(version, key):
    return VERSIONS[version]["reports"][key]


def clean_setting(version):
    """The version's `clean` settings with the ranking resolved (null: the source version's
    reports.ranking), or None."""
    clean = VERSIONS[version]["clean"]
    if not clean:
        return None
    ranking = clean["ranking"] or VERSIONS[clean["from"]]["reports"]["ranking"]
    return {**clean, "ranking": ranking}


def has_planted_noise(version):
    """Whether the version's training set carries planted label flips (its own or, when it cleans
    another version's training set, that version's)."""
    settings = VERSIONS[version]
    if settings["label_noise"] and settings["label_noise"]["rate"] > 0:
        return True
    return bool(settings["clean"]) and has_planted_noise(settings["clean"]["from"])


def get_train_set_inputs(wildcards):
    """The manifest, and the other versions' outputs a training set is built from: the reference
    model's predictions for confusing noise, the source version's training set, self-influence and
    predictions for cleaning."""
    settings = VERSIONS[wildcards.version]
    inputs = {"manifest": f"results/data/{DATASET}/manifest.parquet"}
    noise = settings["label_noise"]
    if noise and noise["mode"] == "confusing":
        inputs["reference"] = f"results/{noise['reference']}/predictions/train.parquet"
    if settings["clean"]:
        source = f"results/{settings['clean']['from']}"
        inputs["source_train_set"] = f"{source}/train_set.parquet"
        inputs["source_self_influence"] = f"{source}/influence/self_influence.parquet"
        inputs["source_error_self_influence"] = (
            f"{source}/influence/self_influence_error.parquet"
        )
        inputs["source_predictions"] = f"{source}/predictions/train.parquet"
    return inputs


def get_factor_dirs(version, split):
    """The factor folders of every checkpoint of a version for one split, in epoch order."""
    return [
        f"results/{version}/factors/epoch_{epoch:03d}/{split}"
        for epoch in sorted(checkpoint_epochs(version))
    ]


def get_shard_factors(wildcards):
    return {
        "test": get_factor_dirs(wildcards.version, "test"),
        "train": get_factor_dirs(wildcards.version, "train"),
    }


def get_train_factors(wildcards):
    return get_factor_dirs(wildcards.version, "train")


def get_shards(wildcards):
    """Every (test tile, train tile) shard of a version; counts come from config, so the whole
    fan-out is known when the workflow is parsed."""
    tiles = influence_setting(wildcards.version, "shards")
    return [
        f"results/{wildcards.version}/influence/shards/t{t}_r{r}.parquet"
        for t in range(tiles["test"])
        for r in range(tiles["train"])
    ]


def get_version_outputs(version):
    """Everything one version produces (the rest of its files are inputs of these)."""
    reports = f"results/{version}/reports"
    return [
        f"results/{version}/model/training_curves.png",
        f"results/{version}/confusion_matrix.png",
        f"results/{version}/influence/top_k_influences.csv",
        f"{reports}/influence_report.txt",
        f"{reports}/dashboards/influence_distributions.png",
        f"{reports}/galleries",
        *([f"{reports}/noise_detection.csv"] if has_planted_noise(version) else []),
    ]


def get_cross_version_inputs():
    """The files of every version that the cross-version comparison reads."""
    files = [
        "metrics.json",
        "predictions/test.parquet",
        "influence/top_k_influences.parquet",
        "reports/mislabeled_inspection_report.csv",
        "train_set.parquet",
        "model/checkpoints.json",
        "model/best.pt",
    ]
    return [f"results/{version}/{name}" for version in VERSIONS for name in files]


def get_final_outputs():
    """What `snakemake` with no target builds."""
    return (
        get_data_outputs()
        + [path for version in VERSIONS for path in get_version_outputs(version)]
        + ["results/cross_version/summary.md"]
    )
