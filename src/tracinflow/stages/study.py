"""The study rule: the noise study's detection and cleaning tables, plots and summary.

``study(inputs, outputs, params, threads, log)`` takes the rule's named inputs, outputs and params,
reads, calls the library, and writes every output atomically.
"""

from __future__ import annotations

import pandas as pd

from tracinflow._util.files import read_json, save_figure, write_csv, write_text
from tracinflow.analysis.study import cleaning_over_seeds, detection_summary, study_roles
from tracinflow.analysis.study_text import study_summary_markdown
from tracinflow.plots.study import plot_study_cleaning, plot_study_detection


def _by_version(names, paths, what: str) -> dict:
    names, paths = list(names), list(paths)
    if len(names) != len(paths):
        raise ValueError(f"{len(paths)} {what} files for {len(names)} versions")
    return dict(zip(names, paths, strict=True))


def study(inputs, outputs, params, threads=1, log=print) -> dict:
    """Detection over the noisy versions, cleaning over all of them (``params["settings"]``: each
    version's settings, in order; ``params["noisy"]``: the noisy versions, the order of the
    ``detection`` inputs)."""
    settings = params["settings"]
    roles = study_roles(settings)
    detection_files = _by_version(params["noisy"], inputs["detection"], "detection")
    detection_seeds, detection = detection_summary(
        roles, {v: pd.read_csv(p) for v, p in detection_files.items()}
    )
    metrics = _by_version(settings, inputs["metrics"], "metrics")
    train_sets = _by_version(settings, inputs["train_sets"], "train set")
    cleaning_seeds, cleaning = cleaning_over_seeds(
        roles,
        {v: read_json(p)["test"]["accuracy"] for v, p in metrics.items()},
        {v: pd.read_parquet(p, columns=["noisy", "dropped"]) for v, p in train_sets.items()},
    )
    for key, frame in (
        ("detection", detection), ("detection_seeds", detection_seeds),
        ("cleaning", cleaning), ("cleaning_seeds", cleaning_seeds),
    ):  # fmt: skip
        write_csv(outputs[key], frame)
        log(f"study: wrote {outputs[key]} ({len(frame)} rows)")
    save_figure(plot_study_detection(detection), outputs["detection_plot"])
    save_figure(plot_study_cleaning(cleaning), outputs["cleaning_plot"])
    write_text(outputs["summary"], study_summary_markdown(roles, detection, cleaning))
    log(f"study: wrote {outputs['summary']}")
    return {"detection": detection, "cleaning": cleaning}
