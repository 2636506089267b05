"""The prepared GPU check runs its every step (on the CPU, at toy sizes): the script a short GPU rental
depends on cannot rot unseen on machines without CUDA. The scale benchmark's DAG (the workflow's own
shard entry point over generated factors) runs at a toy size, so `make bench` cannot break unseen
when the shard stage's inputs change. The k-fold and kNN experiments' scores are checked by hand."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def benchmark_module(name: str):
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_gpu_check_runs_every_step_on_the_cpu_at_toy_sizes():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    checks = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert [c.split(" ")[0] for c in checks] == [
        "device", "factors", "shard", "training", "extraction", "kernel", "kernel",
    ]  # fmt: skip
    # on one device the two sides are the same computation; float32 matches float64 closely
    assert "largest difference 0.0e+00" in table[3]
    assert "float32: error" in table[4] and "top-100 entries equal to the CPU's 100.0%" in table[4]


@pytest.mark.workflow
def test_the_scale_benchmarks_dag_runs_the_workflows_shard_stage_and_merges_exactly(tmp_path):
    bench_scale = benchmark_module("bench_scale")
    bench_scale.generate(tmp_path / "factors", 300, 40, np.random.default_rng(0))
    bench_scale.run_dag(tmp_path, 2, 2)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 4
    assert bench_scale.check_rows(tmp_path).startswith("8 of 8 test rows: proponents identical")


def test_the_kfold_experiments_held_out_margin_is_the_logit_margin_of_the_given_label(tmp_path):
    aum_kfold = benchmark_module("aum_kfold")
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([0, 2, 1])
    # by hand: 2 - 0.5; 1 - 3; a tie with the best other class
    np.testing.assert_allclose(
        aum_kfold.held_out_margin(probs, labels), [1.5, -2.0, 0.0], atol=1e-12
    )
    folds = tmp_path / "v/rankings/kfold"
    folds.mkdir(parents=True)
    for fold, rows in enumerate(([2, 0], [1])):
        frame = {"train_idx": [10 + r for r in rows], "label": labels[rows], "fold": fold}
        frame["probs"] = list(probs[rows])
        pd.DataFrame(frame).to_parquet(folds / f"fold_{fold}.parquet")
    got, got_labels = aum_kfold.out_of_fold_probs(tmp_path, "v", np.array([10, 11, 12]))
    np.testing.assert_array_equal(got, probs)
    np.testing.assert_array_equal(got_labels, labels)
    with pytest.raises(ValueError, match="exactly once"):
        aum_kfold.out_of_fold_probs(tmp_path, "v", np.array([10, 11, 12, 13]))


def test_the_knn_experiments_votes_and_density_margins_by_hand(tmp_path):
    aum_knn = benchmark_module("aum_knn")
    # two tight pairs on the axes; image 3 sits with images 2 (label 1) but carries label 0
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.3]])
    labels = np.array([0, 0, 1, 0, 1])
    similarity = aum_knn.cosine_without_self(features)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert np.isneginf(np.diag(similarity)).all()
    np.testing.assert_allclose(similarity[~np.eye(5, dtype=bool)], cos[~np.eye(5, dtype=bool)])
    # k = 2: image 3's nearest are 2 (label 1, cos .994) and 4 (label 1): no neighbour agrees
    vote = aum_knn.knn_vote(similarity, labels, k=2)
    assert vote[3] == pytest.approx(1.0)
    # image 0's nearest are 1 (label 0) and 4 (label 1): one minus its weighted share
    assert vote[0] == pytest.approx(1 - cos[0, 1] / (cos[0, 1] + cos[0, 4]))
    # k = 1, densities: image 3's own class (0) best is image 1, the other class's is image 2
    margin = aum_knn.knn_margin(similarity, labels, num_classes=2, k=1)
    assert margin[3] == pytest.approx(-(cos[3, 1] - cos[3, 2]))
    assert margin[0] == pytest.approx(-(cos[0, 1] - cos[0, 4]))
    # k = 2 for class 1 (images 2, 4): image 2 has one other member, so its own mean is of one
    margin2 = aum_knn.knn_margin(similarity, labels, num_classes=2, k=2)
    assert margin2[2] == pytest.approx(-(cos[2, 4] - (cos[2, 3] + cos[2, 1]) / 2))
    # a label no other image carries gets the lowest cosine, -1, as its own density
    alone = aum_knn.knn_margin(similarity, np.array([0, 0, 1, 0, 0]), num_classes=2, k=1)
    assert alone[2] == pytest.approx(-(-1.0 - cos[2, 3]))
    # the factors' rows come back in the training set's order, whatever order they were saved in
    train_dir = tmp_path / "v/factors/epoch_001/train"
    train_dir.mkdir(parents=True)
    (train_dir / "meta.json").write_text('{"layers": ["fc.1", "fc.4"]}')
    np.save(train_dir / "fc.4.act.npy", features[[4, 2, 0, 1, 3]].astype(np.float32))
    np.save(train_dir / "idx.npy", np.array([14, 12, 10, 11, 13]))
    (got,) = aum_knn.checkpoint_features(tmp_path / "v", np.arange(10, 15))
    np.testing.assert_allclose(got, features, rtol=1e-7)
    with pytest.raises(ValueError, match="not the training set"):
        aum_knn.checkpoint_features(tmp_path / "v", np.arange(10, 16))


def test_the_ensemble_experiments_members_share_the_flips_and_average_the_runs_margins(tmp_path):
    aum_ensemble = benchmark_module("aum_ensemble")
    study = {
        "seeds": [3],
        "noise": [{"rate": 0.3, "mode": "confusing"}],
        "drop": ["default"],
        "relabel": [],
        "kfold": None,
    }
    members = aum_ensemble.member_versions(study)
    noise = {"rate": 0.3, "seed": 3, "mode": "confusing", "reference": "baseline_s3"}
    # the noisy version's flips, other training seeds; no member of the clean or cleaned versions
    assert members == {
        "c30_s3_m1": {"seed": 103, "label_noise": noise},
        "c30_s3_m2": {"seed": 203, "label_noise": noise},
    }
    train_set = pd.DataFrame(
        {"idx": [5, 7, 9], "label": [0, 1, 1], "noisy": [False, True, False], "dropped": False}
    )
    # margins by run (rows: images 5, 7, 9; columns: epochs), and their areas by hand
    margins = {
        "v": [[2.0, 4.0], [-1.0, 1.0], [0.0, 0.5]],
        "v_m1": [[1.0, 3.0], [-2.0, -2.0], [1.0, 1.5]],
        "v_m2": [[0.0, 0.0], [0.0, 0.0], [3.0, 3.0]],
    }
    for name, rows in margins.items():
        (tmp_path / name / "model").mkdir(parents=True)
        train_set.to_parquet(tmp_path / name / "train_set.parquet")
        frame = [
            {"train_idx": i, "stage": 2, "epoch": e + 1, "loss": 0.0, "margin": m, "correct": True}
            for i, row in zip([5, 7, 9], rows, strict=True)
            for e, m in enumerate(row)
        ]
        pd.DataFrame(frame).to_parquet(tmp_path / name / "model/trajectory.parquet")
    (tmp_path / "v/predictions").mkdir()
    pd.DataFrame({"idx": [9, 7, 5], "loss": [0.3, 0.2, 0.1]}).to_parquet(
        tmp_path / "v/predictions/train.parquet"
    )
    scores, flipped = aum_ensemble.ensemble_rankings(tmp_path, "v")
    np.testing.assert_allclose(scores["aum"], [-3.0, 0.0, -0.25])
    np.testing.assert_allclose(scores["aum_ens2"], [-2.5, 1.0, -0.75])
    np.testing.assert_allclose(scores["aum_ens3"], [-5 / 3, 2 / 3, -1.5])
    np.testing.assert_allclose(scores["loss"], [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(flipped, [False, True, False])
    # a member trained on other labels is refused, not averaged
    train_set.assign(label=[0, 0, 1]).to_parquet(tmp_path / "v_m2/train_set.parquet")
    with pytest.raises(ValueError, match="not the noisy version's"):
        aum_ensemble.ensemble_rankings(tmp_path, "v")


def test_aum_up_to_a_fine_tuning_epoch_averages_the_head_epochs_and_the_first_ones(tmp_path):
    aum_upto = benchmark_module("aum_upto")
    # images 4 and 8: two head epochs, then three fine-tuning epochs (rows out of order)
    margins = {
        4: {(1, 1): 1.0, (1, 2): 2.0, (2, 1): 3.0, (2, 2): 6.0, (2, 3): -9.0},
        8: {(1, 1): -1.0, (1, 2): 0.0, (2, 1): 1.0, (2, 2): 4.0, (2, 3): 10.0},
    }
    frame = pd.DataFrame(
        [
            {"train_idx": i, "stage": s, "epoch": e, "loss": 0.0, "margin": m, "correct": m > 0}
            for i, by_epoch in margins.items()
            for (s, e), m in by_epoch.items()
        ]
    ).iloc[::-1]
    idx = [8, 4]
    np.testing.assert_allclose(aum_upto.aum_upto(frame, idx, 0), [0.5, -1.5])
    np.testing.assert_allclose(aum_upto.aum_upto(frame, idx, 1), [0.0, -2.0])
    np.testing.assert_allclose(aum_upto.aum_upto(frame, idx, 2), [-1.0, -3.0])
    # every epoch: the whole run's aum
    np.testing.assert_allclose(aum_upto.aum_upto(frame, idx, 3), [-14 / 5, -3 / 5])
    assert aum_upto.fine_tuning_epochs(frame) == 3
    with pytest.raises(ValueError, match="the run has 3"):
        aum_upto.aum_upto(frame, idx, 4)


def test_the_missed_flips_are_described_against_the_clean_model_of_the_same_seed(tmp_path):
    aum_upto = benchmark_module("aum_upto")
    # ten images; image 7 (Shirt given, Coat true: look-alikes) and 9 (Bag given, Trouser
    # true) are flipped; aum's top 10% is the one image with the lowest mean margin
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 2, 3]
    original = [0, 0, 1, 1, 2, 2, 3, 0, 2, 1]
    margin = [2.0, 3.0, 2.5, 4.0, -1.0, 5.0, 2.0, 0.5, 6.0, -0.5]
    idx = np.arange(100, 110)
    (tmp_path / "u10_s0/model").mkdir(parents=True)
    (tmp_path / "u10_s0/predictions").mkdir()
    (tmp_path / "baseline_s0/predictions").mkdir(parents=True)
    (tmp_path / "data/ds").mkdir(parents=True)
    noisy = np.array(labels) != np.array(original)
    pd.DataFrame(
        {"idx": idx, "label": labels, "original_label": original, "noisy": noisy, "dropped": False}
    ).to_parquet(tmp_path / "u10_s0/train_set.parquet")
    pd.DataFrame(
        [
            {"train_idx": i, "stage": s, "epoch": 1, "loss": 0.0, "margin": m, "correct": m > 0}
            for i, m in zip(idx, margin, strict=True)
            for s in (1, 2)
        ]
    ).to_parquet(tmp_path / "u10_s0/model/trajectory.parquet")
    pd.DataFrame({"idx": idx, "loss": 0.0}).to_parquet(
        tmp_path / "u10_s0/predictions/train.parquet"
    )
    probs = [np.full(4, 0.25) for _ in idx]
    probs[7] = np.array([0.1, 0.0, 0.0, 0.9])  # the clean model finds image 7's wrong label likely
    pred = list(original)
    pred[4] = 1  # the clean model gets clean image 4 wrong
    pd.DataFrame({"idx": idx, "pred": pred, "probs": probs}).to_parquet(
        tmp_path / "baseline_s0/predictions/train.parquet"
    )
    pd.DataFrame({"label": [0, 1, 2, 3], "class": ["Coat", "Trouser", "Bag", "Shirt"]}).to_parquet(
        tmp_path / "data/ds/manifest.parquet"
    )
    rows = aum_upto.missed_flips(tmp_path, "u10_s0", "baseline_s0", "ds")
    np.testing.assert_array_equal(rows["flipped"], noisy)
    np.testing.assert_array_equal(rows["top"], np.arange(10) == 4)  # margin -1.0, a clean image
    np.testing.assert_allclose(rows["clean_p_given"].iloc[[7, 9]], [0.9, 0.25])
    np.testing.assert_array_equal(rows["clean_wrong"], np.arange(10) == 4)
    # Coat -> Shirt stays among the tops; Trouser -> Bag does not; clean rows are never counted
    np.testing.assert_array_equal(rows["lookalike"], np.arange(10) == 7)
