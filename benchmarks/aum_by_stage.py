"""An experiment on the noise study's noisy versions: the area under the margin over one training
stage alone, against the whole run's (`aum`, the default ranking) and the final model's loss.

    make study                                       # or only the noisy versions' models, below
    .venv/bin/python benchmarks/aum_by_stage.py      # seconds: it reads what the study trained
    .venv/bin/python benchmarks/aum_by_stage.py --config config/study.yaml config/study_holdout.yaml

It needs, per noisy version, `results/<version>/model/trajectory.parquet`,
`results/<version>/predictions/train.parquet` and `results/<version>/train_set.parquet`; a
Snakemake run with those files as targets trains only the noisy versions (and the clean ones the
confusing noise reads), without the rest of the study.

The candidates, fixed before any number was seen: `aum_stage1`, the mean margin over the head's
epochs on the frozen features (no augmentation; the network cannot yet bend its features to a
wrong label), and `aum_stage2`, over the fine-tuning epochs alone; then (declared after those two
were scored on seeds 0-2, before it was) `aum_rank`, the mean over the epochs of each epoch's
percentile rank of minus the margin, every epoch weighing the same. They are chosen by the rule that
chose the default (the best mean share of the flips found in the top 10% over the four noise
settings) on seeds 0-2 and reported on seeds 3-5, which chose nothing. It changes no file the
workflow reads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tracinflow.analysis.detection import detection_table  # noqa: E402
from tracinflow.analysis.rankings import percentile_rank_mean  # noqa: E402
from tracinflow.analysis.trajectory import area_under_margin, trajectory_matrices  # noqa: E402
from tracinflow.config import (  # noqa: E402
    deep_merge,
    load_schema,
    study_setting_name,
    with_defaults,
)

CANDIDATES = ("aum", "aum_stage1", "aum_stage2", "aum_rank", "loss")


@dataclass(frozen=True)
class NoisyVersion:
    """What the study experiments read of one noisy version: its training set (every row), the
    rows it trained on and their idx, its training trajectory, and the final model's training
    loss of each row."""

    train_set: pd.DataFrame
    used: pd.DataFrame
    idx: np.ndarray
    trajectory: pd.DataFrame
    loss: np.ndarray

    @property
    def flipped(self) -> np.ndarray:
        return self.used["noisy"].to_numpy(bool)


def noisy_version(results: Path, version: str) -> NoisyVersion:
    """:class:`NoisyVersion` of ``results/<version>/``."""
    out = results / version
    train_set = pd.read_parquet(out / "train_set.parquet")
    used = train_set.loc[~train_set["dropped"].to_numpy(bool)]
    idx = used["idx"].to_numpy(np.int64)
    loss = pd.read_parquet(out / "predictions/train.parquet").set_index("idx").loc[idx, "loss"]
    trajectory = pd.read_parquet(out / "model/trajectory.parquet")
    return NoisyVersion(train_set, used, idx, trajectory, loss.to_numpy(np.float64))


def stage_rankings(results: Path, version: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The candidates' suspicion scores (higher = more suspect) of one noisy version's training
    images, and which of them were flipped."""
    noisy = noisy_version(results, version)
    frame = noisy.trajectory

    def margins(rows: pd.DataFrame) -> np.ndarray:
        return trajectory_matrices(rows, noisy.idx)["margin"]

    margin = margins(frame)
    scores = {
        "aum": -area_under_margin(margin),
        "aum_stage1": -area_under_margin(margins(frame.loc[frame["stage"] == 1])),
        "aum_stage2": -area_under_margin(margins(frame.loc[frame["stage"] == 2])),
        # every epoch weighs the same, whatever the spread of its margins
        "aum_rank": percentile_rank_mean(*(-margin).T),
        "loss": noisy.loss,
    }
    return scores, noisy.flipped


def study_config(paths) -> dict:
    """The ``study:`` section of the config files (later over earlier, as Snakemake merges them),
    its defaults filled in."""
    config: dict = {}
    for path in paths:
        config = deep_merge(config, yaml.safe_load(Path(path).read_text()))
    schema = load_schema(REPO / "workflow/schemas/config.schema.yaml")
    return with_defaults(config["study"], schema["properties"]["study"])


def study_detection(study: dict, score) -> pd.DataFrame:
    """The detection table of every noisy version of the study, one row per (ranking, setting,
    seed); ``score(version)`` gives the version's rankings and which rows were flipped."""
    rows = []
    for noise in study["noise"]:
        setting = f"{noise['mode']} {noise['rate']:.0%}"
        for seed in study["seeds"]:
            version = study_setting_name(noise["rate"], noise["mode"], seed)
            scores, flipped = score(version)
            table = detection_table(scores, flipped, default="aum")
            rows.append(table.assign(setting=setting, seed=seed))
    return pd.concat(rows)


def print_detection(found: pd.DataFrame, study: dict, candidates, references=("aum",)) -> None:
    """The table of the candidates (share found in the top 10% / 20%, mean ± std over the seeds,
    and average precision; the rule's mean share in the top 10%), then each candidate's average
    precision paired by seed against each reference ranking's."""
    print(f"seeds {', '.join(map(str, study['seeds']))}: share of the flips found in the top 10% /")
    print("20% (mean ± std over the seeds, %) and average precision\n")
    settings = list(dict.fromkeys(found["setting"]))
    scored = set(found["ranking"])
    candidates = [name for name in candidates if name in scored]  # e.g. epochs a run lacks
    print("| ranking | " + " | ".join(settings) + " | rule: mean top 10% |")
    print("| --- |" + " ---: |" * (len(settings) + 1))
    for name in candidates:
        mine = found.loc[found["ranking"] == name]
        cells = []
        for setting in settings:
            one = mine.loc[mine["setting"] == setting]
            top10, top20 = one["found_at_10pct"] * 100, one["found_at_20pct"] * 100
            cells.append(
                f"{top10.mean():.1f} ± {top10.std():.1f} / {top20.mean():.1f}, "
                f"{one['average_precision'].mean():.3f}"
            )
        print(f"| `{name}` | " + " | ".join(cells) + f" | {mine['found_at_10pct'].mean():.1%} |")
    for reference in references:
        for metric in ("average_precision", "found_at_10pct"):
            paired = found.pivot_table(index=["setting", "seed"], columns="ranking", values=metric)
            print(f"\npaired by seed, {metric} minus `{reference}`'s (mean ± std):")
            for name in candidates:
                if name == reference:
                    continue
                gap = (paired[name] - paired[reference]).groupby(level="setting")
                text = ", ".join(f"{s} {gap.mean()[s]:+.3f} ± {gap.std()[s]:.3f}" for s in settings)
                print(f"- `{name}`: {text}")


def study_main(description: str, score, candidates, references=("aum",)) -> None:
    """An experiment's command line: ``--config`` (the study's files) and ``--results``, then
    the detection table of ``score(results, version)``'s rankings (:func:`print_detection`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", nargs="+", default=[str(REPO / "config/study.yaml")])
    parser.add_argument("--results", default=str(REPO / "results"))
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="these of the study's seeds (default: all of them)"
    )
    args = parser.parse_args()
    study = study_config(args.config)
    if args.seeds:
        unknown = set(args.seeds) - set(study["seeds"])
        if unknown:
            parser.error(f"seeds {sorted(unknown)} are not the study's {study['seeds']}")
        study["seeds"] = args.seeds
    found = study_detection(study, lambda version: score(Path(args.results), version))
    print_detection(found, study, candidates, references)


def main() -> None:
    study_main(__doc__.splitlines()[0], stage_rankings, CANDIDATES)


if __name__ == "__main__":
    main()
