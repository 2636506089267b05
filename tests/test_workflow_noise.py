"""Planted label noise, its detection, influence-guided cleaning and the cross-version comparison,
checked on the files of the tiny three-version run (v2: 25% of its training labels flipped; v3: v2's
training set minus v2's top 4 suspects by self-influence)."""

import json

import numpy as np
import pandas as pd
import pytest

from tracinflow.analysis.detection import DETECTION_COLUMNS
from tracinflow.data.split import split_rows

pytestmark = pytest.mark.workflow


def results(workflow, path):
    path = workflow.workdir / "results" / path
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def test_noise_is_planted_exactly_in_training_labels_only(tiny_workflow):
    manifest = results(tiny_workflow, "data/digits/manifest.parquet")
    train = split_rows(manifest, "train")
    clean, noisy = (
        results(tiny_workflow, "v1/train_set.parquet"),
        results(tiny_workflow, "v2/train_set.parquet"),
    )
    assert clean["idx"].tolist() == noisy["idx"].tolist() == train["idx"].tolist()
    assert not clean["noisy"].any() and (clean["label"] == train["label"]).all()
    assert (noisy["original_label"] == train["label"]).all()
    assert noisy["noisy"].sum() == round(0.25 * len(train))
    assert (noisy["noisy"] == (noisy["label"] != noisy["original_label"])).all()
    assert not noisy["dropped"].any()
    # the model trained on the flipped labels; val and test keep the manifest's
    predictions = results(tiny_workflow, "v2/predictions/train.parquet").set_index("idx")
    assert (predictions.loc[noisy["idx"], "label"].to_numpy() == noisy["label"].to_numpy()).all()
    for split in ("val", "test"):
        predicted = results(tiny_workflow, f"v2/predictions/{split}.parquet")
        assert predicted["label"].tolist() == split_rows(manifest, split)["label"].tolist()


def test_cleaning_drops_exactly_the_top_suspects_of_the_source(tiny_workflow):
    source = results(tiny_workflow, "v2/train_set.parquet")
    cleaned = results(tiny_workflow, "v3/train_set.parquet")
    suspects = results(tiny_workflow, "v2/influence/self_influence.parquet")
    top4 = suspects.sort_values(["self_influence", "train_idx"], ascending=[False, True])[
        "train_idx"
    ].head(4)
    assert set(cleaned.loc[cleaned["dropped"], "idx"]) == set(top4)
    kept = cleaned.loc[~cleaned["dropped"]]
    # nothing else changes: same rows, same (noisy) labels
    pd.testing.assert_frame_equal(cleaned.drop(columns="dropped"), source.drop(columns="dropped"))
    trained_on = results(tiny_workflow, "v3/predictions/train.parquet")
    assert sorted(trained_on["idx"]) == sorted(kept["idx"])
    assert len(results(tiny_workflow, "v3/influence/self_influence.parquet")) == len(kept)
    # the test set is the same untouched one
    assert (
        results(tiny_workflow, "v3/predictions/test.parquet")["idx"].tolist()
        == results(tiny_workflow, "v1/predictions/test.parquet")["idx"].tolist()
    )


def test_noise_detection_table_for_noisy_versions(tiny_workflow):
    for version in ("v2", "v3"):
        table = results(tiny_workflow, f"{version}/reports/noise_detection.csv")
        assert list(table.columns) == DETECTION_COLUMNS
        assert table.loc[table["default"], "ranking"].tolist() == ["aum"]  # reports.ranking
        assert {"self_influence", "error_self_influence", "kfac_self_influence",
                "gn_self_influence", "loss", "combined", "aum", "loss_sum", "forgetting",
                "aum_combined", "random"} <= set(table["ranking"])  # fmt: skip
        assert table[["found_at_5pct", "found_at_10pct", "found_at_20pct"]].le(1).all().all()
        assert table["roc_auc"].between(0, 1).all()
        assert (
            (tiny_workflow.workdir / f"results/{version}/reports/noise_detection.png")
            .stat()
            .st_size
        )
    assert not (tiny_workflow.workdir / "results/v1/reports/noise_detection.csv").exists()


