"""Proponents are positive influence and opponents negative, in the library, the shards' merge
and every file the workflow writes (the report and the galleries call opponents "negative
influence")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tracinflow.influence.factors import Factors
from tracinflow.influence.kernel import topk_influence
from tracinflow.influence.shards import merge_topk, tile_rows


def one_layer_factors(act: np.ndarray, err: np.ndarray, idx) -> list[Factors]:
    """One checkpoint's factors of one layer with a bias (labels and logits unused here)."""
    n = len(act)
    return [
        Factors({"fc": act}, {"fc": err}, np.zeros(n, np.int64), np.zeros((n, 2)),
                np.asarray(idx, np.int64), {"fc": True})
    ]  # fmt: skip


def test_a_test_image_with_fewer_negative_scores_than_k_gets_fewer_opponents():
    # scores are <e, e'>: row 0 has four positive and one negative, row 1 the reverse; k = 3
    act_train = np.zeros((5, 1))  # <a, a'> + 1 = 1: the score is <e, e'>
    err_train = np.array([[1.0], [2.0], [3.0], [4.0], [-5.0]])
    act_test, err_test = np.zeros((2, 1)), np.array([[1.0], [-1.0]])
    test = one_layer_factors(act_test, err_test, [0, 1])
    train = one_layer_factors(act_train, err_train, np.arange(10, 15))
    got = topk_influence(test, train, 3, [1.0], device="cpu", block=(1, 2))
    by_kind = {key: rows["train_idx"].tolist() for key, rows in got.groupby(["test_idx", "kind"])}
    assert by_kind == {
        (0, "proponent"): [13, 12, 11],
        (0, "opponent"): [14],  # the only negative score; no positive one is called an opponent
        (1, "proponent"): [14],
        (1, "opponent"): [13, 12, 11],
    }
    assert (got["influence"].gt(0) == got["kind"].eq("proponent")).all()
    assert (
        got.groupby(["test_idx", "kind"])["rank"]
        .apply(list)
        .map(lambda ranks: ranks == list(range(1, len(ranks) + 1)))
        .all()
    )


def test_a_zero_score_is_neither_proponent_nor_opponent():
    test = one_layer_factors(np.zeros((1, 1)), np.array([[0.0]]), [0])
    train = one_layer_factors(np.zeros((4, 1)), np.ones((4, 1)), np.arange(4))
    assert topk_influence(test, train, 2, [1.0], device="cpu").empty


@pytest.mark.parametrize("tiles", [1, 2, 3])
def test_sharded_signed_top_k_merges_to_the_whole_rows(tiles):
    rng = np.random.default_rng(3)
    act_train, err_train = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    # mostly positive scores, so several test rows have fewer than k negative ones
    err_train[:, 0] = np.abs(err_train[:, 0]) + 1
    test = one_layer_factors(rng.normal(size=(6, 4)), np.c_[np.ones(6), 0.1 * rng.normal(size=6)],
                             np.arange(6))  # fmt: skip
    train = one_layer_factors(act_train, err_train, np.arange(100, 130))
    whole = topk_influence(test, train, 5, [0.5], device="cpu", block=(2, 4))
    assert whole.groupby("test_idx")["kind"].apply(lambda k: (k == "opponent").sum()).lt(5).any()
    shards = []
    for r in range(tiles):
        part = [train[0].rows(tile_rows(r, tiles, 30))]
        shards.append(topk_influence(test, part, 5, [0.5], device="cpu", block=(2, 4)))
    pd.testing.assert_frame_equal(merge_topk(shards, 5), whole, check_exact=True)


@pytest.mark.workflow
def test_every_file_of_the_workflow_lists_positive_proponents_and_negative_opponents(
    tiny_workflow,
):
    results = tiny_workflow.workdir / "results"
    for version in tiny_workflow.config["versions"]:
        influence = results / version / "influence"
        for table in (
            pd.read_parquet(influence / "top_k_influences.parquet"),
            pd.read_csv(influence / "top_k_influences.csv"),
            pd.read_csv(results / version / "reports/misprediction_cross_analysis.csv"),
        ):
            assert len(table) and set(table["kind"]) <= {"proponent", "opponent"}
            assert (table["influence"].gt(0) == table["kind"].eq("proponent")).all(), version
            assert (table["influence"].lt(0) == table["kind"].eq("opponent")).all(), version
