"""TracIn scores from factors: dense blocks and the exact top-k, on a fixed block grid.

The math (``docs/math.md``)::

    TracIn(z, z') = sum_ckpt lr * sum_layers <e, e'> * (<a, a'> + 1)      (+1 only with a bias)
    SelfInfluence(z) = sum_ckpt lr * sum_layers |e|^2 * (|a|^2 + 1)

For blocks of rows the score is ``sum_ckpt lr * sum_L (A_t A_r^T + 1) * (E_t E_r^T)``: two matrix
products per (checkpoint, layer) and an elementwise multiply-add. The ``+1`` rides along as a column of
ones appended to ``A`` (only for layers with a bias) and ``lr`` is folded into the test side's ``E``.

Top-k per test row is exact: scores are summed over all checkpoints and layers before any selection,
and ties break by the lower train idx (a total order: ``(score desc, train_idx asc)`` for proponents,
``(score asc, train_idx asc)`` for opponents), so a per-block top-k followed by a merge gives the same
answer as sorting the whole row.

Bit-for-bit reproducibility across tilings. BLAS libraries do not promise that a pair's dot product is
rounded the same way in matrix products of different shapes (MKL does not: a row's results change with
the block it is computed in). So rows are scored on a fixed grid of ``(BT, BR)`` blocks anchored at row 0
of the whole split: a row range (a shard's tile) is zero-padded out to whole grid blocks, and each
matrix product always has the same shape with each row at the same place. A (test, train) pair thus gets
the same bits whether the split is scored whole or in any tiling, and the merge of shards equals the
unsharded result exactly. The grid follows from ``memory_bytes`` (or ``block``): keep it, the device, the
dtype and the thread count the same across the shards of one run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from tracinflow._util.device import exact_matmul, select_device
from tracinflow._util.progress import Log, Progress
from tracinflow.influence.inputs import (
    Checkpoints,
    check_pair,
    check_side,
    checkpoint_list,
    common_layers,
    learning_rates,
)

KINDS = ("proponent", "opponent")
COLUMNS = ["test_idx", "kind", "rank", "train_idx", "influence"]
# Score workspace per grid block. Small blocks keep a CPU's work in cache (measured best on a 2-core
# CPU at 16 MiB, benchmarks/bench_influence.py); on CUDA larger blocks, but not so large that padding a
# split out to whole blocks wastes much.
DEFAULT_MEMORY_BYTES = {"cpu": 16 * 2**20, "cuda": 512 * 2**20}


def _dtype(sides, layers, dtype) -> torch.dtype:
    if dtype is not None:
        return dtype if isinstance(dtype, torch.dtype) else getattr(torch, np.dtype(dtype).name)
    wide = any(
        np.dtype(f.act[layer].dtype) == np.float64 or np.dtype(f.err[layer].dtype) == np.float64
        for side in sides
        for f in side
        for layer in layers
    )
    return torch.float64 if wide else torch.float32


# --------------------------------------------------------------------------------------------------
# the block grid and the score kernel


def block_shape(memory_bytes: int, itemsize: int = 4) -> tuple[int, int]:
    """Grid block ``(BT, BR)`` (test rows, train rows) whose score workspace fits ``memory_bytes``.

    The workspace is three ``BT x BR`` buffers plus selection scratch (about ``4 * itemsize + 2`` bytes
    per pair); ``BR = 4 * BT`` roughly, both multiples of 16.
    """
    per_pair = 4 * itemsize + 2
    pairs = max(int(memory_bytes) // per_pair, 64 * 256)
    bt = max(16, math.isqrt(pairs // 4) // 16 * 16)
    br = max(16, pairs // bt // 16 * 16)
    return bt, br


class _Side:
    """One side's factor terms on the device, zero-padded out to whole grid blocks.

    ``terms[j] = (A, E)`` for (checkpoint, layer) number ``j``: ``A`` is ``[a, 1]`` (the 1 only for a
    layer with a bias), ``E`` is ``e`` (times ``lr`` on the test side). Row ``p`` of the padded arrays is
    row ``start + p`` of the whole split; padding rows are zero.
    """

    def __init__(self, side, layers, lrs, block, dtype, device, scale_lr, name):
        first = side[0]
        self.n = len(first)
        self.lo = int(first.row_offset)
        self.block = block
        self.start = self.lo // block * block
        self.nblocks = -(-(self.lo + self.n - self.start) // block) if self.n else 0
        padded = self.nblocks * block
        off = self.lo - self.start
        rows = slice(off, off + self.n)
        self.terms = []
        for c, f in enumerate(side):
            for layer in layers:
                a = _tensor(f.act[layer], dtype, device)
                e = _tensor(f.err[layer], dtype, device)
                if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(e).all())):
                    raise ValueError(f"{name}: checkpoint {c} layer {layer}: non-finite factors")
                bias = bool(f.has_bias[layer])
                d_in, d_out = a.shape[1], e.shape[1]
                A = torch.zeros(padded, _aligned(d_in + bias, dtype), dtype=dtype, device=device)
                A[rows, :d_in] = a
                if bias:
                    A[rows, d_in] = 1
                E = torch.zeros(padded, _aligned(d_out, dtype), dtype=dtype, device=device)
                E[rows, :d_out] = e * lrs[c] if scale_lr else e
                self.terms.append((A, E))
        self.idx = torch.from_numpy(np.array(first.idx, dtype=np.int64)).to(device)

    def valid(self, b: int) -> tuple[slice, slice]:
        """(rows of grid block ``b`` that are data, within the block; the same rows in the side)."""
        off = self.lo - self.start
        v0 = max(off - b * self.block, 0)
        v1 = min(off + self.n - b * self.block, self.block)
        return slice(v0, v1), slice(b * self.block + v0 - off, b * self.block + v1 - off)


def _aligned(width: int, dtype: torch.dtype) -> int:
    """``width`` rounded up to whole 64-byte rows (zero columns): every row, hence every grid block,
    starts 64-byte aligned, since BLAS results may depend on the operands' alignment."""
    per_row = 64 // torch.empty((), dtype=dtype).element_size()
    return -(-width // per_row) * per_row


def _tensor(array, dtype, device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().to(device=device, dtype=dtype)
    return torch.from_numpy(np.array(array, copy=True)).to(device=device, dtype=dtype)


class _Kernel:
    """Scores grid block ``(i, j)`` into a reused ``(BT, BR)`` buffer: always the same shapes."""

    def __init__(self, test: _Side, train: _Side, dtype, device):
        self.test, self.train = test, train
        shape = (test.block, train.block)
        self.score = torch.empty(shape, dtype=dtype, device=device)
        self.gram_a = torch.empty(shape, dtype=dtype, device=device)
        self.gram_e = torch.empty(shape, dtype=dtype, device=device)

    def __call__(self, i: int, j: int) -> torch.Tensor:
        rt = slice(i * self.test.block, (i + 1) * self.test.block)
        rr = slice(j * self.train.block, (j + 1) * self.train.block)
        terms = zip(self.test.terms, self.train.terms, strict=True)
        for n, ((a_t, e_t), (a_r, e_r)) in enumerate(terms):
            torch.mm(a_t[rt], a_r[rr].T, out=self.gram_a)
            torch.mm(e_t[rt], e_r[rr].T, out=self.gram_e)
            if n == 0:
                torch.mul(self.gram_a, self.gram_e, out=self.score)
            else:
                self.score.addcmul_(self.gram_a, self.gram_e)
        return self.score


def _prepare(test, train, lrs, layers, memory_bytes, block, device, dtype):
    test, train = checkpoint_list(test), checkpoint_list(train)
    layers = common_layers([test, train], layers)
    check_pair(test, train, layers)
    check_side(test, layers, "test")
    check_side(train, layers, "train")
    lrs = learning_rates([test, train], lrs)
    device = select_device(device)
    dtype = _dtype([test, train], layers, dtype)
    if block is None:
        if memory_bytes is None:
            memory_bytes = DEFAULT_MEMORY_BYTES["cuda" if device.type == "cuda" else "cpu"]
        block = block_shape(memory_bytes, torch.empty((), dtype=dtype).element_size())
    bt, br = (int(b) for b in block)
    if bt < 1 or br < 1:
        raise ValueError(f"bad block shape {block}")
    test_side = _Side(test, layers, lrs, bt, dtype, device, True, "test")
    train_side = _Side(train, layers, lrs, br, dtype, device, False, "train")
    return test_side, train_side, _Kernel(test_side, train_side, dtype, device), device


def score_block(
    test: Checkpoints,
    train: Checkpoints,
    lrs: Sequence[float] | None = None,
    *,
    layers: Sequence[str] | None = None,
    memory_bytes: int | None = None,
    block: tuple[int, int] | None = None,
    device=None,
    dtype=None,
) -> np.ndarray:
    """Dense TracIn scores ``(n_test, n_train)`` (for small sizes and library users).

    ``test`` and ``train`` are one :class:`Factors` per checkpoint, in the same checkpoint order;
    ``lrs`` default to each one's meta ``lr``. ``layers`` default to all stored
    layers. Computed on the same block grid as :func:`topk_influence`, so its entries are bit-identical
    to the scores the top-k sees. float64 factors give float64 scores, float32 give float32.
    """
    test_side, train_side, kernel, device = _prepare(
        test, train, lrs, layers, memory_bytes, block, device, dtype
    )
    out = torch.empty(test_side.n, train_side.n, dtype=kernel.score.dtype)
    with exact_matmul(device), torch.inference_mode():
        for i in range(test_side.nblocks):
            vt, rows_t = test_side.valid(i)
            for j in range(train_side.nblocks):
                vr, rows_r = train_side.valid(j)
                out[rows_t, rows_r] = kernel(i, j)[vt, vr].cpu()
    return out.numpy()


# --------------------------------------------------------------------------------------------------
# exact top-k with the tie rule


def _order(values: torch.Tensor, index: torch.Tensor, largest: bool):
    """Sort each row by (value desc if ``largest`` else asc, index asc): two stable sorts."""
    o = torch.argsort(index, dim=1, stable=True)
    values, index = values.gather(1, o), index.gather(1, o)
    o = torch.argsort(values, dim=1, descending=largest, stable=True)
    return values.gather(1, o), index.gather(1, o)


def _block_candidates(score: torch.Tensor, cols: torch.Tensor, k: int, largest: bool):
    """The exact top-``k`` of each row of ``score`` under the tie rule (``cols``: train idx per column).

    ``torch.topk`` gets the values right but may pick any of several equal values at the k-th place, so
    when the (k+1)-th value equals the k-th one the row's candidates are taken as every entry at least as
    good as the k-th value, and the lower train idx wins among them.
    """
    n, m = score.shape
    if k >= m:
        return score, cols.expand(n, m)
    values, where = torch.topk(score, k + 1, dim=1, largest=largest, sorted=True)
    if largest and bool(torch.isnan(values).any()):
        raise ValueError("NaN influence scores")
    tied = values[:, k - 1] == values[:, k]
    values, where = values[:, :k], where[:, :k]
    if not bool(tied.any()):
        return values, cols[where]
    rows = torch.nonzero(tied).squeeze(1)
    sub = score[rows]
    threshold = values[rows, k - 1 : k]
    r, c = torch.nonzero(sub >= threshold if largest else sub <= threshold, as_tuple=True)
    v, ix = sub[r, c], cols[c]
    o = torch.argsort(ix, stable=True)
    o = o[torch.argsort(v[o], descending=largest, stable=True)]
    o = o[torch.argsort(r[o], stable=True)]
    r, v, ix = r[o], v[o], ix[o]
    counts = torch.bincount(r, minlength=rows.numel())
    starts = torch.cumsum(counts, 0) - counts
    keep = (torch.arange(r.numel(), device=r.device) - starts[r]) < k
    values = values.clone()
    index = cols[where]
    values[rows] = v[keep].view(-1, k)
    index[rows] = ix[keep].view(-1, k)
    return values, index


def _threshold_candidates(score, cols, threshold, largest: bool, limit: int):
    """Every entry at least as good as its row's ``threshold``, packed left into ``(n, c)`` arrays
    padded with -inf/+inf and idx int64-max (which sort behind every real entry). None when a row
    has more than ``limit`` of them."""
    n = score.shape[0]
    mask = score >= threshold[:, None] if largest else score <= threshold[:, None]
    r, c = torch.nonzero(mask, as_tuple=True)
    if r.numel() == 0:
        return score.new_empty((n, 0)), cols.new_empty((n, 0))
    counts = torch.bincount(r, minlength=n)
    width = int(counts.max())
    if width > limit:
        return None
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(r.numel(), device=r.device) - starts[r]
    values = score.new_full((n, width), -math.inf if largest else math.inf)
    index = cols.new_full((n, width), torch.iinfo(torch.int64).max)
    values[r, pos] = score[r, c]
    index[r, pos] = cols[c]
    return values, index


class _RunningTopK:
    """The best ``k`` (value, train idx) of each row so far, ordered by the tie rule.

    Once ``k`` are held, a new block only contributes entries at least as good as the row's k-th value
    (anything worse cannot enter): a cheap comparison instead of a top-k over the block. Candidates
    wait in a buffer and are merged (sorted) only once about ``k`` have gathered per row; the k-th
    value used meanwhile is a stale, lower bar, which only lets more candidates through.
    """

    def __init__(self, k: int, largest: bool):
        self.k, self.largest = k, largest
        self.values: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending_width = 0

    def update(self, score: torch.Tensor, cols: torch.Tensor) -> None:
        found = None
        if self.values is not None and self.values.shape[1] == self.k:
            limit = 4 * self.k  # wider than that: a top-k of the block is cheaper
            found = _threshold_candidates(score, cols, self.values[:, -1], self.largest, limit)
        if found is None:
            found = _block_candidates(score, cols, self.k, self.largest)
        if found[0].shape[1] == 0:
            return
        self.pending.append(found)
        self.pending_width += found[0].shape[1]
        if self.values is None or self.values.shape[1] < self.k or self.pending_width >= self.k:
            self._merge()

    def _merge(self) -> None:
        parts = ([(self.values, self.index)] if self.values is not None else []) + self.pending
        self.pending, self.pending_width = [], 0
        if not parts:
            return
        values = torch.cat([v for v, _ in parts], dim=1)
        index = torch.cat([i for _, i in parts], dim=1)
        values, index = _order(values, index, self.largest)
        self.values, self.index = values[:, : self.k], index[:, : self.k]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._merge()
        return self.values, self.index


def _frame(test_idx: np.ndarray, results: dict, dtype) -> pd.DataFrame:
    parts = []
    for code, kind in enumerate(KINDS):
        values, index = results[kind]
        n, kk = values.shape
        parts.append(
            {
                "test_idx": np.repeat(test_idx, kk),
                "kind_code": np.full(n * kk, code),
                "rank": np.tile(np.arange(1, kk + 1, dtype=np.int64), n),
                "train_idx": index.reshape(-1),
                "influence": values.reshape(-1),
            }
        )
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return canonical_topk(cols, dtype)


def canonical_topk(cols: dict, dtype) -> pd.DataFrame:
    """Rows ordered by test_idx, kind (proponents first), rank; fixed dtypes."""
    order = np.lexsort((cols["rank"], cols["kind_code"], cols["test_idx"]))
    kinds = np.asarray(KINDS, dtype=object)
    return pd.DataFrame(
        {
            "test_idx": np.asarray(cols["test_idx"], dtype=np.int64)[order],
            "kind": kinds[np.asarray(cols["kind_code"])[order]],
            "rank": np.asarray(cols["rank"], dtype=np.int64)[order],
            "train_idx": np.asarray(cols["train_idx"], dtype=np.int64)[order],
            "influence": np.asarray(cols["influence"], dtype=dtype)[order],
        }
    )


def _scan_blocks(test_side, train_side, kernel, k: int, progress: Progress | None) -> dict:
    """Per kind, the (values, train idx) arrays of every test row's top-k, block row by block
    row of the grid: each test block keeps a running top-k over all train blocks."""
    results = {kind: ([], []) for kind in KINDS}
    for i in range(test_side.nblocks):
        vt, _ = test_side.valid(i)
        running = {kind: _RunningTopK(k, kind == "proponent") for kind in KINDS}
        for j in range(train_side.nblocks):
            vr, rows_r = train_side.valid(j)
            score = kernel(i, j)[vt, vr]
            for tracker in running.values():
                tracker.update(score, train_side.idx[rows_r])
            if progress is not None:
                progress.update(score.numel())
        for kind, tracker in running.items():
            values, index = tracker.result()
            results[kind][0].append(values.cpu().numpy())
            results[kind][1].append(index.cpu().numpy())
    return results


def topk_influence(
    test: Checkpoints,
    train: Checkpoints,
    k: int,
    lrs: Sequence[float] | None = None,
    *,
    layers: Sequence[str] | None = None,
    memory_bytes: int | None = None,
    block: tuple[int, int] | None = None,
    device=None,
    dtype=None,
    log: Log | None = None,
    label: str = "scores",
    progress_every: float = 5.0,
) -> pd.DataFrame:
    """Exact top-``k`` proponents and opponents of every test row over all train rows.

    ``test`` and ``train`` are one :class:`Factors` per checkpoint, in the same checkpoint order;
    ``lrs`` default to each one's meta ``lr``. Scores are summed over every checkpoint and layer,
    block by block on the grid (at most ``memory_bytes`` of score workspace, default 16 MiB on CPU,
    512 MiB on CUDA; or an explicit ``block`` ``(BT, BR)``), and a running top-k per test row is
    kept: the full test x train matrix never exists. (The rows' factors themselves also sit on the
    device, padded to the grid, in the compute dtype.) Ties break by the lower train idx. ``k``
    larger than the train rows returns them all, ranked.

    Returns a DataFrame ``test_idx, kind ("proponent"|"opponent"), rank (1 = strongest), train_idx,
    influence`` ordered by test_idx, kind, rank; idx values are the factors' dataset idx. With
    ``log``, a progress line (``label: pairs scored``) at most every ``progress_every`` seconds.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = int(k)
    test_side, train_side, kernel, device = _prepare(
        test, train, lrs, layers, memory_bytes, block, device, dtype
    )
    np_dtype = np.float64 if kernel.score.dtype == torch.float64 else np.float32
    progress = None
    if log is not None:
        progress = Progress(test_side.n * train_side.n, label, "pairs", log, every=progress_every)
    with exact_matmul(device), torch.inference_mode():
        results = _scan_blocks(test_side, train_side, kernel, k, progress)
    test_idx = test_side.idx.cpu().numpy()
    if not test_side.n or not train_side.n:
        empty = np.empty((test_side.n, 0))
        stacked = {kind: (empty.astype(np_dtype), empty.astype(np.int64)) for kind in KINDS}
    else:
        stacked = {
            kind: (np.concatenate(v), np.concatenate(ix)) for kind, (v, ix) in results.items()
        }
    return _frame(test_idx, stacked, np_dtype)
