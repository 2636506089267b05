"""TracIn scores against brute-force per-sample autograd; exact tiled, sharded top-k; self-influence."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tracinflow._util.files import write_parquet
from tracinflow.influence.factors import Factors, extract_factors
from tracinflow.influence.kernel import COLUMNS, block_shape, score_block, topk_influence
from tracinflow.influence.self_influence import self_influence, self_influence_scores
from tracinflow.influence.shards import merge_topk, tile_rows
from tracinflow.io.factor_store import load_checkpoints, load_factor_dir, write_factor_dir
from tracinflow.stages.influence import shard_topk
from tracinflow.train.loss import WeightedSmoothedCrossEntropy, class_weights_from_labels

K = 4
HEAD_LAYERS = ("fc.0", "fc.2", "fc.4")
LRS = [0.1, 0.03, 0.007]


# --------------------------------------------------------------------------------------------------
# brute force: per-sample autograd gradients of the hooked layers' weights and biases


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 6))
        self.fc = nn.Sequential(
            nn.Linear(6, 7),
            nn.LeakyReLU(0.01),
            nn.Linear(7, 5),
            nn.LeakyReLU(0.01),
            nn.Linear(5, K),
        )

    def forward(self, x):
        return self.fc(self.backbone(x))


def brute_force_scores(models, lrs, loss_fn, x_test, y_test, x_train, y_train, layers):
    """sum_ckpt lr * sum_layers <grad_W,b l(test), grad_W,b l(train)>, one sample at a time."""

    def grads(model, x, y):
        modules = dict(model.named_modules())
        params = [p for layer in layers for p in (modules[layer].weight, modules[layer].bias)]
        rows = []
        for i in range(len(y)):
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1], reduction="none").sum()
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    total = torch.zeros(len(y_test), len(y_train), dtype=torch.float64)
    for model, lr in zip(models, lrs, strict=True):
        total += lr * grads(model, x_test, y_test) @ grads(model, x_train, y_train).T
    return total.numpy()


@pytest.fixture(scope="module")
def setup():
    return checkpoints_and_samples()


def checkpoints_and_samples():
    """Three float64 checkpoints of TinyNet, the project's loss with class weights on, 7 test and
    13 training samples."""
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(13, 3, 6, 6, generator=g, dtype=torch.float64)
    y_train = torch.randint(0, K, (13,), generator=g)
    x_test = torch.randn(7, 3, 6, 6, generator=g, dtype=torch.float64)
    y_test = torch.randint(0, K, (7,), generator=g)
    weights = class_weights_from_labels(y_train, K)
    assert not torch.allclose(
        weights, torch.ones(K, dtype=torch.float64)
    )  # class weights really on
    loss_fn = WeightedSmoothedCrossEntropy(weights, K, 0.1)
    models = []
    for seed in range(len(LRS)):
        torch.manual_seed(100 + seed)
        models.append(TinyNet().double())
    return models, loss_fn, (x_test, y_test), (x_train, y_train)


def extract(models, loss_fn, x, y, layers, dtype):
    batches = [(x[i : i + 5], y[i : i + 5]) for i in range(0, len(y), 5)]
    return [
        extract_factors(m, batches, loss_fn, layers=layers, device="cpu", dtype=dtype)
        for m in models
    ]


def rel_err(got, expected):
    scale = np.maximum(np.abs(expected), 1e-3 * np.abs(expected).max())
    return float(np.max(np.abs(got - expected) / scale))


@pytest.mark.parametrize("layers", [("fc.4",), HEAD_LAYERS], ids=["final", "all_head"])
def test_scores_equal_brute_force_autograd(setup, layers):
    models, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    expected = brute_force_scores(models, LRS, loss_fn, x_test, y_test, x_train, y_train, layers)
    assert np.abs(expected).max() > 1e-3
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        test = extract(models, loss_fn, x_test, y_test, layers, dtype)
        train = extract(models, loss_fn, x_train, y_train, layers, dtype)
        got = score_block(test, train, LRS, device="cpu", block=(3, 4))
        assert got.dtype == dtype and got.shape == (7, 13)
        assert rel_err(got, expected) < tol, (dtype, rel_err(got, expected))
        # same answer from a float32 model (factors computed, not only stored, in float32)
    f32 = [TinyNet().float() for _ in models]
    for m32, m in zip(f32, models, strict=True):
        m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    test = extract(f32, loss_fn, x_test.float(), y_test, layers, np.float32)
    train = extract(f32, loss_fn, x_train.float(), y_train, layers, np.float32)
    assert rel_err(score_block(test, train, LRS, device="cpu"), expected) < 1e-4


def test_bf16_operands_stay_close_and_other_precisions_are_refused_where_they_cannot_run(setup):
    models, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    expected = brute_force_scores(
        models, LRS, loss_fn, x_test, y_test, x_train, y_train, HEAD_LAYERS
    )
    test = extract(models, loss_fn, x_test, y_test, HEAD_LAYERS, np.float32)
    train = extract(models, loss_fn, x_train, y_train, HEAD_LAYERS, np.float32)
    exact = score_block(test, train, LRS, device="cpu", block=(3, 4))
    bf16 = score_block(test, train, LRS, device="cpu", block=(3, 4), precision="bf16")
    # bfloat16 keeps 8 bits of mantissa: errors of a few 1e-3, far above float32's, far below 1
    assert 1e-5 < rel_err(bf16, expected) < 3e-2, rel_err(bf16, expected)
    assert rel_err(exact, expected) < 1e-4
    # the top-k sees the same bf16 scores as the dense matrix
    top = topk_influence(test, train, 3, LRS, device="cpu", block=(3, 4), precision="bf16")
    np.testing.assert_array_equal(
        top.loc[top["kind"] == "proponent", "influence"].to_numpy()[:3],
        np.sort(bf16[0])[::-1][:3],
    )
    with pytest.raises(ValueError, match="tf32 is a CUDA mode"):
        score_block(test, train, LRS, device="cpu", precision="tf32")
    with pytest.raises(ValueError, match="precision must be one of"):
        score_block(test, train, LRS, device="cpu", precision="fp8")
    wide = extract(models, loss_fn, x_test, y_test, HEAD_LAYERS, np.float64)
    with pytest.raises(ValueError, match="needs float32 factors"):
        score_block(wide, wide, LRS, device="cpu", precision="bf16")


def test_scores_drop_the_bias_term_without_bias(setup):
    _, _, (x_test, y_test), (x_train, y_train) = setup
    torch.manual_seed(7)
    model = TinyNet().double()
    model.fc[4] = nn.Linear(5, K, bias=False).double()
    loss_fn = WeightedSmoothedCrossEntropy(None, K, 0.0)
    test = extract([model], loss_fn, x_test, y_test, ("fc.4",), np.float64)
    train = extract([model], loss_fn, x_train, y_train, ("fc.4",), np.float64)
    assert test[0].has_bias == {"fc.4": False}

    def weight_grads(x, y):
        rows = []
        for i in range(len(y)):
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1], reduction="none").sum()
            rows.append(torch.autograd.grad(loss, model.fc[4].weight)[0].reshape(-1))
        return torch.stack(rows)

    expected = (0.5 * weight_grads(x_test, y_test) @ weight_grads(x_train, y_train).T).numpy()
    assert rel_err(score_block(test, train, [0.5], device="cpu"), expected) < 1e-10


def test_self_influence_is_the_diagonal(setup):
    models, loss_fn, _, (x_train, y_train) = setup
    train = extract(models, loss_fn, x_train, y_train, HEAD_LAYERS, np.float64)
    dense = score_block(train, train, LRS, device="cpu", block=(5, 4))
    np.testing.assert_allclose(self_influence_scores(train, LRS), np.diag(dense), rtol=1e-12)
    frame = self_influence(train, LRS, per_checkpoint=True)
    assert list(frame.columns[:3]) == ["train_idx", "self_influence", "rank"]
    np.testing.assert_array_equal(frame["rank"], np.arange(1, 14))
    assert frame["self_influence"].is_monotonic_decreasing
    np.testing.assert_allclose(
        frame.set_index("train_idx").loc[np.arange(13), "self_influence"],
        np.diag(dense),
        rtol=1e-12,
    )
    per = [c for c in frame.columns if c.startswith("self_influence_ckpt_")]
    assert len(per) == 3
    np.testing.assert_allclose(frame[per].sum(axis=1), frame["self_influence"], rtol=1e-13)
    for c, f in enumerate(train):
        alone = self_influence_scores([f], [LRS[c]])
        np.testing.assert_allclose(frame.set_index("train_idx").loc[np.arange(13), per[c]], alone)
    # error-signal-only variant: sum lr * |e|^2 over layers
    error = sum(
        lr * (f.err[layer] ** 2).sum(axis=1)
        for f, lr in zip(train, LRS, strict=True)
        for layer in HEAD_LAYERS
    )
    np.testing.assert_allclose(self_influence_scores(train, LRS, mode="error"), error, rtol=1e-13)
    assert self_influence(train, LRS, mode="error")["train_idx"].iloc[0] == int(np.argmax(error))


def test_self_influence_ties_rank_lower_idx_first_and_columns_name_epochs(tmp_path):
    rng = np.random.default_rng(0)
    a, e = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    a[4], e[4] = a[1], e[1]  # a duplicate: equal self-influence
    f = Factors(
        {"fc.4": a},
        {"fc.4": e},
        np.zeros(6, int),
        np.zeros((6, 2)),
        np.array([9, 3, 5, 7, 1, 8]),
        {"fc.4": True},
    )
    write_factor_dir(tmp_path / "e7", f, epoch=7, lr=0.25, loss={})
    frame = self_influence(load_checkpoints([tmp_path / "e7"]), per_checkpoint=True)
    assert "self_influence_epoch_007" in frame.columns
    tied = frame[frame["train_idx"].isin([3, 1])]
    assert list(tied["train_idx"]) == [1, 3] and tied["rank"].diff().iloc[1] == 1


# --------------------------------------------------------------------------------------------------
# exact top-k


def reference_topk(scores: np.ndarray, test_idx, train_idx, k: int) -> pd.DataFrame:
    """Sort every row whole: (score desc, train idx asc) for proponents, (asc, asc) for opponents;
    only positive scores are proponents and only negative ones opponents."""
    rows = []
    for i, t in enumerate(test_idx):
        for kind, key in (("proponent", -scores[i]), ("opponent", scores[i])):
            order = [j for j in np.lexsort((train_idx, key)) if key[j] < 0][:k]
            for rank, j in enumerate(order, start=1):
                rows.append((t, kind, rank, train_idx[j], scores[i, j]))
    frame = pd.DataFrame(rows, columns=["test_idx", "kind", "rank", "train_idx", "influence"])
    frame["influence"] = frame["influence"].astype(scores.dtype)
    kind_order = frame["kind"].map({"proponent": 0, "opponent": 1})
    frame = frame.assign(_k=kind_order).sort_values(["test_idx", "_k", "rank"]).drop(columns="_k")
    return frame.reset_index(drop=True).astype(
        {"test_idx": np.int64, "rank": np.int64, "train_idx": np.int64}
    )


def random_factors(rng, n, idx, dims, n_ckpt, integer, dtype, duplicates=()):
    """One Factors per checkpoint. ``integer``: small integers, so every score is exact in float."""
    out = []
    for _ in range(n_ckpt):
        act, err = {}, {}
        for layer, (d_in, d_out) in dims.items():
            if integer:
                a = rng.integers(-2, 3, size=(n, d_in)).astype(dtype)
                e = rng.integers(-2, 3, size=(n, d_out)).astype(dtype)
            else:
                a, e = (
                    rng.normal(size=(n, d_in)).astype(dtype),
                    rng.normal(size=(n, d_out)).astype(dtype),
                )
            for src, dst in duplicates:
                a[dst], e[dst] = a[src], e[src]
            act[layer], err[layer] = a, e
        has_bias = {layer: i % 2 == 0 for i, layer in enumerate(dims)}
        out.append(
            Factors(
                act,
                err,
                np.zeros(n, np.int64),
                np.zeros((n, 3), dtype),
                np.asarray(idx, np.int64),
                has_bias,
            )
        )
    return out


def exact_dense(test, train, lrs):
    """Dense scores in numpy (for integer-valued factors and power-of-two lrs: exact)."""
    total = 0.0
    for ft, fr, lr in zip(test, train, lrs, strict=True):
        for layer in ft.layers:
            gram_a = (
                ft.act[layer].astype(np.float64) @ fr.act[layer].T.astype(np.float64)
                + ft.has_bias[layer]
            )
            total = total + lr * gram_a * (
                ft.err[layer].astype(np.float64) @ fr.err[layer].T.astype(np.float64)
            )
    return total


SHAPES = st.fixed_dictionaries(
    {
        "n_test": st.integers(1, 9),
        "n_train": st.integers(1, 23),
        "k": st.integers(1, 5) | st.integers(1, 26),
        "n_ckpt": st.integers(1, 3),
        "block": st.tuples(st.integers(1, 5), st.integers(1, 12)),
        "seed": st.integers(0, 2**16),
    }
)


@settings(max_examples=60, deadline=None, database=None)
@given(SHAPES)
def test_tiled_topk_with_ties_equals_whole_row_sort(p):
    # integer factors: every score is exact, so many genuine ties, plus planted duplicate train rows
    rng = np.random.default_rng(p["seed"])
    n_test, n_train, k = p["n_test"], p["n_train"], p["k"]
    train_idx = rng.permutation(np.arange(1000, 1000 + 3 * n_train))[
        :n_train
    ]  # idx not in row order
    duplicates = [(int(rng.integers(n_train)), int(rng.integers(n_train))) for _ in range(2)]
    dims = {"fc.0": (3, 2), "fc.4": (2, 2)}
    lrs = [0.5, 0.25, 2.0][: p["n_ckpt"]]
    test = random_factors(rng, n_test, np.arange(n_test), dims, p["n_ckpt"], True, np.float64)
    train = random_factors(rng, n_train, train_idx, dims, p["n_ckpt"], True, np.float64, duplicates)
    dense = exact_dense(test, train, lrs)
    expected = reference_topk(dense, np.arange(n_test), train_idx, k)
    got = topk_influence(test, train, k, lrs, device="cpu", block=p["block"])
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # k > n_train: every row of the kind's sign, ranked; a zero score is neither kind
    signs = np.sign(dense)
    expected_rows = np.minimum((signs > 0).sum(1), k) + np.minimum((signs < 0).sum(1), k)
    assert len(got) == expected_rows.sum()


def test_ties_at_the_kth_place_go_to_the_lower_train_idx():
    # every train row identical: all scores tie; train idx run against row order, so picking ties by
    # position (what torch.topk tends to do) would keep the highest idx
    rng = np.random.default_rng(5)
    n_train, dims = 40, {"fc.4": (3, 2)}
    test = random_factors(rng, 2, np.array([7, 8]), dims, 1, True, np.float64)
    train = random_factors(rng, n_train, np.arange(n_train)[::-1] * 10, dims, 1, True, np.float64)
    for f in train:
        f.act["fc.4"][:] = f.act["fc.4"][0]
        f.err["fc.4"][:] = f.err["fc.4"][0]
    for block in ((2, 8), (1, 40), (2, 13)):
        got = topk_influence(test, train, 3, [1.0], device="cpu", block=block)
        # each test row's scores all share one sign, so it has one kind, of the three lowest idx
        assert got.groupby(["test_idx", "kind"]).ngroups == 2
        assert list(got["train_idx"]) == [0, 10, 20] * 2
        assert got.groupby("test_idx")["influence"].nunique().eq(1).all()


def write_folders(root: Path, split: str, factors, lrs):
    dirs = []
    for c, (f, lr) in enumerate(zip(factors, lrs, strict=True)):
        d = root / f"epoch_{c + 1:03d}" / split
        write_factor_dir(d, f, epoch=c + 1, lr=lr, loss={"loss": "test"})
        dirs.append(d)
    return dirs


@settings(
    max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    SHAPES,
    st.integers(1, 4),
    st.integers(1, 5),
    st.sampled_from([np.float64, np.float32]),
)
def test_sharded_topk_merges_to_the_unsharded_result_exactly(p, T, R, dtype):
    # real-valued factors with planted duplicates, on disk; tile counts need not divide N
    rng = np.random.default_rng(p["seed"])
    n_test, n_train, k = p["n_test"] + 3, p["n_train"] + 5, p["k"]
    T, R = min(T, n_test), min(R, n_train)
    train_idx = rng.permutation(n_train) + 50
    dups = [(0, n_train - 1), (1, n_train // 2)]
    dims = {"fc.2": (4, 3), "fc.4": (3, 3)}
    lrs = [0.1, 0.02, 0.003][: p["n_ckpt"]]
    test = random_factors(rng, n_test, np.arange(n_test), dims, p["n_ckpt"], False, dtype)
    train = random_factors(rng, n_train, train_idx, dims, p["n_ckpt"], False, dtype, dups)
    block = p["block"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        test_dirs = write_folders(root, "test", test, lrs)
        train_dirs = write_folders(root, "train", train, lrs)
        whole = topk_influence(
            load_checkpoints(test_dirs), load_checkpoints(train_dirs), k, device="cpu", block=block
        )
        assert whole["influence"].dtype == dtype
        # the unsharded result is the whole-row sort of the (same-grid) dense scores
        dense = score_block(
            load_checkpoints(test_dirs), load_checkpoints(train_dirs), device="cpu", block=block
        )
        pd.testing.assert_frame_equal(
            whole, reference_topk(dense, np.arange(n_test), train_idx, k), check_exact=True
        )
        shards = []
        for t in range(T):
            for r in range(R):
                frame = shard_topk(
                    test_dirs,
                    train_dirs,
                    k,
                    test_tile=(t, T),
                    train_tile=(r, R),
                    device="cpu",
                    block=block,
                )
                path = root / "shards" / f"t{t}_r{r}.parquet"
                write_parquet(path, frame[COLUMNS])
                shards.append(pd.read_parquet(path))
        merged = merge_topk(shards, k)
        pd.testing.assert_frame_equal(merged, whole, check_exact=True)


def test_tile_scores_are_bit_identical_to_the_whole_split():
    # the block grid is anchored at row 0 of the split: a row range scores like inside the whole
    rng = np.random.default_rng(3)
    dims = {"fc.4": (37, 10)}
    test = random_factors(rng, 40, np.arange(40), dims, 2, False, np.float64)
    train = random_factors(rng, 90, np.arange(90), dims, 2, False, np.float64)
    whole = score_block(test, train, [0.1, 0.2], device="cpu", block=(16, 32))
    part = score_block(
        [f.rows(slice(7, 33)) for f in test],
        [f.rows(slice(21, 80)) for f in train],
        [0.1, 0.2],
        device="cpu",
        block=(16, 32),
    )
    np.testing.assert_array_equal(part, whole[7:33, 21:80])


def test_memory_budget_sets_the_block_and_progress_counts_sub_tiles():
    assert block_shape(64 * 2**20, 4)[0] * block_shape(64 * 2**20, 4)[1] * 18 <= 64 * 2**20
    bt, br = block_shape(2**20, 8)
    assert bt % 16 == 0 and br % 16 == 0 and bt * br * 34 <= 2**20
    rng = np.random.default_rng(1)
    dims = {"fc.4": (3, 2)}
    test = random_factors(rng, 10, np.arange(10), dims, 1, False, np.float32)
    train = random_factors(rng, 20, np.arange(20), dims, 1, False, np.float32)
    lines = []
    topk_influence(
        test, train, 3, [1.0], device="cpu", block=(4, 8), log=lines.append, progress_every=0
    )
    # one line per sub-tile (grid block pair): 3 x 3 of them, test blocks of 4, 4, 2 rows against
    # train blocks of 8, 8, 4 rows, counting the pairs scored so far
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == [32, 64, 80, 112, 144, 160, 176, 192, 200]
    assert lines[-1].startswith("scores: 200/200 pairs (100%)") and "ETA" in lines[-1]


def test_merge_keeps_k_and_tile_rows_cover_every_row_once():
    for n in (1, 7, 10, 23):
        for T in range(1, min(n, 6) + 1):
            rows = np.concatenate([np.arange(n)[tile_rows(t, T, n)] for t in range(T)])
            np.testing.assert_array_equal(rows, np.arange(n))
    with pytest.raises(ValueError):
        tile_rows(3, 3, 10)
    rng = np.random.default_rng(2)
    dims = {"fc.4": (3, 2)}
    test = random_factors(rng, 4, np.arange(4), dims, 1, False, np.float64)
    train = random_factors(rng, 12, np.arange(12), dims, 1, False, np.float64)
    top5 = topk_influence(test, train, 5, [1.0], device="cpu")
    top2 = topk_influence(test, train, 2, [1.0], device="cpu")
    pd.testing.assert_frame_equal(merge_topk([top5], 2), top2, check_exact=True)


def test_lrs_come_from_meta_and_mismatches_are_refused(tmp_path):
    rng = np.random.default_rng(4)
    dims = {"fc.4": (3, 2)}
    test = random_factors(rng, 3, np.arange(3), dims, 2, False, np.float64)
    train = random_factors(rng, 5, np.arange(5), dims, 2, False, np.float64)
    test_dirs = write_folders(tmp_path, "test", test, [0.1, 0.2])
    train_dirs = write_folders(tmp_path, "train", train, [0.1, 0.2])
    np.testing.assert_array_equal(
        score_block(load_checkpoints(test_dirs), load_checkpoints(train_dirs), device="cpu"),
        score_block(test, train, [0.1, 0.2], device="cpu"),
    )
    bad = write_folders(tmp_path / "bad", "train", train, [0.1, 0.3])
    with pytest.raises(ValueError, match="disagree on lr"):
        score_block(load_checkpoints(test_dirs), load_checkpoints(bad), device="cpu")
    with pytest.raises(ValueError, match="pass lrs"):
        score_block(test, train, device="cpu")
    with pytest.raises(ValueError, match="2 test checkpoints but 1 train"):
        score_block(test, train[:1], [0.1, 0.2], device="cpu")
    with pytest.raises(ValueError, match="epoch"):
        score_block(
            load_checkpoints(test_dirs),
            load_checkpoints(train_dirs[::-1]),
            [0.1, 0.2],
            device="cpu",
        )
    nan = random_factors(rng, 5, np.arange(5), dims, 2, False, np.float64)
    nan[1].err["fc.4"][2, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        topk_influence(test, nan, 2, [0.1, 0.2], device="cpu")
    loaded = load_factor_dir(train_dirs[0], rows=(1, 4))
    assert loaded.row_offset == 1 and loaded.lr == 0.1
