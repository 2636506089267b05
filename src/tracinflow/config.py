"""Configuration: per-version settings by deep merge, and checks that need more than the JSON schema.

Snakemake validates ``config/config.yaml`` against ``workflow/schemas/config.schema.yaml`` (filling
defaults); this module turns the validated config into one complete settings dict per version and
checks each of them against the same schema, so a bad override fails at parse time naming
``versions.<name>.<key>``. It imports no torch: ``rules/common.smk`` imports it in every job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

# Settings shared by every version: one dataset and one split, so that every version is tested on the
# same untouched test images and accuracies compare honestly.
GLOBAL_ONLY_KEYS = ("dataset", "split", "versions", "cluster")

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
)


class ConfigError(ValueError):
    """A config problem, worded for the person who edits config.yaml."""


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


def _format_error(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = ([prefix] if prefix else []) + [str(part) for part in error.absolute_path]
    key = ".".join(parts)
    return f"{key or '<top level>'}: {error.message}"


def check_against_schema(settings: dict, schema: dict, prefix: str = "") -> None:
    """Raise ConfigError listing every schema violation as ``key.path: what is expected``."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n  ".join(_format_error(e, prefix) for e in errors)
        raise ConfigError(f"invalid config:\n  {lines}")


def version_settings(config: dict, schema: dict) -> dict[str, dict]:
    """One complete settings dict per configured version: the global settings with the version's
    overrides deep-merged over them, each checked against the schema."""
    versions = config.get("versions") or {}
    if not versions:
        raise ConfigError(
            "versions: at least one version is needed, e.g. `versions: {baseline: {}}`"
        )
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
        merged = deep_merge(base, overrides)
        check_against_schema({**merged, "versions": {name: {}}}, schema, prefix=f"versions.{name}")
        resolved[name] = merged
    return resolved


def check_dataset_source(dataset: dict, workdir=".") -> None:
    """Fail before any job runs when the images the config points at cannot exist."""
    workdir = Path(workdir)
    demo = dataset.get("demo")
    if demo is None:
        root = workdir / dataset["root"]
        if not root.is_dir():
            raise ConfigError(
                f"dataset.root: folder '{dataset['root']}' does not exist. Point dataset.root at an "
                f"ImageFolder root (<root>/<class>/<image>), e.g. your Animals-10 'raw-img' folder."
            )
        return
    if demo["source"] == "fashion_mnist":
        raw_dir = workdir / demo["raw_dir"]
        missing = [name for name in FASHION_MNIST_FILES if not (raw_dir / name).is_file()]
        if missing:
            raise ConfigError(
                f"dataset.demo.raw_dir: '{demo['raw_dir']}' lacks {', '.join(missing)}. These come "
                f"from Debian's package dataset-fashion-mnist: run `make fetch-demo-data` (set-up "
                f"time, not run time), or copy the files from /usr/share/datasets/fashion-mnist/."
            )


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


if __name__ == "__main__":  # python -m tracinflow.config SCHEMA README: refresh README's reference
    import sys

    schema_path, readme_path = sys.argv[1:3]
    text = Path(readme_path).read_text()
    Path(readme_path).write_text(with_reference(text, load_schema(schema_path)))
