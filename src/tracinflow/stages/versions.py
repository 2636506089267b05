"""The versions rules: cross_version, every version compared on the one untouched test set."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tracinflow._util.files import read_json, save_figure, write_csv, write_json, write_text
from tracinflow.analysis.cross_version import compare_versions
from tracinflow.analysis.cross_version_text import SUMMARY_FILES, summary_markdown
from tracinflow.data.split import class_names_of
from tracinflow.plots.cross_version import plot_influence_statistics, plot_performance

# Each version's inputs: the rule's input names, each a list of files in the versions' order.
VERSION_INPUTS = (
    "metrics", "test_predictions", "topk", "inspection", "train_set", "checkpoints", "best_model",
)  # fmt: skip
TABLES = (
    "performance",
    "persistent",
    "influencers",
    "candidates",
    "statistics",
    "pairs",
    "cleaning",
)


def _trained_at(path) -> str:
    # The best model is written once training finishes: its modification time is when.
    stamp = datetime.fromtimestamp(Path(path).stat().st_mtime, tz=UTC)
    return stamp.isoformat(timespec="seconds")


def _version_files(inputs, names: list[str]) -> dict[str, dict[str, str]]:
    """``{version: {input name: file}}``; every version needs every file."""
    files = {name: {} for name in names}
    for key in VERSION_INPUTS:
        listed = list(inputs[key])
        if len(listed) != len(names):
            raise ValueError(f"input {key!r}: {len(listed)} files for the versions {names}")
        for name, path in zip(names, listed, strict=True):
            if not Path(path).is_file():
                raise FileNotFoundError(f"version {name!r}: missing input file {path}")
            files[name][key] = path
    return files


def cross_version(inputs, outputs, params, threads=1, log=print):
    """Read every version's results (``params["versions"]``, in order, with their ``settings``)
    and write the comparison tables, the version registry, two plots and the markdown summary.
    ``min_versions`` above the number of versions is lowered to it with a logged note."""
    names = [str(name) for name in params["versions"]]
    if not names:
        raise ValueError("cross_version: no versions given")
    files = _version_files(inputs, names)
    min_versions = params["min_versions"]
    if min_versions > len(names):
        log(
            f"cross-version: min_versions {min_versions} is more than the {len(names)} "
            f"version(s) given; using {len(names)}"
        )
        min_versions = len(names)
    manifest = pd.read_parquet(inputs["manifest"])
    comparison = compare_versions(
        settings={name: params["settings"][name] for name in names},
        metrics={n: read_json(files[n]["metrics"]) for n in names},
        predictions={n: pd.read_parquet(files[n]["test_predictions"]) for n in names},
        topk={n: pd.read_parquet(files[n]["topk"]) for n in names},
        inspections={n: pd.read_csv(files[n]["inspection"]) for n in names},
        train_sets={n: pd.read_parquet(files[n]["train_set"]) for n in names},
        checkpoints={n: read_json(files[n]["checkpoints"]) for n in names},
        trained_at={n: _trained_at(files[n]["best_model"]) for n in names},
        manifest=manifest,
        class_names=class_names_of(manifest),
        min_versions=min_versions,
        top=params["top"],
    )
    for key in TABLES:
        frame = getattr(comparison, key)
        write_csv(outputs[key], frame)
        log(f"cross-version: wrote {outputs[key]} ({len(frame)} rows)")
    write_json(outputs["registry"], comparison.registry)
    log(f"cross-version: wrote {outputs['registry']} ({len(comparison.registry)} versions)")
    for key, figure in (
        ("performance_plot", plot_performance(comparison.performance)),
        ("statistics_plot", plot_influence_statistics(comparison.statistics)),
    ):
        save_figure(figure, outputs[key])
        log(f"cross-version: wrote {outputs[key]} (plot)")
    text = summary_markdown(  # every table written above, shown capped and linked
        **{key: getattr(comparison, key) for key in TABLES},
        min_versions=comparison.min_versions,
        top=comparison.top,
        files={key: Path(outputs[key]).name for key in SUMMARY_FILES},
    )
    write_text(outputs["summary"], text)
    log(f"cross-version: wrote {outputs['summary']} ({text.count(chr(10))} lines)")
    return comparison
