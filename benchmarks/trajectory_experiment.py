"""An experiment on make evaluate's retrains: trace the stage-1 (head-only) checkpoints too.

    make evaluate                                      # first
    python benchmarks/trajectory_experiment.py         # about 3 minutes on 2 CPU cores

The workflow traces the stage-2 checkpoints; the head learns most in stage 1, on the frozen
backbone's features. This script replays the reference version's stage 1 with its own settings,
seed and data (the Trainer the train_model rule runs, stopped after stage 1), checks the replay
against the reference's history.csv (every stage-1 epoch's losses and accuracies), extracts the
head's factors at the end of each stage-1 epoch (the learning rate in force, the pretrained
backbone), and scores TracIn, K-FAC and Gauss-Newton over stage 1 alone and over the whole
trajectory (stage 1 + the 3 stage-2 checkpoints), judged by the lds rule's own code beside the
stage-2 rows of lds.csv. It is an experiment, not a workflow option (yet): it writes no file the
workflow reads.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_peers import images, lds_inputs  # noqa: E402

from tracinflow.analysis.markdown import markdown_table  # noqa: E402
from tracinflow.config import (  # noqa: E402
    load_schema,
    pretrained_weights_file,
    version_settings,
    with_defaults,
)
from tracinflow.data.split import class_names_of, split_rows  # noqa: E402
from tracinflow.influence.factors import extract_factors  # noqa: E402
from tracinflow.influence.methods import method_scores  # noqa: E402
from tracinflow.stages.checkpoints import read_backbone_weights  # noqa: E402
from tracinflow.stages.common import load_cache, version_split  # noqa: E402
from tracinflow.stages.evaluation import lds_problem  # noqa: E402
from tracinflow.train.loss import loss_from_checkpoint  # noqa: E402
from tracinflow.train.model import model_from_checkpoint  # noqa: E402
from tracinflow.train.trainer import Trainer  # noqa: E402

METHODS = ["tracin_final", "tracin_head", "kfac_final", "kfac_head", "gn_final"]
HEAD = ("fc.0", "fc.2", "fc.4")
HISTORY_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def reference_settings(tree: Path) -> dict:
    config = yaml.safe_load((ROOT / "config/evaluate.yaml").read_text())
    schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
    reference = config["evaluation"]["reference"]
    return version_settings(config, schema)[reference], reference


def replay_stage1(tree: Path, settings: dict, reference: str) -> list[dict]:
    """The reference's checkpoint dicts at the end of each stage-1 epoch, from a replay of its
    training that must match its history.csv."""
    data = next((tree / "results/data").glob("*/manifest.parquet")).parent
    manifest = pd.read_parquet(data / "manifest.parquet")
    train_set = tree / f"results/{reference}/train_set.parquet"
    train_x, train_y, _ = version_split(manifest, "train", train_set, data / "cache/train.npy")
    model = settings["model"]
    weights = pretrained_weights_file(model["arch"], model["pretrained"])
    trainer = Trainer(
        {key: settings[key] for key in ("seed", "model", "training")},
        len(class_names_of(manifest)), train_x, train_y, load_cache(data / "cache/val.npy"),
        split_rows(manifest, "val")["label"].to_numpy(),
        device=torch.device("cpu"),
        pretrained_state=read_backbone_weights(weights, model["arch"]) if weights else None,
        log=lambda line: None,
    )  # fmt: skip
    history = pd.read_csv(tree / f"results/{reference}/model/history.csv")
    recorded = history[history["stage"] == 1].set_index("epoch")
    checkpoints, epochs = [], len(recorded)
    for done in trainer.epochs():
        for key in HISTORY_FIELDS:
            if not np.isclose(done.row[key], recorded.loc[done.epoch, key], rtol=1e-6, atol=0):
                raise SystemExit(
                    f"the replay of stage-1 epoch {done.epoch} is not the reference's: {key} "
                    f"{done.row[key]!r} against history.csv's {recorded.loc[done.epoch, key]!r}"
                )
        checkpoints.append(trainer.checkpoint(done.row))
        if done.epoch == epochs:  # stage 2 is not replayed
            break
    return checkpoints


def stage1_factors(tree, reference, checkpoint, side_factors, split):
    """The head's factors of a stage-1 checkpoint on the images of ``side_factors`` (one of the
    evaluation's stage-2 factor sets, whose rows and meta it copies with this checkpoint's epoch
    and learning rate)."""
    model = model_from_checkpoint(checkpoint)
    x, y = images(tree, reference, split, side_factors.idx, model.arch)
    idx = torch.as_tensor(side_factors.idx)
    loader = [(x[s : s + 256], y[s : s + 256], idx[s : s + 256]) for s in range(0, len(y), 256)]
    factors = extract_factors(model, loader, loss_from_checkpoint(checkpoint), layers=HEAD,
                              device="cpu")  # fmt: skip
    assert np.array_equal(factors.idx, side_factors.idx)
    factors.meta = dict(side_factors.meta) | {
        "epoch": -int(checkpoint["epoch"]),  # stage 1, told apart from stage 2's epochs
        "stage": 1,
        "lr": float(checkpoint["lr_head"]),
    }
    return factors


def main() -> None:
    torch.set_num_threads(1)  # as make evaluate trains (train_model=1)
    tree = Path(".")
    settings, reference = reference_settings(tree)
    config = yaml.safe_load((ROOT / "config/evaluate.yaml").read_text())
    schema = load_schema(ROOT / "workflow/schemas/config.schema.yaml")
    lds = with_defaults(config["evaluation"], schema["properties"]["evaluation"])["lds"]
    inputs, retrains = lds_inputs(tree, reference)
    problem = lds_problem(inputs, {"lds": lds, "retrains": retrains})
    published = pd.read_csv(tree / "results/evaluation/lds.csv").set_index("method")

    started = time.perf_counter()
    checkpoints = replay_stage1(tree, settings, reference)
    replay = time.perf_counter() - started
    torch.set_num_threads(2)
    started = time.perf_counter()
    s1_train = [stage1_factors(tree, reference, c, problem.train[0], "train") for c in checkpoints]
    s1_test = [stage1_factors(tree, reference, c, problem.test[0], "test") for c in checkpoints]
    extraction = time.perf_counter() - started
    print(f"stage 1 replayed in {replay:.0f} s ({len(checkpoints)} epochs, history.csv matched); "
          f"factors extracted in {extraction:.0f} s; stage-1 lr "
          f"{[c['lr_head'] for c in checkpoints]}, stage-2 lr "
          f"{[f.lr for f in problem.train]}", flush=True)  # fmt: skip

    rows, per_test = [], []
    for name in METHODS:
        for checkpoints_used, test, train in (
            ("stage 2 (lds.csv)", problem.test, problem.train),
            ("stage 1", s1_test, s1_train),
            ("stage 1 + 2", s1_test + problem.test, s1_train + problem.train),
        ):
            started = time.perf_counter()
            row = problem.row(name, method_scores(name, test, train), per_test)
            seconds = time.perf_counter() - started
            if (
                checkpoints_used.endswith("(lds.csv)")
                and abs(row["lds"] - published.loc[name, "lds"]) > 1e-9
            ):
                raise SystemExit(f"{name}: not lds.csv's LDS; the experiment is not judged alike")
            rows.append({"method": name, "checkpoints": checkpoints_used,
                         **{k: row[k] for k in ("lds", "ci_low", "ci_high", "lds_held_out",
                                                "lds_mistakes")},
                         "seconds": seconds})  # fmt: skip
            print(rows[-1], flush=True)
    print()
    print(markdown_table(pd.DataFrame(rows).round(3)))


if __name__ == "__main__":
    main()
