"""Influence reports on hand-made tables whose answers are known: cross analysis, same-error rates,
the mislabeled-image ranking, influential samples, class influence, the text report and the files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tracinflow._util import files as io
from tracinflow.analysis.rankings import suspicion_table
from tracinflow.analysis.report_text import influence_report_text
from tracinflow.analysis.reports import (
    CROSS_COLUMNS,
    INFLUENTIAL_COLUMNS,
    INSPECTION_COLUMNS,
    NO_MISPREDICTIONS,
    class_influence,
    influential_samples,
    mislabeled_inspection,
    misprediction_cross_analysis,
    same_error_rates,
)
from tracinflow.data.split import class_names_of
from tracinflow.stages.reports import report_tables

# The report_tables rule's outputs, by the names the rule gives them.
REPORT_FILES = {
    "cross": "misprediction_cross_analysis.csv",
    "cross_parquet": "misprediction_cross_analysis.parquet",
    "inspection": "mislabeled_inspection_report.csv",
    "influential": "influential_samples.csv",
    "class_influence": "class_influence.csv",
    "text": "influence_report.txt",
}

CLASSES = ["cat", "dog", "horse"]

# The planted example. Train idx 0..5, val 6..7, test 10..13.
TRAIN_IDX = np.arange(6)
TRAIN_LABEL = [0, 0, 1, 0, 2, 1]
TRAIN_PRED = [0, 1, 1, 2, 2, 1]  # 1: cat mispredicted as dog; 3: cat mispredicted as horse
TEST_IDX = np.array([10, 11, 12, 13])
TEST_LABEL = [0, 1, 2, 1]
TEST_PRED = [1, 1, 2, 0]  # 10: cat mispredicted as dog; 13: dog mispredicted as cat
# influence[test row, train row]; with k = 2 the top-k of each test image are read off by hand.
INFLUENCE = np.array(
    [
        [-2.0, 5.0, 3.0, -7.0, 0.5, -0.5],  # 10: proponents 1, 2; opponents 3, 0
        [0.1, 0.2, 2.0, -0.2, -0.1, 1.0],  # 11: proponents 2, 5; opponents 3, 4
        [0.0, -1.5, 0.3, 0.4, 2.5, -0.6],  # 12: proponents 4, 3; opponents 1, 5
        [4.0, -6.0, 1.0, -1.0, 0.2, -0.3],  # 13: proponents 0, 2; opponents 1, 3
    ]
)


def make_manifest(train_labels, test_labels, class_names, val_labels=(0, 1), test_start=None):
    """Manifest rows: train idx 0.., then val, then test (from ``test_start`` when given)."""
    n_train, n_val = len(train_labels), len(val_labels)
    test_start = n_train + n_val if test_start is None else test_start
    parts = [
        (np.arange(n_train), train_labels, "train"),
        (np.arange(n_train, n_train + n_val), val_labels, "val"),
        (np.arange(test_start, test_start + len(test_labels)), test_labels, "test"),
    ]
    rows = []
    for idx, labels, split in parts:
        for i, label in zip(idx, labels, strict=True):
            rows.append(
                {
                    "idx": int(i),
                    "path": f"{class_names[label]}/img_{i:05d}.png",
                    "class": class_names[label],
                    "label": int(label),
                    "split": split,
                    "sha256": f"{i:064x}",
                    "width": 32,
                    "height": 32,
                }
            )
    return pd.DataFrame(rows)


def make_predictions(idx, labels, preds, loss=None, num_classes=3) -> pd.DataFrame:
    idx = np.asarray(idx, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    probs = np.full((len(idx), num_classes), 0.1 / max(num_classes - 1, 1))
    probs[np.arange(len(idx)), preds] = 0.9
    loss = np.linspace(0.1, 1.0, len(idx)) if loss is None else np.asarray(loss, np.float64)
    return pd.DataFrame(
        {
            "idx": idx,
            "label": np.asarray(labels, dtype=np.int64),
            "pred": preds,
            "confidence": probs.max(axis=1),
            "loss": loss,
            "probs": probs.tolist(),
        }
    )


def topk_from_matrix(influence, test_idx, train_idx, k) -> pd.DataFrame:
    """Brute-force top-k by plain sorting: proponents largest first, opponents most negative first,
    ties by the lower train idx."""
    rows = []
    for t, test in enumerate(test_idx):
        pairs = [(float(influence[t, j]), int(train)) for j, train in enumerate(train_idx)]
        for kind, key in (
            ("proponent", lambda p: (-p[0], p[1])),
            ("opponent", lambda p: (p[0], p[1])),
        ):
            for rank, (value, train) in enumerate(sorted(pairs, key=key)[:k], start=1):
                rows.append((int(test), kind, rank, train, value))
    return pd.DataFrame(rows, columns=["test_idx", "kind", "rank", "train_idx", "influence"])


def make_self_influence(train_idx, scores) -> pd.DataFrame:
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((train_idx, -scores))
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    frame = pd.DataFrame(
        {
            "train_idx": train_idx,
            "self_influence": scores,
            "rank": rank,
            "self_influence_epoch_001": scores,
        }
    )
    return frame.iloc[order].reset_index(drop=True)


@pytest.fixture
def planted():
    manifest = make_manifest(TRAIN_LABEL, TEST_LABEL, CLASSES, test_start=10)
    # Shuffled rows: the functions must order the output themselves.
    topk = topk_from_matrix(INFLUENCE, TEST_IDX, TRAIN_IDX, k=2).sample(frac=1.0, random_state=3)
    return {
        "manifest": manifest,
        "train_pred": make_predictions(TRAIN_IDX, TRAIN_LABEL, TRAIN_PRED),
        "test_pred": make_predictions(TEST_IDX, TEST_LABEL, TEST_PRED),
        "topk": topk.reset_index(drop=True),
        "self_influence": make_self_influence(TRAIN_IDX, [0.5, 3.0, 0.1, 6.0, 0.2, 0.3]),
    }


def cross_of(data) -> pd.DataFrame:
    return misprediction_cross_analysis(
        data["topk"], data["test_pred"], data["train_pred"], CLASSES
    )


# --------------------------------------------------------------------------------------------------
# misprediction cross analysis


def test_planted_top_opponent_comes_first_with_rank_1(planted):
    cross = cross_of(planted)

    assert list(cross.columns) == CROSS_COLUMNS
    opponents = cross[(cross["test_idx"] == 10) & (cross["kind"] == "opponent")]
    first = opponents.iloc[0]
    assert (first["train_idx"], first["rank"], first["influence"]) == (3, 1, -7.0)
    assert opponents["train_idx"].tolist() == [3, 0]
    assert opponents["rank"].tolist() == [1, 2]


def test_cross_holds_only_mispredicted_test_images_in_order(planted):
    cross = cross_of(planted)

    assert len(cross) == 2 * 2 * 2  # two mispredicted test images, k = 2 per kind
    assert cross["test_idx"].tolist() == [10] * 4 + [13] * 4
    assert cross["kind"].tolist() == ["proponent"] * 2 + ["opponent"] * 2 + (
        ["proponent"] * 2 + ["opponent"] * 2
    )
    assert cross["rank"].tolist() == [1, 2, 1, 2] * 2
    assert cross["train_idx"].tolist() == [1, 2, 3, 0, 0, 2, 1, 3]
    assert cross["influence"].tolist() == [5.0, 3.0, -7.0, -2.0, 4.0, 1.0, -6.0, -1.0]
    row = cross.iloc[0]
    assert (row["test_true"], row["test_pred"], row["train_true"], row["train_pred"]) == (
        "cat",
        "dog",
        "cat",
        "dog",
    )
    assert set(cross.loc[cross["test_idx"] == 13, "test_true"]) == {"dog"}
    assert set(cross.loc[cross["test_idx"] == 13, "test_pred"]) == {"cat"}


def test_same_error_only_for_the_same_wrong_class(planted):
    cross = cross_of(planted).set_index(["test_idx", "train_idx"])

    # Test 10 is cat -> dog; train 1 is cat -> dog: the same mistake.
    assert bool(cross.loc[(10, 1), "same_error"]) is True
    # Train 3 is cat -> horse: mispredicted, but into a different class.
    assert bool(cross.loc[(10, 3), "same_error"]) is False
    # Train 2 is predicted dog like test 10, but correctly (it is a dog).
    assert bool(cross.loc[(10, 2), "same_error"]) is False
    # Test 13 is dog -> cat; train 1 (cat -> dog) is the reverse mistake.
    assert bool(cross.loc[(13, 1), "same_error"]) is False
    assert int(cross["same_error"].sum()) == 1


def test_same_error_rates_per_kind(planted):
    rates = same_error_rates(cross_of(planted))

    assert rates == {"proponent": 0.25, "opponent": 0.0}


def test_no_mispredictions_give_an_empty_table_with_the_columns(planted):
    test_pred = make_predictions(TEST_IDX, TEST_LABEL, TEST_LABEL)

    cross = misprediction_cross_analysis(planted["topk"], test_pred, planted["train_pred"], CLASSES)

    assert cross.empty
    assert list(cross.columns) == CROSS_COLUMNS
    rates = same_error_rates(cross)
    assert np.isnan(rates["proponent"]) and np.isnan(rates["opponent"])


def test_topk_row_of_an_unknown_test_image_is_an_error(planted):
    test_pred = planted["test_pred"][planted["test_pred"]["idx"] != 11]

    with pytest.raises(KeyError, match="test predictions"):
        misprediction_cross_analysis(planted["topk"], test_pred, planted["train_pred"], CLASSES)


def test_unknown_kind_is_an_error(planted):
    topk = planted["topk"].copy()
    topk.loc[0, "kind"] = "neutral"

    with pytest.raises(ValueError, match="neutral"):
        misprediction_cross_analysis(topk, planted["test_pred"], planted["train_pred"], CLASSES)


# --------------------------------------------------------------------------------------------------
# mislabeled inspection


def inspection_from(
    self_influence, train_pred, cross, manifest, class_names, ranking="self_influence"
):
    """mislabeled_inspection on the suspicion table of these self-influence scores and losses."""
    idx = np.union1d(train_pred["idx"], self_influence["train_idx"])
    suspicion = suspicion_table(idx, self_influence, train_pred)
    return mislabeled_inspection(suspicion, train_pred, cross, manifest, class_names, ranking)


def inspect(data, ranking="self_influence", cross=None):
    return inspection_from(
        data["self_influence"],
        data["train_pred"],
        cross_of(data) if cross is None else cross,
        data["manifest"],
        CLASSES,
        ranking=ranking,
    )


def test_inspection_counts_appearances_among_mispredicted_test_images(planted):
    report = inspect(planted).set_index("train_idx")

    assert list(inspect(planted).columns) == INSPECTION_COLUMNS
    assert report["opponent_count"].to_dict() == {0: 1, 1: 1, 2: 0, 3: 2, 4: 0, 5: 0}
    assert report["proponent_count"].to_dict() == {0: 1, 1: 1, 2: 2, 3: 0, 4: 0, 5: 0}
    assert report["same_error_count"].to_dict() == {0: 0, 1: 1, 2: 0, 3: 0, 4: 0, 5: 0}
    assert report.loc[3, "true_label"] == "cat"
    assert report.loc[3, "predicted_label"] == "horse"
    assert report.loc[3, "image_path"] == "cat/img_00003.png"


def test_inspection_covers_every_training_image_ranked_by_self_influence(planted):
    report = inspect(planted)

    assert report["train_idx"].tolist() == [3, 1, 0, 5, 4, 2]
    assert report["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(report["ranking"]) == {"self_influence"}
    assert report["suspicion"].tolist() == [6.0, 3.0, 0.5, 0.3, 0.2, 0.1]
    assert report["self_influence_rank"].tolist() == [1, 2, 3, 4, 5, 6]


RANKING_IDX = np.arange(5)
RANKING_SELF = [5.0, 4.0, 3.0, 2.0, 1.0]
RANKING_LOSS = [1.0, 9.0, 2.0, 8.0, 3.0]


def ranking_inputs(loss_scale=1.0):
    labels = [0, 1, 0, 1, 0]
    manifest = make_manifest(labels, [0, 1], ["a", "b"])
    train_pred = make_predictions(
        RANKING_IDX, labels, labels, loss=np.asarray(RANKING_LOSS) * loss_scale, num_classes=2
    )
    cross = pd.DataFrame({c: [] for c in CROSS_COLUMNS})
    return make_self_influence(RANKING_IDX, RANKING_SELF), train_pred, cross, manifest


@pytest.mark.parametrize(
    ("ranking", "order"),
    [
        ("self_influence", [0, 1, 2, 3, 4]),
        ("loss", [1, 3, 4, 2, 0]),
        # Percentile ranks (self, loss): 0 (1.0, 0.2), 1 (0.8, 1.0), 2 (0.6, 0.4), 3 (0.4, 0.8),
        # 4 (0.2, 0.6); means 0.6, 0.9, 0.5, 0.6, 0.4: images 0 and 3 tie, the lower idx first.
        ("combined", [1, 0, 3, 2, 4]),
    ],
)
def test_each_ranking_gives_the_known_order(ranking, order):
    report = inspection_from(*ranking_inputs(), ["a", "b"], ranking=ranking)

    assert report["train_idx"].tolist() == order
    assert report["rank"].tolist() == [1, 2, 3, 4, 5]
    assert set(report["ranking"]) == {ranking}
    by_idx = report.set_index("train_idx")
    assert by_idx["loss_rank"].to_dict() == {1: 1, 3: 2, 4: 3, 2: 4, 0: 5}
    assert by_idx["self_influence_rank"].to_dict() == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}


def test_combined_score_is_the_mean_percentile_and_ignores_scale():
    small = inspection_from(*ranking_inputs(), ["a", "b"], ranking="combined")
    large = inspection_from(*ranking_inputs(1e6), ["a", "b"], ranking="combined")

    expected = {0: 0.6, 1: 0.9, 2: 0.5, 3: 0.6, 4: 0.4}
    assert small.set_index("train_idx")["suspicion"].to_dict() == pytest.approx(expected)
    assert small["train_idx"].tolist() == large["train_idx"].tolist()
    assert small["suspicion"].tolist() == large["suspicion"].tolist()


def test_unknown_ranking_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"self_influence.*loss.*combined"):
        inspection_from(*ranking_inputs(), ["a", "b"], ranking="margin")


def test_training_image_missing_from_self_influence_is_an_error(planted):
    planted["self_influence"] = planted["self_influence"][
        planted["self_influence"]["train_idx"] != 4
    ]

    with pytest.raises(KeyError, match=r"self_influence, e\.g\. \[4\]"):
        inspect(planted)


def test_training_image_missing_from_the_predictions_is_an_error(planted):
    planted["train_pred"] = planted["train_pred"][planted["train_pred"]["idx"] != 5]
    cross = misprediction_cross_analysis(
        planted["topk"][planted["topk"]["train_idx"] != 5],
        planted["test_pred"],
        planted["train_pred"],
        CLASSES,
    )

    with pytest.raises(KeyError, match=r"train predictions, e\.g\. \[5\]"):
        inspect(planted, cross=cross)


# --------------------------------------------------------------------------------------------------
# influential samples and class influence


def test_influential_samples_sum_every_appearance(planted):
    table = influential_samples(
        planted["topk"], planted["train_pred"], planted["manifest"], CLASSES
    )

    assert list(table.columns) == INFLUENTIAL_COLUMNS
    # Most helpful first, most harmful last.
    assert table["train_idx"].tolist() == [2, 4, 0, 5, 1, 3]
    by_idx = table.set_index("train_idx")
    assert by_idx["influence_sum"].to_dict() == pytest.approx(
        {2: 6.0, 4: 2.4, 0: 2.0, 5: 0.4, 1: -2.5, 3: -7.8}
    )
    assert by_idx["appearances"].to_dict() == {2: 3, 4: 2, 0: 2, 5: 2, 1: 3, 3: 4}
    assert by_idx["proponent_count"].to_dict() == {2: 3, 4: 1, 0: 1, 5: 1, 1: 1, 3: 1}
    assert by_idx["opponent_count"].to_dict() == {2: 0, 4: 1, 0: 1, 5: 1, 1: 2, 3: 3}
    assert by_idx.loc[1, "influence_mean"] == pytest.approx(-2.5 / 3)
    assert by_idx.loc[3, "proponent_sum"] == pytest.approx(0.4)
    assert by_idx.loc[3, "opponent_sum"] == pytest.approx(-8.2)
    assert by_idx.loc[1, "predicted_label"] == "dog"
    assert by_idx.loc[1, "image_path"] == "cat/img_00001.png"


def test_influential_samples_break_ties_by_the_lower_train_idx():
    topk = pd.DataFrame(
        {
            "test_idx": [9, 9, 9, 9],
            "kind": ["proponent", "proponent", "opponent", "opponent"],
            "rank": [1, 2, 1, 2],
            "train_idx": [4, 1, 0, 3],
            "influence": [2.0, 2.0, -1.0, -1.0],
        }
    )
    manifest = make_manifest([0, 1, 0, 1, 0], [0], ["a", "b"], test_start=9)
    train_pred = make_predictions(np.arange(5), [0, 1, 0, 1, 0], [0, 1, 0, 1, 0], num_classes=2)

    table = influential_samples(topk, train_pred, manifest, ["a", "b"])

    assert table["train_idx"].tolist() == [1, 4, 0, 3]


def test_class_influence_sums_by_true_classes(planted):
    table = class_influence(planted["topk"], planted["test_pred"], planted["train_pred"], CLASSES)

    assert list(table.columns) == ["train_class", *CLASSES]
    assert table["train_class"].tolist() == CLASSES
    expected = np.array(
        [
            [-4.0, -3.2, -1.1],  # cat training images on cat, dog, horse test images
            [3.0, 4.0, -0.6],
            [0.0, -0.1, 2.5],
        ]
    )
    np.testing.assert_allclose(table[CLASSES].to_numpy(), expected, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# scale: k larger than the train split, 100 classes


def test_k_larger_than_the_train_split():
    train_idx, test_idx = np.arange(3), np.array([5, 6])
    influence = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -0.1]])
    topk = topk_from_matrix(influence, test_idx, train_idx, k=5)
    assert len(topk) == 2 * 2 * 3  # all three train images per kind, not five
    manifest = make_manifest([0, 1, 1], [0, 1], ["a", "b"], test_start=5)
    train_pred = make_predictions(train_idx, [0, 1, 1], [0, 0, 1], num_classes=2)
    test_pred = make_predictions(test_idx, [0, 1], [1, 1], num_classes=2)

    cross = misprediction_cross_analysis(topk, test_pred, train_pred, ["a", "b"])
    inspection = inspection_from(
        make_self_influence(train_idx, [1.0, 2.0, 3.0]), train_pred, cross, manifest, ["a", "b"]
    )
    influential = influential_samples(topk, train_pred, manifest, ["a", "b"])

    assert len(cross) == 6
    assert cross["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert cross.loc[cross["kind"] == "opponent", "train_idx"].tolist() == [1, 2, 0]
    # Train 1 (b predicted a) shares test 5's mistake (a predicted b)? No: a different direction.
    assert not cross["same_error"].any()
    assert inspection["opponent_count"].tolist() == [1, 1, 1]
    assert sorted(influential["train_idx"]) == [0, 1, 2]
    text = influence_report_text(
        version="v_small",
        manifest=manifest,
        metrics={"test": {"accuracy": 0.5, "loss": 0.7, "n": 2}},
        checkpoints=[],
        test_pred=test_pred,
        train_pred=train_pred,
        topk=topk,
        cross=cross,
        inspection=inspection,
        influential=influential,
        k=5,
    )
    assert "k = 5 (3 per kind available)" in text


def reference_cross(topk, test_pred, train_pred, names) -> pd.DataFrame:
    """Row by row, the obvious way."""
    test = test_pred.set_index("idx")
    train = train_pred.set_index("idx")
    rows = []
    for r in topk.itertuples(index=False):
        t_label, t_pred = test.loc[r.test_idx, "label"], test.loc[r.test_idx, "pred"]
        if t_label == t_pred:
            continue
        s_label, s_pred = train.loc[r.train_idx, "label"], train.loc[r.train_idx, "pred"]
        rows.append(
            {
                "test_idx": r.test_idx,
                "test_true": names[t_label],
                "test_pred": names[t_pred],
                "train_idx": r.train_idx,
                "train_true": names[s_label],
                "train_pred": names[s_pred],
                "influence": r.influence,
                "rank": r.rank,
                "kind": r.kind,
                "same_error": bool(s_pred == t_pred and s_pred != s_label),
            }
        )
    frame = pd.DataFrame(rows, columns=CROSS_COLUMNS)
    frame["kind_order"] = (frame["kind"] == "opponent").astype(int)
    frame = frame.sort_values(["test_idx", "kind_order", "rank"]).drop(columns="kind_order")
    return frame.reset_index(drop=True)


def test_hundred_classes_match_a_row_by_row_reference():
    rng = np.random.default_rng(0)
    names = [f"class_{c:03d}" for c in range(100)]
    n_train, n_test, k = 400, 150, 6
    train_labels = rng.integers(0, 100, n_train)
    test_labels = rng.integers(0, 100, n_test)
    manifest = make_manifest(train_labels, test_labels, names, val_labels=[0])
    train_idx = manifest.loc[manifest["split"] == "train", "idx"].to_numpy()
    test_idx = manifest.loc[manifest["split"] == "test", "idx"].to_numpy()
    # Few distinct wrong classes, so some training images share a test image's mistake.
    train_guess = np.where(rng.random(n_train) < 0.3, rng.integers(0, 3, n_train), train_labels)
    test_guess = np.where(rng.random(n_test) < 0.4, rng.integers(0, 3, n_test), test_labels)
    train_pred = make_predictions(
        train_idx, train_labels, train_guess, rng.random(n_train), num_classes=100
    )
    test_pred = make_predictions(test_idx, test_labels, test_guess, num_classes=100)
    influence = rng.normal(size=(n_test, n_train)).round(2)  # rounding makes ties
    topk = topk_from_matrix(influence, test_idx, train_idx, k)

    cross = misprediction_cross_analysis(topk, test_pred, train_pred, names)
    expected = reference_cross(topk, test_pred, train_pred, names)
    pd.testing.assert_frame_equal(cross, expected, check_dtype=False)
    assert cross["same_error"].any() and not cross["same_error"].all()

    table = class_influence(topk, test_pred, train_pred, names)
    assert table.shape == (100, 101)
    assert list(table.columns) == ["train_class", *names]
    train_class = dict(zip(train_idx, train_labels, strict=True))
    test_class = dict(zip(test_idx, test_labels, strict=True))
    by_hand = np.zeros((100, 100))
    for r in topk.itertuples(index=False):
        by_hand[train_class[r.train_idx], test_class[r.test_idx]] += r.influence
    np.testing.assert_allclose(table[names].to_numpy(), by_hand, atol=1e-9)

    inspection = inspection_from(
        make_self_influence(train_idx, rng.random(n_train)),
        train_pred,
        cross,
        manifest,
        names,
        ranking="combined",
    )
    assert len(inspection) == n_train
    assert inspection["opponent_count"].sum() == (cross["kind"] == "opponent").sum()
    assert inspection["same_error_count"].sum() == cross["same_error"].sum()


# --------------------------------------------------------------------------------------------------
# text report and files

CHECKPOINTS = [
    {"epoch": 3, "file": "epoch_003.pt", "lr_head": 0.01, "lr_backbone": 0.001, "val_loss": 0.91},
    {"epoch": 7, "file": "epoch_007.pt", "lr_head": 0.005, "lr_backbone": 0.0005, "val_loss": 0.62},
]
METRICS = {
    "train": {"accuracy": 0.6667, "loss": 0.4, "n": 6},
    "val": {"accuracy": 0.5, "loss": 0.8, "n": 2},
    "test": {"accuracy": 0.5, "loss": 0.9, "n": 4},
    "per_class": {},
    "confusion_matrix": [],
}


def report_text(data, test_pred=None, ranking="self_influence", top_n=10):
    test_pred = data["test_pred"] if test_pred is None else test_pred
    cross = misprediction_cross_analysis(data["topk"], test_pred, data["train_pred"], CLASSES)
    return influence_report_text(
        version="v_planted",
        manifest=data["manifest"],
        metrics=METRICS,
        checkpoints=CHECKPOINTS,
        test_pred=test_pred,
        train_pred=data["train_pred"],
        topk=data["topk"],
        cross=cross,
        inspection=inspect(data, ranking, cross=cross),
        influential=influential_samples(
            data["topk"], data["train_pred"], data["manifest"], CLASSES
        ),
        k=2,
        top_n=top_n,
    )


def section(text: str, heading: str) -> str:
    """The lines from ``heading`` up to the next blank line."""
    start = text.index(heading)
    end = text.find("\n\n", start)
    return text[start : end if end >= 0 else len(text)]


def test_report_text_shows_the_run_at_a_glance(planted):
    text = report_text(planted, ranking="loss", top_n=2)

    assert "v_planted" in text
    assert "Dataset: 12 images, 3 classes" in text
    assert "epoch_007.pt" in text and "0.0005" in text
    assert "Mispredicted test images: 2 of 4" in text
    assert NO_MISPREDICTIONS not in text
    same_error = section(text, "Same error")
    assert "25.0%" in same_error and "0.0%" in same_error
    helpful = section(text, "Top 2 influencers, most helpful")
    assert helpful.index("dog/img_00002.png") < helpful.index("horse/img_00004.png")
    assert "cat/img_00003.png" not in helpful
    harmful = section(text, "Top 2 influencers, most harmful")
    assert harmful.index("cat/img_00003.png") < harmful.index("cat/img_00001.png")
    suspects = section(text, "Top 2 suspected label errors, ranked by loss")
    # Loss grows with idx in make_predictions: the last training image is the top suspect.
    assert suspects.index("dog/img_00005.png") < suspects.index("horse/img_00004.png")
    assert "cat/img_00000.png" not in suspects


def test_report_text_says_plainly_when_nothing_is_mispredicted(planted):
    test_pred = make_predictions(TEST_IDX, TEST_LABEL, TEST_LABEL)

    text = report_text(planted, test_pred=test_pred)

    assert "Mispredicted test images: 0 of 4" in text
    assert NO_MISPREDICTIONS in section(text, "Same error")


@pytest.mark.parametrize("mispredicted", [True, False])
def test_write_version_reports_writes_every_file(tmp_path, planted, mispredicted):
    test_pred = (
        planted["test_pred"]
        if mispredicted
        else planted["test_pred"].assign(pred=planted["test_pred"]["label"])
    )
    folder = tmp_path / "inputs"
    paths = {
        "manifest": folder / "manifest.parquet",
        "train": folder / "predictions" / "train.parquet",
        "test": folder / "predictions" / "test.parquet",
        "topk": folder / "influence" / "top_k_influences.parquet",
        "self": folder / "rankings" / "suspicion_scores.parquet",
        "checkpoints": folder / "model" / "checkpoints.json",
        "metrics": folder / "metrics.json",
        "rejected": folder / "rejected.csv",
    }
    io.write_parquet(paths["manifest"], planted["manifest"])
    io.write_csv(paths["rejected"], pd.DataFrame({"path": ["cat/x.jpg"], "reason": ["empty file"]}))
    io.write_parquet(paths["train"], planted["train_pred"])
    io.write_parquet(paths["test"], test_pred)
    io.write_parquet(paths["topk"], planted["topk"])
    suspicion = suspicion_table(
        planted["train_pred"]["idx"], planted["self_influence"], planted["train_pred"]
    )
    io.write_parquet(paths["self"], suspicion)
    io.write_json(paths["checkpoints"], CHECKPOINTS)
    io.write_json(paths["metrics"], METRICS)
    lines = []

    inputs = {key: paths[key] for key in ("manifest", "train", "test", "topk", "checkpoints")}
    inputs |= {
        "suspicion": paths["self"],
        "metrics": paths["metrics"],
        "rejected": paths["rejected"],
    }
    written = {name: tmp_path / "reports" / name for name in REPORT_FILES.values()}
    outputs = {key: written[name] for key, name in REPORT_FILES.items()}
    params = {"version": "v_planted", "ranking": "combined", "top_n": 3}
    report_tables(inputs, outputs, params, log=lines.append)

    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(REPORT_FILES.values())
    assert len(lines) == len(REPORT_FILES)
    text = written["influence_report.txt"].read_text()
    assert "Not used: 1 file (rejected.csv gives each one's reason)\n" in text
    for path in written.values():
        assert any(str(path) in line for line in lines)
    names = class_names_of(planted["manifest"])
    cross = pd.read_csv(written["misprediction_cross_analysis.csv"])
    assert list(cross.columns) == CROSS_COLUMNS
    assert len(cross) == (8 if mispredicted else 0)
    expected_cross = misprediction_cross_analysis(
        planted["topk"], test_pred, planted["train_pred"], names
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(written["misprediction_cross_analysis.parquet"]), expected_cross
    )
    inspection = pd.read_csv(written["mislabeled_inspection_report.csv"])
    assert list(inspection.columns) == INSPECTION_COLUMNS
    assert len(inspection) == 6 and set(inspection["ranking"]) == {"combined"}
    influential = pd.read_csv(written["influential_samples.csv"])
    assert influential["train_idx"].tolist() == [2, 4, 0, 5, 1, 3]
    by_class = pd.read_csv(written["class_influence.csv"])
    assert by_class["train_class"].tolist() == CLASSES
    text = written["influence_report.txt"].read_text()
    assert "ranked by combined" in text
    assert (NO_MISPREDICTIONS in text) is not mispredicted


def test_suspicion_table_gives_every_ranking_its_known_scores():
    from tracinflow.analysis.rankings import RANKINGS, suspicion_scores

    idx = np.array([3, 1, 2])
    self_influence = pd.DataFrame(
        {"train_idx": [1, 2, 3], "self_influence": [5.0, 1.0, 3.0],
         "self_influence_epoch_002": [4.0, 0.5, 0.5], "self_influence_epoch_010": [1.0, 0.5, 2.5]}
    )  # fmt: skip
    error = pd.DataFrame({"train_idx": [3, 2, 1], "self_influence": [0.3, 0.2, 0.1]})
    train_pred = pd.DataFrame({"idx": [2, 3, 1], "loss": [9.0, 1.0, 2.0]})
    validation = pd.DataFrame(
        {"train_idx": [2, 1, 3], "val_harm": [0.5, -1.0, 2.0], "val_opponent": [0.0, 3.0, 1.0]}
    )
    quality = pd.DataFrame(
        {"train_idx": [1, 2, 3], "label_quality": [0.9, 0.25, 0.5], "label_issue": [0, 1, 0]}
    )
    curvature = pd.DataFrame(
        {"train_idx": [2, 3, 1], "kfac_self_influence": [7.0, 8.0, 9.0],
         "gn_self_influence": [0.7, 0.8, 0.9]}
    )  # fmt: skip
    # two epochs, listed stage 2's first: signals follow the training order (stage 1, then 2)
    trajectory = pd.DataFrame(
        {"train_idx": [1, 2, 3, 3, 2, 1], "stage": [2, 2, 2, 1, 1, 1], "epoch": [1] * 6,
         "loss": [0.2, 2.0, 0.7, 0.5, 1.0, 0.1], "margin": [4.0, -3.0, -0.5, 0.5, -1.0, 2.0],
         "correct": [True, False, False, True, False, True]}
    )  # fmt: skip
    table = suspicion_table(
        idx, self_influence, train_pred, error, validation=validation, curvature=curvature,
        trajectory=trajectory,
        cleanlab={"cleanlab": quality, "cleanlab_kfold": quality.assign(label_quality=0.5)},
        seed=4,
    )  # fmt: skip
    expected = {
        "self_influence": [3.0, 5.0, 1.0],
        "self_influence_first": [0.5, 4.0, 0.5],  # epoch 2, the first
        "self_influence_last": [2.5, 1.0, 0.5],  # epoch 10, not epoch 2
        # epoch means 5/3 and 4/3: 0.5 / (5/3) + 2.5 / (4/3), ...
        "self_influence_normalized": [0.3 + 1.875, 2.4 + 0.75, 0.3 + 0.375],
        "error_self_influence": [0.3, 0.1, 0.2],
        "kfac_self_influence": [8.0, 9.0, 7.0],
        "gn_self_influence": [0.8, 0.9, 0.7],
        "loss": [1.0, 2.0, 9.0],
        # percentile ranks (self, loss): idx 3 (2, 1), idx 1 (3, 2), idx 2 (1, 3); / (2 * 3)
        "combined": [3 / 6, 5 / 6, 4 / 6],
        # (error, loss): idx 3 (3, 1), idx 1 (1, 2), idx 2 (2, 3)
        "error_combined": [4 / 6, 3 / 6, 5 / 6],
        # minus the mean margins 0, 3, -2
        "aum": [0.0, -3.0, 2.0],
        "loss_sum": [1.2, 0.3, 3.0],
        # idx 3 right then wrong; idx 1 never wrong; idx 2 never right: forgotten both epochs
        "forgetting": [1.0, 0.0, 2.0],
        # (aum, loss): idx 3 (2, 1), idx 1 (1, 2), idx 2 (3, 3)
        "aum_combined": [3 / 6, 3 / 6, 6 / 6],
        "val_harm": [2.0, -1.0, 0.5],
        "val_opponent": [1.0, 3.0, 0.0],
        "cleanlab": [0.5, 0.1, 0.75],  # 1 - label quality: the lowest quality first
        "cleanlab_kfold": [0.5, 0.5, 0.5],
    }
    assert set(expected) == set(RANKINGS)
    for ranking, values in expected.items():
        np.testing.assert_allclose(suspicion_scores(ranking, idx, table), values, err_msg=ranking)
    assert table["train_idx"].tolist() == [3, 1, 2]
    assert table["cleanlab_issue"].tolist() == [False, False, True]
    np.testing.assert_array_equal(table["random"], np.random.default_rng(4).random(3))
    with pytest.raises(KeyError, match=r"missing from self_influence, e\.g\. \[7\]"):
        suspicion_table([7], self_influence, train_pred, error)
    without = suspicion_table(idx, self_influence, train_pred, error)
    with pytest.raises(ValueError, match=r"cleanlab is not in .* needs model\.pretrained"):
        suspicion_scores("cleanlab", idx, without)
    final_not_traced = suspicion_table(
        idx,
        self_influence,
        train_pred,
        error,
        curvature=curvature.drop(columns="gn_self_influence"),
    )
    assert "kfac_self_influence" in final_not_traced
    with pytest.raises(ValueError, match=r"gn_self_influence is not in .* tracing the final layer"):
        suspicion_scores("gn_self_influence", idx, final_not_traced)