def test_cross_version_files_agree_with_each_version(tiny_workflow):
    out = tiny_workflow.workdir / "results/cross_version"
    performance = pd.read_csv(out / "performance.csv").set_index("version")
    assert list(performance.index) == ["v1", "v2", "v3"]
    for version in ("v1", "v2", "v3"):
        metrics = json.loads((out.parent / version / "metrics.json").read_text())
        assert performance.loc[version, "test_accuracy"] == pytest.approx(
            metrics["test"]["accuracy"]
        )
    train_v2 = results(tiny_workflow, "v2/train_set.parquet")
    train_v3 = results(tiny_workflow, "v3/train_set.parquet")
    assert performance.loc["v2", "flipped"] == train_v2["noisy"].sum()
    assert performance.loc["v3", "dropped"] == 4

    cleaning = pd.read_csv(out / "cleaning.csv").set_index("version")
    assert list(cleaning.index) == ["v3"]
    removed = int(train_v3.loc[train_v3["dropped"], "noisy"].sum())
    assert cleaning.loc["v3", "acted_on"] == 4 and cleaning.loc["v3", "flips_removed"] == removed
    assert cleaning.loc["v3", "flips_left"] == train_v2["noisy"].sum() - removed
    assert cleaning.loc["v3", "ranking"] == "self_influence"

    registry = json.loads((out / "version_registry.json").read_text())
    fingerprints = {v: registry[v]["train_set"]["fingerprint"] for v in ("v1", "v2", "v3")}
    assert len(set(fingerprints.values())) == 3
    assert registry["v2"]["settings"]["label_noise"]["rate"] == 0.25
    summary = (out / "summary.md").read_text()
    assert "## Cleaning" in summary and "v3" in summary
    assert np.isfinite(performance["val_accuracy"]).all()


def test_noise_detection_numbers_recomputed_from_the_files(tiny_workflow):
    """ROC AUC, average precision and the share found at 5/10/20% of every ranking, recomputed by
    scikit-learn and by hand from suspicion_scores.parquet and the planted flips in train_set."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    for version in ("v2", "v3"):
        used = results(tiny_workflow, f"{version}/train_set.parquet").query("~dropped")
        suspicion = results(tiny_workflow, f"{version}/rankings/suspicion_scores.parquet")
        suspicion = suspicion.set_index("train_idx").loc[used["idx"]]
        flipped = used["noisy"].to_numpy()
        table = results(tiny_workflow, f"{version}/reports/noise_detection.csv")
        assert len(table) >= 5
        for row in table.itertuples():
            scores = suspicion[row.ranking].to_numpy(np.float64)
            assert row.roc_auc == pytest.approx(roc_auc_score(flipped, scores), abs=1e-12)
            assert row.average_precision == pytest.approx(
                average_precision_score(flipped, scores), abs=1e-12
            )
            order = np.argsort(-scores, kind="stable")  # ties in the train set's order
            for fraction, found in ((0.05, row.found_at_5pct), (0.1, row.found_at_10pct),
                                    (0.2, row.found_at_20pct)):  # fmt: skip
                inspected = order[: int(np.ceil(round(fraction * len(scores), 9)))]
                assert found == pytest.approx(flipped[inspected].sum() / flipped.sum())


def test_trajectory_rankings_come_from_the_recorded_training_trajectory(tiny_workflow):
    """train_model's trajectory.parquet holds every image the version trained on once per epoch of
    its history; aum, loss_sum and forgetting are recomputed from it by hand."""
    for version in ("v2", "v3"):
        trajectory = results(tiny_workflow, f"{version}/model/trajectory.parquet")
        history = results(tiny_workflow, f"{version}/model/history.csv")
        suspicion = results(tiny_workflow, f"{version}/rankings/suspicion_scores.parquet")
        used = results(tiny_workflow, f"{version}/train_set.parquet").query("~dropped")
        assert sorted(set(trajectory["train_idx"])) == sorted(used["idx"])
        assert len(trajectory) == len(used) * len(history)
        per_image = trajectory.sort_values(["stage", "epoch"], kind="stable").groupby("train_idx")
        idx = suspicion["train_idx"].to_numpy()
        aum = per_image["margin"].mean().loc[idx].to_numpy(np.float64)
        loss_sum = per_image["loss"].apply(lambda v: v.astype(np.float64).sum()).loc[idx]
        np.testing.assert_allclose(suspicion["aum"], -aum, rtol=1e-6)
        np.testing.assert_allclose(suspicion["loss_sum"], loss_sum, rtol=1e-6)
        forgotten = per_image["correct"].apply(
            lambda c: len(c) if not c.any() else int((c.to_numpy()[:-1] & ~c.to_numpy()[1:]).sum())
        )
        np.testing.assert_array_equal(suspicion["forgetting"], forgotten.loc[idx])
