import re

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tracinflow.config import (
    ConfigError,
    check_dataset_source,
    load_schema,
    version_settings,
)

validate(config, schema="../workflow/schemas/config.schema.yaml")

try:
    VERSIONS = version_settings(
        config,
        load_schema(workflow.source_path("../workflow/schemas/config.schema.yaml")),
    )
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
    ]


def get_final_outputs():
    """What `snakemake` with no target builds."""
    return get_data_outputs() + [
        path for version in VERSIONS for path in get_version_outputs(version)
    ]
