"""TracIn scores from factors: dense blocks and the exact top-k, on a fixed block grid.

The math (``docs/math.md``)::

    TracIn(z, z') = sum_ckpt lr * sum_layers <e, e'> * (<a, a'> + 1)      (+1 only with a bias)
    SelfInfluence(z) = sum_ckpt lr * sum_layers |e|^2 * (|a|^2 + 1)

For blocks of rows the score is ``sum_ckpt lr * sum_L (A_t A_r^T + 1) * (E_t E_r^T)``: two matrix
products per (checkpoint, layer) and an elementwise multiply-add. The ``+1`` (only for layers with a
bias) is the GEMM's own ``C`` term (``addmm`` onto ones), so the products run over exactly ``d_in``
columns (a column of ones would pad 256 to 272), and ``lr`` is folded into the test side's ``E``.

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

from tracinflow._util.device import float32_matmul, select_device
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
#: Operand precisions of the score GEMMs (``float32``, exact, is the default).
PRECISIONS = ("float32", "bf16", "tf32")
COLUMNS = ["test_idx", "kind", "rank", "train_idx", "influence"]
# Score workspace per grid block. Small blocks keep a CPU's work in cache; 32 MiB measured best on a
# 2-core CPU (as fast as 16 MiB with OpenMP's default wait policy, 10-15% faster with
# OMP_WAIT_POLICY=PASSIVE, which wakes threads for every product: fewer, larger blocks wake them
# less). On CUDA larger blocks, but not so large that padding a split to whole blocks wastes much.
DEFAULT_MEMORY_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}


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


class _Grid:
    """Where one side's rows sit on the block grid: row ``p`` of grid block ``b`` is row
    ``start + b * block + p`` of the whole split, and the side holds rows ``[lo, lo + n)``."""

    def __init__(self, side, block: int):
        first = side[0]
        self.n = len(first)
        self.lo = int(first.row_offset)
        self.block = block
        self.start = self.lo // block * block
        self.nblocks = -(-(self.lo + self.n - self.start) // block) if self.n else 0
        self.idx = np.array(first.idx, dtype=np.int64)

    def valid(self, b: int) -> tuple[slice, slice]:
        """(rows of grid block ``b`` that are data, within the block; the same rows in the side)."""
        off = self.lo - self.start
        v0 = max(off - b * self.block, 0)
        v1 = min(off + self.n - b * self.block, self.block)
        return slice(v0, v1), slice(b * self.block + v0 - off, b * self.block + v1 - off)


class _Operands:
    """How factor rows become GEMM operands: the compute dtype, the device, and ``precision``
    (``float32``: exact; ``bf16``: operands rounded to bfloat16, products accumulated and summed in
    float32 (native bfloat16 GEMMs on CUDA, the same rounding emulated on the CPU); ``tf32``: CUDA's
    TF32 matrix products)."""

    def __init__(self, dtype, device, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "tf32" and device.type != "cuda":
            raise ValueError(f"precision tf32 is a CUDA mode; this runs on {device}: use float32")
        if precision != "float32" and dtype != torch.float32:
            raise ValueError(f"precision {precision} needs float32 factors, not {dtype}")
        self.dtype, self.device, self.precision = dtype, device, precision
        self.native_bf16 = precision == "bf16" and device.type == "cuda"
        # TF32 products only when asked for; otherwise exact float32 products
        self.matmul_precision = "high" if precision == "tf32" else "highest"
        self.storage = torch.bfloat16 if self.native_bf16 else dtype

    def tensor(self, array, name: str, scale: float = 1.0) -> torch.Tensor:
        if isinstance(array, torch.Tensor):
            t = array.detach().to(device=self.device, dtype=self.dtype)
        else:  # a fresh copy: memory maps and NpyRows are read here
            t = torch.from_numpy(np.array(array, copy=True)).to(self.device, self.dtype)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: non-finite factors")
        if scale != 1.0:
            t = t * scale
        if self.precision == "bf16":
            t = t.to(torch.bfloat16).to(self.storage)
        return t

    def buffer(self, rows: int, width: int) -> torch.Tensor:
        return torch.zeros(
            rows, _aligned(width, self.storage), dtype=self.storage, device=self.device
        )


def _sources(side, layers):
    """(checkpoint, Factors, layer) of every score term, in term order."""
    return [(c, f, layer) for c, f in enumerate(side) for layer in layers]


class _Side(_Grid):
    """The test side: every row's operands on the device at once, zero-padded out to whole grid
    blocks. ``terms[n] = (A, E, bias)`` for (checkpoint, layer) number ``n``: ``A`` is ``a``, ``E``
    is ``lr * e``, ``bias`` whether the layer adds the ``+1``."""

    def __init__(self, side, layers, lrs, block, ops: _Operands, name):
        super().__init__(side, block)
        off = self.lo - self.start  # the side's first row, within the padded arrays
        rows = slice(off, off + self.n)
        self.terms = []
        for c, f, layer in _sources(side, layers):
            where = f"{name}: checkpoint {c} layer {layer}"
            a = ops.tensor(f.act[layer], where)
            e = ops.tensor(f.err[layer], where, scale=lrs[c])
            A, E = (
                ops.buffer(self.nblocks * block, a.shape[1]),
                ops.buffer(self.nblocks * block, e.shape[1]),
            )
            A[rows, : a.shape[1]] = a
            E[rows, : e.shape[1]] = e
            self.terms.append((A, E, bool(f.has_bias[layer])))

    def block_terms(self, b: int):
        rows = slice(b * self.block, (b + 1) * self.block)
        return [(A[rows], E[rows], bias) for A, E, bias in self.terms]


class _StreamSide(_Grid):
    """The train side, read one grid block at a time into reused buffers (memory maps and
    :class:`~tracinflow.io.factor_store.NpyRows` read only that block's rows), so a scan over
    any number of train rows holds one block of them; padding rows are zero."""

    def __init__(self, side, layers, block, ops: _Operands, name):
        super().__init__(side, block)
        self.ops, self.name = ops, name
        self.sources = _sources(side, layers)
        self.buffers = [
            (ops.buffer(block, f.act[layer].shape[1]), ops.buffer(block, f.err[layer].shape[1]))
            for _, f, layer in self.sources
        ]

    def block_terms(self, b: int):
        inside, rows = self.valid(b)
        partial = inside.stop - inside.start < self.block
        terms = []
        for (c, f, layer), (A, E) in zip(self.sources, self.buffers, strict=True):
            where = f"{self.name}: checkpoint {c} layer {layer}"
            a, e = (
                self.ops.tensor(f.act[layer][rows], where),
                self.ops.tensor(f.err[layer][rows], where),
            )
            if partial:
                A.zero_()
                E.zero_()
            A[inside, : a.shape[1]] = a
            E[inside, : e.shape[1]] = e
            terms.append((A, E, bool(f.has_bias[layer])))
        return terms


def _aligned(width: int, dtype: torch.dtype) -> int:
    """``width`` rounded up to whole 64-byte rows (zero columns): every row, hence every grid block,
    starts 64-byte aligned, since BLAS results may depend on the operands' alignment."""
    per_row = 64 // torch.empty((), dtype=dtype).element_size()
    return -(-width // per_row) * per_row


class _Kernel:
    """Scores one grid block (test terms x train terms) into a reused ``(BT, BR)`` buffer: always
    the same shapes."""

    def __init__(self, shape, ops: _Operands):
        self.ops = ops
        self.score = torch.empty(shape, dtype=ops.dtype, device=ops.device)
        self.gram_a = torch.empty(shape, dtype=ops.dtype, device=ops.device)
        self.gram_e = torch.empty(shape, dtype=ops.dtype, device=ops.device)
        self.one = torch.ones((1, 1), dtype=ops.dtype, device=ops.device)

    def _gemm(self, a, b, out, plus_one: bool) -> None:
        if self.ops.native_bf16:  # bfloat16 operands, float32 results
            out.copy_(torch.mm(a, b.T, out_dtype=torch.float32))
            if plus_one:
                out.add_(1)
        elif plus_one:  # 1 + a b^T as one GEMM (beta = 1 onto ones)
            torch.addmm(self.one, a, b.T, out=out)
        else:
            torch.mm(a, b.T, out=out)

    def __call__(self, test_terms, train_terms) -> torch.Tensor:
        terms = zip(test_terms, train_terms, strict=True)
        for n, ((a_t, e_t, bias), (a_r, e_r, _)) in enumerate(terms):
            self._gemm(a_t, a_r, self.gram_a, bias)
            self._gemm(e_t, e_r, self.gram_e, False)
            if n == 0:
                torch.mul(self.gram_a, self.gram_e, out=self.score)
            else:
                self.score.addcmul_(self.gram_a, self.gram_e)
        return self.score


def _prepare(test, train, lrs, layers, memory_bytes, block, device, dtype, precision):
    test, train = checkpoint_list(test), checkpoint_list(train)
    layers = common_layers([test, train], layers)
    check_pair(test, train, layers)
    check_side(test, layers, "test")
    check_side(train, layers, "train")
    lrs = learning_rates([test, train], lrs)
    device = select_device(device)
    ops = _Operands(_dtype([test, train], layers, dtype), device, precision)
    if block is None:
        if memory_bytes is None:
            memory_bytes = DEFAULT_MEMORY_BYTES["cuda" if device.type == "cuda" else "cpu"]
        block = block_shape(memory_bytes, torch.empty((), dtype=ops.dtype).element_size())
    bt, br = (int(b) for b in block)
    if bt < 1 or br < 1:
        raise ValueError(f"bad block shape {block}")
    test_side = _Side(test, layers, lrs, bt, ops, "test")
    train_side = _StreamSide(train, layers, br, ops, "train")
    return test_side, train_side, _Kernel((bt, br), ops), ops


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
    precision: str = "float32",
) -> np.ndarray:
    """Dense TracIn scores ``(n_test, n_train)`` (for small sizes and library users).

    ``test`` and ``train`` are one :class:`Factors` per checkpoint, in the same checkpoint order;
    ``lrs`` default to each one's meta ``lr``. ``layers`` default to all stored
    layers. Computed on the same block grid as :func:`topk_influence`, so its entries are bit-identical
    to the scores the top-k sees. float64 factors give float64 scores, float32 give float32;
    ``precision`` as in :func:`topk_influence`.
    """
    test_side, train_side, kernel, ops = _prepare(
        test, train, lrs, layers, memory_bytes, block, device, dtype, precision
    )
    out = torch.empty(test_side.n, train_side.n, dtype=kernel.score.dtype)
    with float32_matmul(ops.device, ops.matmul_precision), torch.inference_mode():
        for j in range(train_side.nblocks):
            vr, rows_r = train_side.valid(j)
            train_terms = train_side.block_terms(j)
            for i in range(test_side.nblocks):
                vt, rows_t = test_side.valid(i)
                out[rows_t, rows_r] = kernel(test_side.block_terms(i), train_terms)[vt, vr].cpu()
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
    """The exact top-``k`` of each row of ``score`` under the tie rule, as a set: values in order,
    but entries of equal value in any order. ``cols`` is the train idx per column (1-D) or per entry
    (2-D, the shape of ``score``).

    ``torch.topk`` gets the values right but may pick any of several equal values at the k-th place, so
    when the (k+1)-th value equals the k-th one the row's candidates are taken as every entry at least as
    good as the k-th value, and the lower train idx wins among them.
    """
    n, m = score.shape
    cols = cols.expand(n, m)
    if k >= m:
        return score, cols
    values, where = torch.topk(score, k + 1, dim=1, largest=largest, sorted=True)
    if largest and bool(torch.isnan(values).any()):
        raise ValueError("NaN influence scores")
    tied = values[:, k - 1] == values[:, k]
    values, index = values[:, :k], cols.gather(1, where[:, :k])
    if not bool(tied.any()):
        return values, index
    rows = torch.nonzero(tied).squeeze(1)
    sub = score[rows]
    threshold = values[rows, k - 1 : k]
    r, c = torch.nonzero(sub >= threshold if largest else sub <= threshold, as_tuple=True)
    v, ix = sub[r, c], cols[rows][r, c]
    o = torch.argsort(ix, stable=True)
    o = o[torch.argsort(v[o], descending=largest, stable=True)]
    o = o[torch.argsort(r[o], stable=True)]
    r, v, ix = r[o], v[o], ix[o]
    counts = torch.bincount(r, minlength=rows.numel())
    starts = torch.cumsum(counts, 0) - counts
    keep = (torch.arange(r.numel(), device=r.device) - starts[r]) < k
    values = values.clone()
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
    wait in a buffer and are merged (a top-k selection) only once about ``k`` have gathered per row;
    the k-th value used meanwhile is a stale, lower bar, which only lets more candidates through.
    Only the final result is sorted by the tie rule.
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
            # the held set's worst value (the set is not kept sorted)
            worst = self.values.amin(1) if self.largest else self.values.amax(1)
            found = _threshold_candidates(score, cols, worst, self.largest, limit)
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
        self.values, self.index = _block_candidates(values, index, self.k, self.largest)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._merge()
        if self.values is None:
            return None, None
        return _order(self.values, self.index, self.largest)


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
    # Opponents are negative influence and proponents positive (docs/math.md): a score of the
    # other sign (or zero) ranked among a row's k lowest or highest is neither, so it is dropped.
    # Dropping it per block or shard keeps the merge exact: a signed top-k entry of the whole row
    # is a signed top-k entry of its own shard.
    signed = np.where(cols["kind_code"] == 0, cols["influence"] > 0, cols["influence"] < 0)
    return canonical_topk({key: value[signed] for key, value in cols.items()}, dtype)


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
    """Per kind, the (values, train idx) arrays of every test row's top-k. The train side is read
    once, block by block; each test block keeps a running top-k over the train blocks seen."""
    running = [
        {kind: _RunningTopK(k, kind == "proponent") for kind in KINDS}
        for _ in range(test_side.nblocks)
    ]
    for j in range(train_side.nblocks):
        vr, rows_r = train_side.valid(j)
        train_terms = train_side.block_terms(j)
        cols = torch.from_numpy(train_side.idx[rows_r]).to(kernel.ops.device)
        for i, trackers in enumerate(running):
            vt, _ = test_side.valid(i)
            score = kernel(test_side.block_terms(i), train_terms)[vt, vr]
            for tracker in trackers.values():
                tracker.update(score, cols)
            if progress is not None:
                progress.update(score.numel())
    results = {kind: ([], []) for kind in KINDS}
    for trackers in running:
        for kind, tracker in trackers.items():
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
    precision: str = "float32",
    log: Log | None = None,
    label: str = "scores",
    progress_every: float = 5.0,
) -> pd.DataFrame:
    """Exact top-``k`` proponents and opponents of every test row over all train rows.

    ``test`` and ``train`` are one :class:`Factors` per checkpoint, in the same checkpoint order;
    ``lrs`` default to each one's meta ``lr``. Scores are summed over every checkpoint and layer,
    block by block on the grid (at most ``memory_bytes`` of score workspace, default 32 MiB on CPU,
    512 MiB on CUDA; or an explicit ``block`` ``(BT, BR)``), and a running top-k per test row is
    kept: the full test x train matrix never exists. The test rows' factors sit on the device,
    padded to the grid, in the compute dtype; the train rows are read one block at a time (memory
    maps or :class:`~tracinflow.io.factor_store.NpyRows`), so memory does not grow with the
    train rows. Ties break by the lower train idx. Only positive scores are proponents and only
    negative ones opponents: a row with fewer than ``k`` of either sign gets fewer rows of that
    kind (``k`` larger than the train rows returns every one of that sign, ranked).
    ``precision`` (:data:`PRECISIONS`): ``float32`` (exact, the default), ``bf16`` operands
    (float32 sums) or ``tf32`` products (CUDA only); keep it the same across shards.

    Returns a DataFrame ``test_idx, kind ("proponent"|"opponent"), rank (1 = strongest), train_idx,
    influence`` ordered by test_idx, kind, rank; idx values are the factors' dataset idx. With
    ``log``, a progress line (``label: pairs scored``) at most every ``progress_every`` seconds.
    """
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = int(k)
    test_side, train_side, kernel, ops = _prepare(
        test, train, lrs, layers, memory_bytes, block, device, dtype, precision
    )
    np_dtype = np.float64 if kernel.score.dtype == torch.float64 else np.float32
    progress = None
    if log is not None:
        progress = Progress(test_side.n * train_side.n, label, "pairs", log, every=progress_every)
    with float32_matmul(ops.device, ops.matmul_precision), torch.inference_mode():
        results = _scan_blocks(test_side, train_side, kernel, k, progress)
    test_idx = test_side.idx
    if not test_side.n or not train_side.n:
        empty = np.empty((test_side.n, 0))
        stacked = {kind: (empty.astype(np_dtype), empty.astype(np.int64)) for kind in KINDS}
    else:
        stacked = {
            kind: (np.concatenate(v), np.concatenate(ix)) for kind, (v, ix) in results.items()
        }
    return _frame(test_idx, stacked, np_dtype)
