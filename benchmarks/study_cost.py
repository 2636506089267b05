"""What the noise study cost, job by job, and what the full matrix would cost as cluster jobs.

Reads the Snakemake benchmark files (results/benchmarks/<rule>/<version>*.tsv) that `make study`
left, so run it after the study:

    .venv/bin/python benchmarks/study_cost.py                     # config/study.yaml's run
    .venv/bin/python benchmarks/study_cost.py --config other.yaml

Prints one markdown table: per rule, the jobs the study ran, their mean and total wall time; then
the same for the full matrix, where every ranking of the suspicion table is retrained both ways
(drop and relabel) on every noise setting and seed, priced at the measured mean time per job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tracinflow.analysis.rankings import RANKINGS  # noqa: E402
from tracinflow.config import load_schema, study_versions, with_defaults  # noqa: E402

PER_VERSION_RULES = ("build_train_set", "train_model", "predict")


def measured(versions: list[str]) -> pd.DataFrame:
    """One row per benchmark file of a study version: rule, version, wall seconds."""
    rows = []
    for rule_dir in sorted((REPO / "results/benchmarks").iterdir()):
        for path in rule_dir.glob("*.tsv"):
            # the longest matching name: u10_s0_drop_loss's files start with u10_s0_ too
            matching = [v for v in versions if path.stem == v or path.stem.startswith(v + "_")]
            version = max(matching, key=len) if matching else None
            if version is None:
                continue
            seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
            rows.append({"rule": rule_dir.name, "version": version, "s": seconds})
    return pd.DataFrame(rows, columns=["rule", "version", "s"])


def print_rule_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Print the markdown table of ``jobs`` (rule, s) per rule: jobs, mean and total wall time,
    slowest rule first, and a total row; return the per-rule ``count``, ``mean`` and ``sum``."""
    per_rule = jobs.groupby("rule")["s"].agg(["count", "mean", "sum"])
    print("| rule | jobs run | mean s per job | total min |")
    print("| --- | ---: | ---: | ---: |")
    for rule, row in per_rule.sort_values("sum", ascending=False).iterrows():
        print(f"| {rule} | {int(row['count'])} | {row['mean']:.1f} | {row['sum'] / 60:.1f} |")
    print(f"| **all** | {int(per_rule['count'].sum())} | | {per_rule['sum'].sum() / 60:.1f} |")
    return per_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config/study.yaml"))
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    study = with_defaults(config["study"], schema["properties"]["study"])
    versions = list(study_versions(study))
    jobs = measured(versions)
    if jobs.empty:
        raise SystemExit("no benchmark files of the study's versions: run `make study` first")
    per_rule = print_rule_table(jobs)
    total = per_rule["sum"].sum()

    full = {**study, "drop": [*RANKINGS, "random", "oracle"], "relabel": [*RANKINGS, "random"]}
    cleaned_now = len(versions) - len(study["seeds"]) * (1 + len(study["noise"]))
    cleaned_full = len(study_versions(full)) - len(study["seeds"]) * (1 + len(study["noise"]))
    priced = [r for r in PER_VERSION_RULES if r in per_rule.index]  # the rules with a benchmark
    per_version = sum(per_rule.loc[r, "mean"] for r in priced)
    extra = (cleaned_full - cleaned_now) * per_version
    print()
    print(
        f"Full matrix (every one of the {len(RANKINGS)} rankings and both controls, dropped and "
        f"relabelled): {cleaned_full} cleaned versions instead of {cleaned_now}, "
        f"{cleaned_full * len(PER_VERSION_RULES)} cleaned-version jobs; at the measured "
        f"{per_version:.0f} s per cleaned version (one 1-thread job each of "
        f"{', '.join(PER_VERSION_RULES)}; priced by {', '.join(priced)}), "
        f"{(total + extra) / 3600:.1f} CPU-hours in all "
        f"({total / 3600:.1f} for the study as run)."
    )


if __name__ == "__main__":
    main()
