"""The trajectory signals (area under the margin, summed loss, forgetting events) on trajectories
worked out by hand, and what the table they read must hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tracinflow.analysis.trajectory import (
    area_under_margin,
    forgetting_events,
    summed_loss,
    trajectory_matrices,
    trajectory_signals,
)
from tracinflow.train.trainer import EpochTrajectory, label_margin


def test_label_margin_is_the_given_labels_logit_over_the_best_other():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    # 2 - 0.5; 1 - 3; a tie with another class is a margin of 0
    torch.testing.assert_close(label_margin(logits, y), torch.tensor([1.5, -2.0, 0.0]))


def test_epoch_trajectory_fills_rows_in_batch_order_and_refuses_a_gap():
    record = EpochTrajectory(4, torch.device("cpu"))
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    record.record(torch.tensor([3, 0]), logits, torch.tensor([0, 0]), torch.tensor([0.25, 1.5]))
    with pytest.raises(RuntimeError, match="never saw"):
        record.as_cpu()
    record.record(torch.tensor([1, 2]), logits, torch.tensor([1, 1]), torch.tensor([2.0, 0.5]))
    out = record.as_cpu()
    torch.testing.assert_close(out["loss"], torch.tensor([1.5, 2.0, 0.5, 0.25]))
    torch.testing.assert_close(out["margin"], torch.tensor([-2.0, -1.0, 2.0, 1.0]))
    assert out["correct"].tolist() == [False, False, True, True]
    assert record.totals() == (pytest.approx(4.25 / 4), 0.5)


def test_signals_of_a_hand_computed_trajectory():
    # three images, four epochs (columns in training order)
    margin = np.array([[1.0, 2.0, 3.0, 2.0], [-1.0, 0.5, -0.5, 1.0], [-2.0, -1.0, -3.0, -2.0]])
    loss = np.array([[0.5, 0.25, 0.25, 0.0], [1.0, 1.0, 2.0, 0.5], [3.0, 2.0, 4.0, 3.0]])
    correct = margin > 0
    np.testing.assert_allclose(area_under_margin(margin), [2.0, 0.0, -2.0])
    np.testing.assert_allclose(summed_loss(loss), [1.0, 4.5, 12.0])
    # image 0 always right; image 1 right, wrong, right: forgotten once; image 2 never learned
    np.testing.assert_array_equal(forgetting_events(correct), [0.0, 1.0, 4.0])
    # two forgettings in four epochs is the most a learned image can have, below never learned
    np.testing.assert_array_equal(forgetting_events([[True, False, True, False]]), [2.0])


def test_signals_of_several_runs_are_the_means_of_each_runs_signals():
    idx, epochs = [7, 3], [(1, 1), (2, 1), (2, 2)]
    one = {"margin": np.array([[1.0, 2.0, 3.0], [-1.0, 1.0, -1.0]]),
           "loss": np.array([[0.5, 0.25, 0.25], [1.0, 1.0, 2.0]])}  # fmt: skip
    two = {"margin": np.array([[-1.0, 0.5, 3.5], [0.0, -2.0, -1.0]]),
           "loss": np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 4.0]])}  # fmt: skip
    runs = [_long(m | {"correct": m["margin"] > 0}, idx, epochs) for m in (one, two)]
    # the rows asked for in another order than the tables hold them
    got = trajectory_signals(runs, [3, 7])
    # by hand: areas -1/3 and -1 (image 3), 2 and 1 (image 7); forgetting: image 3 forgets once in
    # run one and never learns in run two (1, 3); image 7 is learned in both, late in run two (0, 0)
    np.testing.assert_allclose(got["aum"], [-(-1 / 3 - 1) / 2, -(2 + 1) / 2])
    np.testing.assert_allclose(got["loss_sum"], [(4.0 + 8.0) / 2, (1.0 + 3.0) / 2])
    np.testing.assert_array_equal(got["forgetting"], [2.0, 0.0])
    # one run, alone or in a list, is that run's signals to the bit
    for name, values in trajectory_signals(runs[:1], [3, 7]).items():
        np.testing.assert_array_equal(values, trajectory_signals(runs[0], [3, 7])[name])
    with pytest.raises(ValueError, match="no training trajectory"):
        trajectory_signals([], [3, 7])


def _long(matrix_by_key: dict[str, np.ndarray], idx, epochs) -> pd.DataFrame:
    rows = []
    for j, (stage, epoch) in enumerate(epochs):
        for i, image in enumerate(idx):
            rows.append(
                {"train_idx": image, "stage": stage, "epoch": epoch}
                | {key: m[i, j] for key, m in matrix_by_key.items()}
            )
    return pd.DataFrame(rows)


def test_trajectory_matrices_order_epochs_by_stage_then_epoch_and_rows_by_the_query():
    epochs = [(2, 1), (1, 2), (1, 1), (2, 2)]  # as stored, out of order
    margin = np.array([[4.0, 2.0, 1.0, 8.0], [-4.0, -2.0, -1.0, -8.0]])
    frame = _long(
        {"margin": margin, "loss": -margin, "correct": margin > 0}, idx=[10, 20], epochs=epochs
    ).sample(frac=1.0, random_state=0)
    m = trajectory_matrices(frame, [20, 10])
    np.testing.assert_array_equal(m["margin"], [[-1.0, -2.0, -4.0, -8.0], [1.0, 2.0, 4.0, 8.0]])
    np.testing.assert_array_equal(m["correct"], [[False] * 4, [True] * 4])
    signals = trajectory_signals(frame, [10, 20])
    np.testing.assert_allclose(signals["aum"], [-3.75, 3.75])  # minus the mean margin
    np.testing.assert_allclose(signals["loss_sum"], [-15.0, 15.0])
    np.testing.assert_array_equal(signals["forgetting"], [0.0, 4.0])


def test_a_trajectory_with_a_missing_or_repeated_row_is_refused():
    margin = np.array([[1.0, 2.0], [3.0, 4.0]])
    frame = _long(
        {"margin": margin, "loss": margin, "correct": margin > 0}, [1, 2], [(1, 1), (2, 1)]
    )
    with pytest.raises(ValueError, match="once per epoch"):
        trajectory_matrices(frame.iloc[:-1], [1, 2])
    with pytest.raises(ValueError, match="once per epoch"):
        trajectory_matrices(pd.concat([frame, frame.iloc[:1]]), [1, 2])
    with pytest.raises(KeyError, match="missing from the training trajectory"):
        trajectory_matrices(frame, [1, 3])
    with pytest.raises(ValueError, match="empty"):
        trajectory_matrices(frame.iloc[:0], [1, 2])
