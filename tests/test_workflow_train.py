"""Training, prediction and influence of the tiny two-version run checked file by file (top-k against
brute-force autograd), and a dry run of animals10."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, make_plain_folder
from snakemake_runs import planned_jobs, run_snakemake, write_config

from tracinflow.data.split import split_rows
from tracinflow.data.train_set import train_set_rows
from tracinflow.io.checkpoints import load_checkpoint
from tracinflow.train.loss import loss_from_checkpoint
from tracinflow.train.model import to_input

pytestmark = pytest.mark.workflow


def test_training_and_predictions_write_every_contracted_file(tiny_workflow):
    workdir = tiny_workflow.workdir
    for version in ("v1", "v2", "v3"):
        out = workdir / "results" / version
        listed = json.loads((out / "model/checkpoints.json").read_text())
        assert [c["epoch"] for c in listed] == [2, 3]
        model, checkpoint = load_checkpoint(out / "model/epoch_003.pt")
        assert {"lr_head", "lr_backbone", "train_loss", "val_loss", "val_accuracy"} <= set(
            checkpoint
        )
        assert checkpoint["lr_head"] == 1e-3
        assert isinstance(model, torch.nn.Module)
        history = pd.read_csv(out / "model/history.csv")
        assert history["stage"].tolist() == [1, 2, 2, 2]
        assert (out / "model/best.pt").exists() and (out / "model/training_curves.png").exists()
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"train", "val", "test", "per_class", "confusion_matrix"} <= set(metrics)
        test = pd.read_parquet(out / "predictions/test.parquet")
        assert len(test) == 20 and set(test.columns) >= {
            "idx",
            "label",
            "pred",
            "confidence",
            "loss",
            "probs",
        }
        assert metrics["test"]["accuracy"] == pytest.approx((test["pred"] == test["label"]).mean())
        wrong = pd.read_csv(out / "mispredictions/false_predictions.csv")
        assert len(wrong) == (test["pred"] != test["label"]).sum()
        assert list(wrong.columns) == [
            "index", "true_label", "predicted_label", "confidence", "image_path",
        ]  # fmt: skip
        assert "stage 2 epoch 3/3" in (workdir / f"logs/train_model/{version}.log").read_text()
    # v2 trains on flipped labels and v3 without its dropped images: the influence must use the
    # labels and images each version trained on
    for version, layers in (("v1", ["fc.4"]), ("v2", ["fc.0", "fc.2", "fc.4"]), ("v3", ["fc.4"])):
        check_topk_against_brute_force(workdir, version, layers, [2, 3], k=5)


def per_sample_gradients(model, loss_fn, images, labels, arch, layers):
    """Flattened (weight, bias) gradients of the hooked layers, one row per sample, by autograd."""
    params = [p for name in layers for p in model.get_submodule(name).parameters()]
    rows = []
    for image, label in zip(images, labels, strict=True):
        x = to_input(torch.from_numpy(np.array(image[None])), arch).double()
        loss = loss_fn(model(x), torch.tensor([label]), reduction="none").sum()
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def check_topk_against_brute_force(workdir, version, layers, epochs, k):
    """The proponents and opponents in top_k_influences.parquet equal sum_ckpt lr * <g_test, g_train>
    recomputed from the checkpoint files by per-sample autograd in float64."""
    out = workdir / "results" / version
    manifest = pd.read_parquet(workdir / "results/data/digits/manifest.parquet")
    caches = {s: np.load(workdir / f"results/data/digits/cache/{s}.npy") for s in ("train", "test")}
    rows = {
        "test": split_rows(manifest, "test"),
        "train": train_set_rows(pd.read_parquet(out / "train_set.parquet"), manifest),
    }
    caches["train"] = caches["train"][rows["train"]["position"].to_numpy()]
    scores, self_scores = 0, 0
    for epoch in epochs:
        model, checkpoint = load_checkpoint(out / f"model/epoch_{epoch:03d}.pt")
        model = model.double()
        loss_fn = loss_from_checkpoint(checkpoint)
        grads = {
            s: per_sample_gradients(
                model, loss_fn, caches[s], rows[s]["label"].to_numpy(), model.arch, layers
            )
            for s in ("train", "test")
        }
        scores = scores + checkpoint["lr_head"] * (grads["test"] @ grads["train"].T)
        self_scores = self_scores + checkpoint["lr_head"] * (grads["train"] ** 2).sum(1)
    scores, self_scores = scores.numpy(), self_scores.numpy()
    topk = pd.read_parquet(out / "influence/top_k_influences.parquet")
    train_pos = {idx: i for i, idx in enumerate(rows["train"]["idx"])}
    scale = np.abs(scores).max()
    for t, test_idx in enumerate(rows["test"]["idx"]):
        mine = topk[topk["test_idx"] == test_idx]
        row = scores[t]
        for kind, best in (
            ("proponent", np.sort(row[row > 0])[::-1]),
            ("opponent", np.sort(row[row < 0])),
        ):
            listed = mine[mine["kind"] == kind].sort_values("rank")
            # proponents are positive, opponents negative: up to k of each sign
            assert len(listed) == min(k, len(best)) and listed["rank"].tolist() == list(
                range(1, len(listed) + 1)
            )
            # the listed scores are the k best, in order, and each equals its brute-force value
            np.testing.assert_allclose(
                listed["influence"], best[: len(listed)], rtol=0, atol=1e-4 * scale
            )
            exact = [scores[t, train_pos[i]] for i in listed["train_idx"]]
            np.testing.assert_allclose(listed["influence"], exact, rtol=0, atol=1e-4 * scale)
    # self-influence is the diagonal of the train x train scores: sum_ckpt lr * |g_train|^2
    self_inf = pd.read_parquet(out / "influence/self_influence.parquet").set_index("train_idx")
    assert sorted(self_inf.index) == sorted(rows["train"]["idx"])
    listed = self_inf.loc[rows["train"]["idx"], "self_influence"].to_numpy()
    np.testing.assert_allclose(listed, self_scores, rtol=1e-4, atol=1e-6 * self_scores.max())
    ranks = self_inf.loc[rows["train"]["idx"], "rank"].to_numpy()
    assert ranks[np.argmax(self_scores)] == 1 and sorted(ranks) == list(range(1, len(ranks) + 1))


def test_tracin_on_the_workflows_checkpoint_files_gives_its_top_k(tiny_workflow):
    """The Python API, given only the checkpoint files (their learning rates and loss are read from
    them), finds the proponents and opponents the workflow's shards found."""
    from tracinflow import TracIn
    from tracinflow.train.batches import CacheBatches

    workdir = tiny_workflow.workdir
    out = workdir / "results/v2"  # all three head layers, noisy labels, 2 x 3 shards
    manifest = pd.read_parquet(workdir / "results/data/digits/manifest.parquet")
    rows = {
        "test": split_rows(manifest, "test"),
        "train": train_set_rows(pd.read_parquet(out / "train_set.parquet"), manifest),
    }
    caches = {s: np.load(workdir / f"results/data/digits/cache/{s}.npy") for s in rows}
    caches["train"] = caches["train"][rows["train"]["position"].to_numpy()]
    model, _ = load_checkpoint(out / "model/best.pt")

    def loader(split):
        labels, idx = rows[split]["label"].to_numpy(), rows[split]["idx"].to_numpy()
        return CacheBatches(caches[split], labels, idx, model.arch, 7, torch.device("cpu"))

    checkpoints = [out / "model/epoch_002.pt", out / "model/epoch_003.pt"]
    tracin = TracIn(model, loader("train"), ["fc.0", "fc.2", "fc.4"], checkpoints=checkpoints)
    mine = tracin.topk(loader("test"), k=5)
    theirs = pd.read_parquet(out / "influence/top_k_influences.parquet")
    pd.testing.assert_frame_equal(mine.drop(columns="influence"), theirs.drop(columns="influence"))
    np.testing.assert_allclose(mine["influence"], theirs["influence"], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", ["animals10", "animals10_effnet"])
def test_animals10_configs_dry_run(tmp_path, name):
    """Both full-size configs plan the whole DAG; ResNet-50's weights are scheduled for
    download_weights, EfficientNet-Lite0's come installed (nothing to download)."""
    config = yaml.safe_load((REPO / f"config/{name}.yaml").read_text())
    folders = {name: 3 for name in config["dataset"]["class_names"]}
    config["dataset"]["root"] = str(make_plain_folder(tmp_path / "raw-img", folders))
    write_config(tmp_path, config)
    jobs = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "1").stdout)
    assert jobs["train_model"] == 1 and jobs["predict"] == 1 and jobs["cache_images"] == 3
    assert jobs.get("download_weights", 0) == (1 if name == "animals10" else 0)
