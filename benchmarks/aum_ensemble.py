"""An experiment on the noise study's noisy versions: the area under the margin averaged over
independent trainings of the same noisy labels, against one training's (`aum`, the default
ranking) and the final model's loss.

    .venv/bin/snakemake --cores 2 --set-threads train_model=1 \\
        --configfile config/study.yaml <members.yaml> -- <targets>
    .venv/bin/python benchmarks/aum_ensemble.py --config config/study.yaml <members.yaml> --seeds 0 1 2

`<members.yaml>` adds, per noisy version `<v>` (training seed s), the versions `<v>_m1` and
`<v>_m2`: the same `label_noise` (the same flips), training seeds s + 100 and s + 200
(`benchmarks/aum_ensemble.py members --config config/study.yaml > <members.yaml>` writes it, the
targets in its last line); the targets are their
`results/<v>_m<k>/model/trajectory.parquet` (a training each, nothing else).

Why: one training's margins carry that run's chance (its augmentation, batch order and head
initialisation), so a clean image can sit low and a flip high by luck of the run; averaged over
runs that share only the labels, the chance shrinks and what the labels do to the margins stays.

The candidates, fixed before any member was trained: `aum_ens3`, minus the mean of the three
runs' areas under the margin (`<v>`, `<v>_m1`, `<v>_m2`; each run has the same epochs, so this is
the mean margin over every epoch of all three), and `aum_ens2`, of `<v>` and `<v>_m1` alone.
Controls: `aum`, the loss and random. The rule that chose the default (the best mean share of the
flips found in the top 10% over the four noise settings) chooses on seeds 0-2; seeds 3-5 chose
nothing and report. It changes no file the workflow reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from aum_by_stage import REPO, noisy_version, study_config, study_main

from tracinflow.analysis.rankings import random_scores
from tracinflow.analysis.trajectory import trajectory_signals
from tracinflow.config import study_versions
from tracinflow.stages.rankings import RUN_SEED_STEP

CANDIDATES = ("aum_ens3", "aum_ens2", "aum", "loss", "random")
MEMBERS = 2


def member_versions(study: dict) -> dict[str, dict]:
    """``<v>_m<k>`` for every noisy version ``<v>`` of the study: its label noise, training seed
    ``seed + k * RUN_SEED_STEP`` (``train_run``'s seeds)."""
    members = {}
    for name, version in study_versions(study).items():
        if "label_noise" not in version:
            continue
        for k in range(1, MEMBERS + 1):
            members[f"{name}_m{k}"] = {
                "seed": version["seed"] + k * RUN_SEED_STEP,
                "label_noise": dict(version["label_noise"]),
            }
    return members


def run_trajectory(results: Path, version: str, train_set: pd.DataFrame) -> pd.DataFrame:
    """One training's trajectory, checked to be trained on the same labels as ``train_set``."""
    own = pd.read_parquet(results / version / "train_set.parquet")
    if not own.equals(train_set):
        raise ValueError(f"{results / version}: its training set is not the noisy version's")
    return pd.read_parquet(results / version / "model/trajectory.parquet")


def ensemble_rankings(results: Path, version: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The candidates' and controls' suspicion scores (higher = more suspect) of one noisy
    version's training images, and which of them were flipped; the averages over the runs are
    the workflow's own (``trajectory_signals`` of several runs, rankings.trajectory_runs)."""
    noisy = noisy_version(results, version)
    members = [
        run_trajectory(results, f"{version}_m{k}", noisy.train_set) for k in range(1, MEMBERS + 1)
    ]
    runs = [noisy.trajectory, *members]
    scores = {
        "aum_ens3": trajectory_signals(runs, noisy.idx)["aum"],
        "aum_ens2": trajectory_signals(runs[:2], noisy.idx)["aum"],
        "aum": trajectory_signals(runs[0], noisy.idx)["aum"],
        "loss": noisy.loss,
        "random": random_scores(len(noisy.idx), 0),
    }
    return scores, noisy.flipped


def print_members_config(argv: list[str]) -> None:
    """``members --config <files>``: the config file of the members of the study's noisy versions,
    and the Snakemake targets that train them, to read after the study's config files."""
    parser = argparse.ArgumentParser(prog="aum_ensemble.py members")
    parser.add_argument("--config", nargs="+", default=[str(REPO / "config/study.yaml")])
    members = member_versions(study_config(parser.parse_args(argv).config))
    print(yaml.safe_dump({"versions": members}, sort_keys=False), end="")
    targets = " ".join(f"results/{name}/model/trajectory.parquet" for name in members)
    print(f"# targets: {targets}")


def main() -> None:
    if sys.argv[1:2] == ["members"]:
        print_members_config(sys.argv[2:])
        return
    study_main(__doc__.splitlines()[0], ensemble_rankings, CANDIDATES)


if __name__ == "__main__":
    main()
