"""Configuration: per-version settings by deep merge, and checks that need more than the JSON schema.

Snakemake validates ``config/config.yaml`` against ``workflow/schemas/config.schema.yaml`` (filling
defaults); this package turns the validated config into one complete settings dict per version and
checks each of them against the same schema, so a bad override fails at parse time naming
``versions.<name>.<key>``. It imports no torch: ``workflow/rules/common.smk`` imports it in every job.

A module per job: :mod:`.schema` (the schema's defaults and checks), :mod:`.methods` (attribution
methods by name), :mod:`.versions` (each version's settings), :mod:`.links` (what versions say
about each other), :mod:`.study` and :mod:`.evaluation` (the versions those blocks generate),
:mod:`.preflight` (the dataset folder and the results stamp on disk) and :mod:`.reference`
(config/README.md's key reference). The rest of the project imports their names from here.
"""

from tracinflow.config.evaluation import (
    EVALUATION_PREFIX,
    MIN_LDS_SUBSETS,
    brittleness_sets,
    brittleness_versions,
    ensemble_name,
    evaluation_settings,
    evaluation_versions,
    full_seeds,
    full_version,
    lds_version,
    removal_sets,
    removal_versions,
    with_evaluation_versions,
)
from tracinflow.config.links import (
    RANKING_NEEDS,
    check_version_links,
    plants_noise,
    version_sources,
)
from tracinflow.config.methods import (
    DEFAULT_DAMPING,
    LAYER_SETS,
    METHOD_PATTERNS,
    METHOD_PREFIXES,
    default_method,
    method_label,
    parse_method,
    version_method,
)
from tracinflow.config.preflight import (
    FASHION_MNIST_FILES,
    check_dataset_source,
    claim_results,
    class_folders,
    dataset_identity,
    folders_without_images,
)
from tracinflow.config.reference import (
    REFERENCE_MARKERS,
    schema_reference,
    with_reference,
)
from tracinflow.config.schema import (
    ConfigError,
    check_against_schema,
    deep_merge,
    load_schema,
    with_defaults,
)
from tracinflow.config.study import (
    DEFAULT_RANKING,
    NOISE_MODE_LETTERS,
    study_setting_name,
    study_versions,
    with_study_versions,
)
from tracinflow.config.versions import (
    GLOBAL_ONLY_KEYS,
    IMAGENET,
    SHARED_CHECKPOINT_EPOCHS,
    SHARED_CHECKPOINT_KEYS,
    TORCHVISION_WEIGHTS,
    WEIGHTS_PACKAGES,
    checkpoint_name,
    pretrained_weights_file,
    shared_checkpoint_epochs,
    shared_checkpoint_names,
    version_settings,
)

__all__ = [
    "DEFAULT_DAMPING",
    "DEFAULT_RANKING",
    "EVALUATION_PREFIX",
    "FASHION_MNIST_FILES",
    "GLOBAL_ONLY_KEYS",
    "IMAGENET",
    "LAYER_SETS",
    "METHOD_PATTERNS",
    "METHOD_PREFIXES",
    "MIN_LDS_SUBSETS",
    "NOISE_MODE_LETTERS",
    "RANKING_NEEDS",
    "REFERENCE_MARKERS",
    "SHARED_CHECKPOINT_EPOCHS",
    "SHARED_CHECKPOINT_KEYS",
    "TORCHVISION_WEIGHTS",
    "WEIGHTS_PACKAGES",
    "ConfigError",
    "brittleness_sets",
    "brittleness_versions",
    "check_against_schema",
    "check_dataset_source",
    "check_version_links",
    "checkpoint_name",
    "claim_results",
    "class_folders",
    "dataset_identity",
    "deep_merge",
    "default_method",
    "ensemble_name",
    "evaluation_settings",
    "evaluation_versions",
    "folders_without_images",
    "full_seeds",
    "full_version",
    "lds_version",
    "load_schema",
    "method_label",
    "parse_method",
    "plants_noise",
    "pretrained_weights_file",
    "removal_sets",
    "removal_versions",
    "schema_reference",
    "shared_checkpoint_epochs",
    "shared_checkpoint_names",
    "study_setting_name",
    "study_versions",
    "version_method",
    "version_settings",
    "version_sources",
    "with_defaults",
    "with_evaluation_versions",
    "with_reference",
    "with_study_versions",
]
