"""Planted label noise, cleaning, and detection of the planted flips by a ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tracinflow._util.files import save_figure, write_parquet
from tracinflow.analysis.detection import (
    DETECTION_COLUMNS,
    detection_curve,
    detection_table,
    found_at,
    inspected_count,
)
from tracinflow.analysis.rankings import random_scores, suspicion_table
from tracinflow.data.train_set import (
    TRAIN_SET_COLUMNS,
    apply_cleaning,
    build_train_set,
    flip_labels,
)
from tracinflow.plots.detection import plot_detection
from tracinflow.stages.reports import noise_detection


def write_noise_detection(
    *, train_set_path, self_influence_path, train_predictions_path, error_self_influence_path,
    out_csv, out_png, default, seed=0, log,
):  # fmt: skip
    """The suspicion table of the version's score files, then the noise_detection rule's function
    called as the rule calls it."""
    train_set = pd.read_parquet(train_set_path)
    used = train_set.loc[~train_set["dropped"], "idx"].to_numpy()
    table = suspicion_table(
        used,
        pd.read_parquet(self_influence_path),
        pd.read_parquet(train_predictions_path),
        pd.read_parquet(error_self_influence_path),
        seed=seed,
    )
    suspicion = Path(out_csv).parent / "suspicion_scores.parquet"
    write_parquet(suspicion, table)
    inputs = {"train_set": train_set_path, "suspicion": suspicion}
    outputs = {"table": out_csv, "plot": out_png}
    return noise_detection(inputs, outputs, {"default": default}, log=log)


K = 5


def _labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, K, n)


def _manifest(n_train=40, n_val=10, n_test=10, seed=0):
    """A shuffled manifest with train, val and test rows (only the columns the noise code reads)."""
    n = n_train + n_val + n_test
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "idx": np.arange(n) + 1000,
            "path": [f"c/img_{i}.png" for i in range(n)],
            "label": rng.integers(0, K, n),
            "split": ["train"] * n_train + ["val"] * n_val + ["test"] * n_test,
        }
    )
    return frame.sample(frac=1, random_state=1).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# flip_labels


def test_flips_exactly_the_rounded_count():
    labels = _labels(1000)
    noisy = flip_labels(labels, K, 0.1, seed=3)
    assert (noisy != labels).sum() == 100
    # 0.25 * 10 = 2.5 rounds half up to 3 (Python's round() would give 2)
    assert (flip_labels(_labels(10), K, 0.25, seed=0) != _labels(10)).sum() == 3
    assert (flip_labels(labels, K, 0.0, seed=3) == labels).all()
    assert noisy.dtype == np.int64


def test_uniform_never_keeps_the_class_and_reaches_every_other():
    labels = _labels(1000)
    noisy = flip_labels(labels, K, 0.5, seed=1)
    changed = noisy != labels
    assert changed.sum() == 500
    pairs = set(zip(labels[changed].tolist(), noisy[changed].tolist(), strict=True))
    assert pairs == {(a, b) for a in range(K) for b in range(K) if a != b}
    # even with two classes a flip always moves to the other one
    two = np.array([0, 1] * 50)
    flipped = flip_labels(two, 2, 0.3, seed=0)
    assert ((flipped != two).sum(), set((flipped + two)[flipped != two])) == (30, {1})


def test_flips_are_deterministic_for_a_seed():
    labels = _labels(500)
    a = flip_labels(labels, K, 0.2, seed=7)
    np.testing.assert_array_equal(a, flip_labels(labels, K, 0.2, seed=7))
    b = flip_labels(labels, K, 0.2, seed=8)
    assert (a != b).any()
    assert set(np.flatnonzero(a != labels)) != set(np.flatnonzero(b != labels))


def test_confusing_goes_to_the_second_most_likely_class():
    labels = _labels(300)
    n = len(labels)
    second = (labels + 2) % K
    probs = np.full((n, K), 0.05)
    probs[np.arange(n), labels] = 0.6
    probs[np.arange(n), second] = 0.2
    noisy = flip_labels(labels, K, 0.3, seed=0, mode="confusing", reference_probs=probs)
    changed = noisy != labels
    assert changed.sum() == 90
    np.testing.assert_array_equal(noisy[changed], second[changed])
    # the same rows are flipped as in uniform mode with the same seed
    uniform = flip_labels(labels, K, 0.3, seed=0)
    np.testing.assert_array_equal(changed, uniform != labels)


def test_confusing_ties_go_to_the_lower_class_and_a_wrong_model_is_followed():
    labels = np.array([2, 0, 4])
    probs = np.array(
        [
            [0.1, 0.3, 0.2, 0.3, 0.1],  # 1 and 3 tie: 1
            [0.2, 0.1, 0.1, 0.5, 0.1],  # the model prefers 3 over the true 0
            [0.25, 0.0, 0.25, 0.0, 0.5],  # 0 and 2 tie: 0
        ]
    )
    noisy = flip_labels(labels, K, 0.99, seed=0, mode="confusing", reference_probs=probs)
    np.testing.assert_array_equal(noisy, [1, 3, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.0}, r"\[0, 1\)"),
        ({"rate": -0.1}, r"\[0, 1\)"),
        ({"num_classes": 1}, "at least 2"),
        ({"mode": "confusing"}, "reference_probs"),
        ({"mode": "confusing", "reference_probs": np.ones((9, K))}, "shape"),
        ({"mode": "confusing", "reference_probs": np.ones((10, K + 1))}, "shape"),
        ({"mode": "sideways"}, "mode"),
        ({"labels": np.array([0, 5])}, "0..4"),
    ],
)
def test_flip_errors(kwargs, message):
    args = {"labels": _labels(10), "num_classes": K, "rate": 0.2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        flip_labels(**args)


# --------------------------------------------------------------------------------------------------
# build_train_set


def test_train_set_holds_only_train_rows_with_their_manifest_labels():
    manifest = _manifest()
    out = build_train_set(manifest, {"rate": 0.25, "seed": 0, "mode": "uniform"}, num_classes=K)

    assert list(out.columns) == TRAIN_SET_COLUMNS
    train = manifest[manifest["split"] == "train"].sort_values("idx")
    np.testing.assert_array_equal(out["idx"], train["idx"])
    np.testing.assert_array_equal(out["original_label"], train["label"])
    assert out["noisy"].dtype == bool and out["dropped"].dtype == bool
    np.testing.assert_array_equal(out["noisy"], out["label"] != out["original_label"])
    assert out["noisy"].sum() == 10  # 0.25 of the 40 train rows
    assert not out["dropped"].any()
    # the row order given doesn't matter, the rows given do
    reordered = build_train_set(manifest.iloc[::-1], {"rate": 0.25, "seed": 0}, num_classes=K)
    pd.testing.assert_frame_equal(out, reordered)


def test_train_set_without_noise_copies_the_labels():
    train = _manifest(30, 0, 0)[["idx", "label"]]
    for noise in (None, {"rate": 0, "seed": 4}):
        out = build_train_set(train, noise)
        np.testing.assert_array_equal(out["label"], out["original_label"])
        assert not out["noisy"].any()
        assert len(out) == 30


def test_train_set_confusing_probs_follow_the_rows_given():
    manifest = _manifest()
    labels = manifest["label"].to_numpy()
    idx = manifest["idx"].to_numpy()
    # each row plants its own target class, so a misaligned row would pick another row's target
    target = (labels + 1 + idx % (K - 1)) % K
    probs = np.full((len(manifest), K), 0.1)
    probs[np.arange(len(manifest)), labels] = 0.5
    probs[np.arange(len(manifest)), target] = 0.3
    out = build_train_set(
        manifest, {"rate": 0.5, "seed": 2, "mode": "confusing"}, reference_probs=probs
    )
    expected = pd.Series(target, index=idx).loc[out["idx"]].to_numpy()
    noisy = out["noisy"].to_numpy()
    assert noisy.sum() == 20
    np.testing.assert_array_equal(out["label"][noisy], expected[noisy])


def test_train_set_rejects_unknown_noise_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        build_train_set(_manifest(), {"rate": 0.1, "sed": 1}, num_classes=K)


# --------------------------------------------------------------------------------------------------
# apply_cleaning


def _train_set():
    """idx 10..19; idx 12 and 14 carry a planted flip, idx 15 is already dropped."""
    original = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    label = original.copy()
    label[[2, 4]] = [3, 0]
    return pd.DataFrame(
        {
            "idx": np.arange(10, 20),
            "label": label,
            "original_label": original,
            "noisy": label != original,
            "dropped": np.arange(10) == 5,
        }
    )


# rank 1 is the already-dropped idx 15, so it must be skipped
SUSPECTS = pd.DataFrame(
    {"train_idx": [18, 12, 15, 19, 14, 11, 10], "rank": [3, 2, 1, 4, 5, 6, 7]}
).sample(frac=1, random_state=0)


def test_drop_count_drops_the_top_non_dropped_suspects():
    before = _train_set()
    out, acted = apply_cleaning(before, SUSPECTS, count=3)
    np.testing.assert_array_equal(acted, [12, 18, 19])
    assert set(out.loc[out["dropped"], "idx"]) == {15, 12, 18, 19}
    pd.testing.assert_frame_equal(out.drop(columns="dropped"), before.drop(columns="dropped"))
    pd.testing.assert_frame_equal(before, _train_set())  # the input is left as it was


def test_drop_fraction_rounds_half_up_with_at_least_one():
    # 9 rows are not dropped
    for fraction, expected in ((0.25, [12, 18]), (0.5, [12, 18, 19, 14, 11]), (0.01, [12])):
        out, acted = apply_cleaning(_train_set(), SUSPECTS, fraction=fraction)
        np.testing.assert_array_equal(acted, expected)
        assert out["dropped"].sum() == 1 + len(expected)
    _, acted = apply_cleaning(_train_set(), SUSPECTS, fraction=0)
    assert len(acted) == 0


def test_relabel_sets_the_prediction_and_recomputes_noisy():
    predicted = pd.Series([0, 1, 2, 3, 4, 0, 1, 2, 3, 1], index=np.arange(10, 20))
    out, acted = apply_cleaning(
        _train_set(), SUSPECTS, count=3, action="relabel", predicted=predicted
    )
    np.testing.assert_array_equal(acted, [12, 18, 19])
    row = out.set_index("idx")
    # idx 12 had a planted flip 2 -> 3; the model says 2: restored, no longer noisy
    assert (row.loc[12, "label"], row.loc[12, "noisy"]) == (2, False)
    # idx 18 was clean and the model agrees: unchanged
    assert (row.loc[18, "label"], row.loc[18, "noisy"]) == (3, False)
    # idx 19 was clean, the model says 1: now differs from the manifest
    assert (row.loc[19, "label"], row.loc[19, "noisy"]) == (1, True)
    # idx 14 (a flip not acted on) keeps its noise; nothing is dropped by relabelling
    assert (row.loc[14, "label"], row.loc[14, "noisy"]) == (0, True)
    np.testing.assert_array_equal(out["dropped"], _train_set()["dropped"])
    np.testing.assert_array_equal(out["original_label"], _train_set()["original_label"])


def test_cleaning_a_manifest_train_set_never_brings_in_val_or_test():
    manifest = _manifest()
    train_set = build_train_set(manifest, {"rate": 0.2, "seed": 0}, num_classes=K)
    suspects = pd.DataFrame({"train_idx": train_set["idx"][::-1], "rank": np.arange(1, 41)})
    out, _ = apply_cleaning(train_set, suspects, fraction=0.1)
    assert set(out["idx"]) == set(manifest.loc[manifest["split"] == "train", "idx"])
    assert out["dropped"].sum() == 4
    val_idx = manifest.loc[manifest["split"] == "val", "idx"].iloc[0]
    with pytest.raises(KeyError, match="missing from the train set"):
        apply_cleaning(train_set, pd.DataFrame({"train_idx": [val_idx], "rank": [1]}), count=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"count": 1, "fraction": 0.1}, ValueError, "exactly one"),
        ({}, ValueError, "exactly one"),
        ({"count": 7}, ValueError, "only 6 suspects"),
        ({"count": 1, "action": "relabel"}, ValueError, "predictions"),
        ({"count": 1, "action": "burn"}, ValueError, "action"),
        ({"fraction": 1.5}, ValueError, "fraction"),
    ],
)
def test_cleaning_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        apply_cleaning(_train_set(), SUSPECTS, **kwargs)


# --------------------------------------------------------------------------------------------------
# detection

# Hand-worked example: by score, highest first (the 0.8 tie keeps position order, 2 before 3):
# position 0 (clean), 2 (flip), 3, 7, 9, 5 (flip), 8, 4, 6, 1 (flip).
SCORES = np.array([0.9, 0.1, 0.8, 0.8, 0.3, 0.5, 0.2, 0.7, 0.4, 0.6])
FLIPPED = np.array([0, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=bool)


def test_detection_curve_by_hand():
    x, y = detection_curve(SCORES, FLIPPED)
    np.testing.assert_allclose(x, np.arange(11) / 10)
    np.testing.assert_allclose(y, np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]) / 3)
    # all scores tied: rows are inspected in their given order
    flipped = np.random.default_rng(0).random(1000) < 0.1
    x, y = detection_curve(np.zeros(1000), flipped)
    np.testing.assert_allclose(y[1:], np.cumsum(flipped) / flipped.sum())


def test_found_at_inspects_the_ceil_of_the_fraction():
    assert inspected_count(10, 0.05) == 1
    assert inspected_count(10, 0.12) == 2  # ceil(1.2); round would inspect 1
    assert inspected_count(100, 0.07) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert inspected_count(1000, 0.1) == 100
    assert found_at(SCORES, FLIPPED, 0.05) == 0.0
    assert found_at(SCORES, FLIPPED, 0.12) == pytest.approx(1 / 3)
    assert found_at(SCORES, FLIPPED, 0.6) == pytest.approx(2 / 3)
    assert found_at(SCORES, FLIPPED, 1.0) == 1.0


def test_detection_table_perfect_reversed_and_hand_worked():
    n = 1000
    flipped = np.zeros(n, dtype=bool)
    flipped[np.random.default_rng(0).choice(n, 100, replace=False)] = True
    perfect = flipped + np.random.default_rng(1).random(n) * 0.5
    table = detection_table(
        {"perfect": perfect, "reversed": -perfect, "example": np.resize(SCORES, n)},
        flipped,
        default="reversed",
    )
    assert list(table.columns) == DETECTION_COLUMNS
    assert table["ranking"].tolist() == ["perfect", "reversed", "example"]
    assert table["default"].tolist() == [False, True, False]
    best = table.iloc[0]
    assert (best.found_at_5pct, best.found_at_10pct, best.found_at_20pct) == (0.5, 1.0, 1.0)
    assert best.roc_auc == 1.0 and best.average_precision == 1.0
    worst = table.iloc[1]
    assert (worst.found_at_5pct, worst.roc_auc) == (0.0, 0.0)

    small = detection_table({"example": SCORES}, FLIPPED, default="example").iloc[0]
    # positives 0.8, 0.5, 0.1 against 7 negatives: 5 + 0.5 (tie) + 3 + 0 of 21 pairs
    assert small.roc_auc == pytest.approx(8.5 / 21)
    # sklearn steps by distinct score; recall rises by 1/3 at 0.8 (tie: 1 flip in 3 rows),
    # at 0.5 (2 in 6) and at 0.1 (3 in 10)
    assert small.average_precision == pytest.approx((1 / 3 + 2 / 6 + 3 / 10) / 3)


def test_random_ranking_is_near_the_diagonal():
    n = 20000
    flipped = np.zeros(n, dtype=bool)
    flipped[: n // 10] = True
    scores = random_scores(n, seed=5)
    np.testing.assert_array_equal(scores, random_scores(n, seed=5))
    assert not np.array_equal(scores, random_scores(n, seed=6))
    row = detection_table({"random": scores}, flipped, default="random").iloc[0]
    assert abs(row.roc_auc - 0.5) < 0.03
    assert abs(row.found_at_10pct - 0.1) < 0.03
    assert abs(row.average_precision - 0.1) < 0.03


def test_detection_needs_planted_flips_and_a_known_default():
    with pytest.raises(ValueError, match="nothing was planted"):
        detection_table({"a": SCORES}, np.zeros(10, dtype=bool), default="a")
    with pytest.raises(ValueError, match="nothing was planted"):
        detection_curve(SCORES, np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="default"):
        detection_table({"a": SCORES}, FLIPPED, default="b")
    with pytest.raises(ValueError, match="must be equal"):
        detection_table({"a": SCORES[:5]}, FLIPPED, default="a")


def _assert_png(path, size=(840, 600)):
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn


def test_plot_detection_writes_a_png(tmp_path):
    curves = {
        "example": detection_curve(SCORES, FLIPPED),
        "random": detection_curve(random_scores(10, 0), FLIPPED),
    }
    path = tmp_path / "sub" / "detection.png"
    save_figure(plot_detection(curves, default="example", title="test"), path)
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["detection.png"]  # no temporary left
    with pytest.raises(ValueError, match="default"):
        plot_detection(curves, default="loss", title="test")


# --------------------------------------------------------------------------------------------------
# write_noise_detection


def _version_files(tmp_path, *, drop_extra=False):
    """A 60-row train set with 12 flips, one flipped row dropped; score files in shuffled order.

    Self-influence ranks every flip first except the dropped one, which it ranks last: the AUC is 1
    only when dropped rows are left out.
    """
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"idx": np.arange(500, 560), "label": rng.integers(0, K, 60)})
    train_set = build_train_set(train, {"rate": 0.2, "seed": 1}, num_classes=K)
    flipped_idx = train_set.loc[train_set["noisy"], "idx"].to_numpy()
    train_set.loc[train_set["idx"] == flipped_idx[0], "dropped"] = True
    write_parquet(tmp_path / "train_set.parquet", train_set)

    noisy = train_set["noisy"].to_numpy()
    total = noisy + rng.random(60) * 0.5
    total[train_set["idx"] == flipped_idx[0]] = -1.0
    self_inf = pd.DataFrame(
        {
            "train_idx": train_set["idx"],
            "self_influence": total,
            "rank": 0,
            "self_influence_epoch_003": total / 2,
            "self_influence_epoch_001": rng.random(60),
        }
    ).sample(frac=1, random_state=2)
    if drop_extra:
        self_inf = self_inf[self_inf["train_idx"] != train_set["idx"].iloc[-1]]
    write_parquet(tmp_path / "self_influence.parquet", self_inf)
    error = self_inf[["train_idx"]].assign(self_influence=rng.random(len(self_inf)), rank=0)
    write_parquet(tmp_path / "error_self_influence.parquet", error)
    predictions = pd.DataFrame(
        {
            "idx": train_set["idx"],
            "label": train_set["label"],
            "pred": train_set["label"],
            "confidence": 0.9,
            "loss": -total,  # a ranking that gets it backwards
            "probs": [[0.2] * K] * 60,
        }
    ).sample(frac=1, random_state=3)
    write_parquet(tmp_path / "train_pred.parquet", predictions)


def test_write_noise_detection(tmp_path):
    _version_files(tmp_path)
    lines = []
    table = write_noise_detection(
        train_set_path=tmp_path / "train_set.parquet",
        self_influence_path=tmp_path / "self_influence.parquet",
        train_predictions_path=tmp_path / "train_pred.parquet",
        error_self_influence_path=tmp_path / "error_self_influence.parquet",
        default="self_influence",
        out_csv=tmp_path / "out" / "noise_detection.csv",
        out_png=tmp_path / "out" / "noise_detection.png",
        seed=0,
        log=lines.append,
    )
    # the checkpoints' own columns (epochs 1 and 3) are the first and the last: listed once, under
    # the names that are the same for every version
    names = [
        "self_influence",
        "self_influence_first",
        "self_influence_last",
        "self_influence_normalized",
        "error_self_influence",
        "loss",
        "combined",
        "error_combined",
        "random",
    ]
    on_disk = pd.read_csv(tmp_path / "out" / "noise_detection.csv")
    assert list(on_disk.columns) == DETECTION_COLUMNS
    assert on_disk["ranking"].tolist() == names
    assert on_disk["default"].tolist() == [True] + [False] * (len(names) - 1)
    pd.testing.assert_frame_equal(on_disk, table)
    by_name = table.set_index("ranking")
    assert by_name.loc["self_influence", "roc_auc"] == 1.0  # the dropped flip is left out
    assert by_name.loc["self_influence_last", "roc_auc"] == 1.0
    assert by_name.loc["loss", "roc_auc"] == 0.0
    assert by_name.loc["self_influence", "found_at_20pct"] == 1.0  # 11 flips in the top 12 of 59
    _assert_png(tmp_path / "out" / "noise_detection.png")
    assert len(lines) == len(names)
    assert "self_influence (default)" in lines[0]


def test_write_noise_detection_with_missing_scores(tmp_path):
    _version_files(tmp_path, drop_extra=True)
    with pytest.raises(KeyError, match="missing from"):
        write_noise_detection(
            train_set_path=tmp_path / "train_set.parquet",
            self_influence_path=tmp_path / "self_influence.parquet",
            train_predictions_path=tmp_path / "train_pred.parquet",
            error_self_influence_path=tmp_path / "error_self_influence.parquet",
            default="loss",
            out_csv=tmp_path / "d.csv",
            out_png=tmp_path / "d.png",
            log=lambda line: None,
        )
