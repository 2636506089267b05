"""What the counterfactual evaluation cost, job by job, and what it would cost at Animals-10 scale.

Reads the Snakemake benchmark files (results/benchmarks/<rule>/<name>.tsv) that `make evaluate`
left, so run it after the evaluation:

    .venv/bin/python benchmarks/evaluation_cost.py                     # config/evaluate.yaml's run
    .venv/bin/python benchmarks/evaluation_cost.py --config other.yaml

Prints one markdown table: per rule, the jobs the evaluation ran, their mean and total wall time
(1-thread jobs where `make evaluate` sets them); then the same evaluation priced at Animals-10's
size: every retrain's training and prediction scaled by its images and pixels (Animals-10's
about 18,300 training images at 64 px, as README's walkthrough config, against the measured run's),
as CPU time on this machine and as one wave of SLURM jobs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from study_cost import print_rule_table  # noqa: E402

from tracinflow.config import (  # noqa: E402
    evaluation_settings,
    load_schema,
    with_evaluation_versions,
)

RETRAIN_RULES = ("build_train_set", "train_model", "predict")
EVALUATION_RULES = ("evaluation_factors", "removal_set", "lds", "removal", "evaluation_summary")
#: Animals-10 as README's walkthrough config trains it: 70% of 26,179 images, 64 px
ANIMALS10_TRAIN, ANIMALS10_PX = 18_300, 64


def measured(versions: list[str]) -> pd.DataFrame:
    """One row per benchmark file of an evaluation version or rule: rule, name, wall seconds."""
    rows = []
    for rule_dir in sorted((REPO / "results/benchmarks").iterdir()):
        for path in rule_dir.glob("*.tsv"):
            # results/benchmarks/evaluation/<rule>.tsv: the evaluation's one-job rules
            rule = path.stem if rule_dir.name == "evaluation" else rule_dir.name
            if rule in EVALUATION_RULES or path.stem in versions:
                seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
                rows.append({"rule": rule, "name": path.stem, "s": seconds})
    return pd.DataFrame(rows, columns=["rule", "name", "s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/evaluate.yaml"))
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    evaluation = evaluation_settings(config, schema)
    versions = [v for v in with_evaluation_versions(config, schema)["versions"]
                if v.startswith("eval_")]  # fmt: skip
    jobs = measured(versions)
    if jobs.empty:
        raise SystemExit("no benchmark files of the evaluation: run `make evaluate` first")
    per_rule = print_rule_table(jobs)

    manifest = pd.read_parquet(
        REPO / f"results/data/{config['dataset']['name']}/manifest.parquet", columns=["split"]
    )
    n_train = int((manifest["split"] == "train").sum())
    scale = ANIMALS10_TRAIN / n_train * (ANIMALS10_PX / config["dataset"]["image_size"]) ** 2
    retrain = sum(per_rule.loc[r, "sum"] for r in RETRAIN_RULES if r in per_rule.index)
    slowest = jobs[jobs["rule"] == "train_model"]["s"].max()
    print()
    print(
        f"At Animals-10's size ({ANIMALS10_TRAIN:,} training images at {ANIMALS10_PX} px against "
        f"{n_train:,} at {config['dataset']['image_size']} px: x{scale:.0f} the pixels trained "
        f"on): the {len(versions)} retrains' {retrain / 60:.0f} job-minutes become about "
        f"{retrain * scale / 3600:.0f} CPU-hours on this machine's cores, or one wave of "
        f"{len(versions)} SLURM jobs of about {slowest * scale / 60:.0f} minutes each (the slowest "
        f"training job here, scaled) after the reference; the evaluation's own rules "
        f"({', '.join(EVALUATION_RULES)}) grow with the test images times the training images "
        f"({evaluation['lds']['test_images'] or 'all'} test images sampled)."
    )


if __name__ == "__main__":
    main()
