"""The influence rules: curvature, influence_shard, merge_topk, self_influence.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads, calls the influence package
and writes every output atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from tracinflow._util.device import select_device
from tracinflow._util.files import write_csv, write_parquet
from tracinflow.analysis.reports import readable_topk
from tracinflow.config import LAYER_SETS, checkpoint_name
from tracinflow.data.split import class_names_of
from tracinflow.influence import self_influence as scores
from tracinflow.influence.curvature import (
    curvature_inverses,
    curvature_self_influence,
    preconditioned_sides,
)
from tracinflow.influence.inputs import learning_rates
from tracinflow.influence.kernel import COLUMNS, topk_influence
from tracinflow.influence.shards import merge_topk as merge_candidates
from tracinflow.influence.shards import tile_rows
from tracinflow.io.common import per_member
from tracinflow.io.factor_store import (
    folder_rows,
    load_checkpoints,
    load_curvature,
    save_curvature,
)

#: the layer whose exact Gauss-Newton self-influence is a ranking (the logits' Linear layer)
FINAL_LAYER = LAYER_SETS["final"][0]


def _epochs(factors) -> list:
    """Each checkpoint's identity: its stage-2 epoch, or ``stage1_epoch_EEE``."""
    return [
        checkpoint_name(1, f.meta["epoch"]) if f.stage == 1 else int(f.meta.get("epoch", -1))
        for f in factors
    ]


def curvature(inputs, outputs, params, threads=1, log=print) -> list[dict]:
    """The damped curvature inverses of every checkpoint (influence.method kfac or gauss_newton)
    from the training factors, the file every shard of the version preconditions with."""
    torch.set_num_threads(threads)
    method, damping = params["method"], float(params["damping"])
    train = load_checkpoints(list(inputs["train"]))
    layers = list(train[0].layers)
    started = time.perf_counter()
    inverses = curvature_inverses(method, train, layers, damping)
    save_curvature(outputs["inverses"], inverses, method=method, damping=damping, layers=layers,
                   epochs=_epochs(train))  # fmt: skip
    sizes = ", ".join(f"{name} {m.shape[0]}x{m.shape[1]}" for name, m in inverses[0].items())
    log(f"{method} curvature of {len(train)} checkpoints x {len(train[0])} training images, "
        f"damping {damping:g} x mean eigenvalue ({sizes}) in "
        f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    return inverses


def shard_topk(
    test_dirs: Sequence,
    train_dirs: Sequence,
    k: int,
    *,
    test_tile: tuple[int, int] = (0, 1),
    train_tile: tuple[int, int] = (0, 1),
    curvature=None,
    ensemble: Sequence[tuple] = (),
    log=None,
    **kernel,
) -> pd.DataFrame:
    """Top-k candidates of test tile ``test_tile = (t, T)`` against train tile ``train_tile =
    (r, R)``, summed over every checkpoint: the factor folders of every checkpoint (same order)
    for the test and the train split, of which only the tiles' rows are read (the train rows one
    grid block at a time, so a shard's memory does not grow with its train tile); learning rates
    come from each folder's meta.json. ``kernel``: the keyword arguments of
    :func:`~tracinflow.influence.kernel.topk_influence` (layers, memory_bytes, block, device,
    dtype, precision). The merge over all ``R`` train tiles of a test tile gives the exact top-k.
    ``curvature``: the file of the curvature rule, for a curvature-aware method's influence
    (the test tile preconditioned with it; :func:`~tracinflow.influence.curvature.
    preconditioned_sides`) instead of TracIn's. ``ensemble``: ``(test_dirs, train_dirs,
    curvature)`` of each other model whose scores are averaged with this one's
    (influence.ensemble): one sum over every model's checkpoints, each learning rate divided by
    the number of models."""
    if len(test_dirs) != len(train_dirs) or not test_dirs:
        raise ValueError(f"{len(test_dirs)} test folders but {len(train_dirs)} train folders")
    rows_t = tile_rows(*test_tile, folder_rows(test_dirs, "test"))
    rows_r = tile_rows(*train_tile, folder_rows(train_dirs, "train"))
    layers = kernel.pop("layers", None)
    models = [(test_dirs, train_dirs, curvature), *ensemble]
    test, train, lrs, used = [], [], [], layers
    for model_test, model_train, model_curvature in models:
        sides = _model_sides(model_test, model_train, rows_t, rows_r, layers, model_curvature)
        if test and not (_same_rows(sides[0], test) and _same_rows(sides[1], train)):
            raise ValueError(
                f"{model_train[0]}: an ensemble member's factors are of other images than "
                f"{train_dirs[0]}'s; its members differ only in their seed"
            )
        test += sides[0]
        train += sides[1]
        used = sides[2]
        # the mean over the models: each checkpoint's learning rate over their number
        lrs += [lr / len(models) for lr in sides[3]]
    return topk_influence(test, train, k, lrs, log=log, label="shard", layers=used, **kernel)


def _same_rows(side, other) -> bool:
    return np.array_equal(np.asarray(side[0].idx), np.asarray(other[0].idx))


def _model_sides(test_dirs, train_dirs, rows_t, rows_r, layers, curvature):
    """(test, train, layers, learning rates) of one model's checkpoints, at the tiles' rows: its
    factors, preconditioned with its curvature file where the method has one."""
    # a preconditioned test tile is computed whole in memory (the train tile is streamed either way)
    test = load_checkpoints(test_dirs, rows=rows_t, layers=layers, stream=curvature is None)
    train = load_checkpoints(train_dirs, rows=rows_r, layers=layers, stream=True)
    lrs = learning_rates([test, train], None)
    if curvature is not None:
        inverses, meta = load_curvature(curvature)
        if meta["epochs"] != _epochs(train):
            raise ValueError(
                f"{curvature}: made for the checkpoints of epochs {meta['epochs']}, but the "
                f"factors are of epochs {_epochs(train)}: rerun the curvature rule"
            )
        test, train, layers = preconditioned_sides(meta["method"], test, train, inverses,
                                                   layers or meta["layers"])  # fmt: skip
    return test, train, layers, lrs


def _ensemble_inputs(inputs, members: Sequence[str], method: str) -> list[tuple]:
    """``(test_dirs, train_dirs, curvature)`` of each member of ``params["ensemble"]``, from the
    inputs ``ensemble_test`` and ``ensemble_train`` (by member, then epoch) and
    ``ensemble_curvature`` (one per member, for a curvature method). Without members a rule
    needs none of these inputs (benchmarks/scale/Snakefile declares only ``test`` and ``train``)."""
    if not members:
        return []
    n = len(members)
    curvatures = (
        [files[0] for files in per_member(inputs["ensemble_curvature"], n)]
        if method != "tracin" else [None] * n
    )  # fmt: skip
    tests, trains = per_member(inputs["ensemble_test"], n), per_member(inputs["ensemble_train"], n)
    return list(zip(tests, trains, curvatures, strict=True))


def influence_shard(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Top-k candidates of one (test tile, train tile) shard, summed over every checkpoint, of
    ``params["method"]`` (TracIn, or a curvature-aware influence with ``inputs["curvature"]``)."""
    torch.set_num_threads(threads)
    tiles = params["tiles"]
    t, r = int(params["test_tile"]), int(params["train_tile"])
    precision = params.get("precision", "float32")
    method = params.get("method", "tracin")
    log(
        f"shard test tile {t}/{tiles['test']}, train tile {r}/{tiles['train']}, k {params['k']}, "
        f"precision {precision}, method {method}"
    )
    started = time.perf_counter()
    frame = shard_topk(
        list(inputs["test"]),
        list(inputs["train"]),
        params["k"],
        test_tile=(t, tiles["test"]),
        train_tile=(r, tiles["train"]),
        memory_bytes=params["memory_mb"] * 2**20,
        device=select_device(params["device"]),
        precision=precision,
        curvature=inputs["curvature"] if method != "tracin" else None,
        ensemble=_ensemble_inputs(inputs, params.get("ensemble") or [], method),
        log=log,
    )
    write_parquet(outputs["shard"], frame[COLUMNS])
    log(f"shard scored in {time.perf_counter() - started:.2f} s: {len(frame)} candidate rows")
    return frame


def merge_topk(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Exact per-test-row top-k over all shards, plus a CSV with paths, labels and predictions."""
    shards = list(inputs["shards"])
    merged = merge_candidates([pd.read_parquet(path) for path in shards], params["k"])
    write_parquet(outputs["parquet"], merged)
    manifest = pd.read_parquet(inputs["manifest"])
    readable = readable_topk(
        merged,
        manifest,
        pd.read_parquet(inputs["test"]),
        pd.read_parquet(inputs["train"]),
        class_names_of(manifest),
    )
    write_csv(outputs["csv"], readable)
    log(f"merged {len(shards)} shards: {merged['test_idx'].nunique()} test images, k {params['k']}")
    return merged


def self_influence(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Self-influence of every training image, with each checkpoint's term alongside; the
    error-signal-only variant ``sum lr |e|^2``; and the self-influence under the curvature
    (``params["damping"]``): K-FAC over the traced layers, and the final layer's exact
    Gauss-Newton where it is traced (rankings the noise evaluation compares)."""
    torch.set_num_threads(threads)
    train = load_checkpoints(list(inputs["train"]))
    frame = scores.self_influence(train, per_checkpoint=True)
    write_parquet(outputs["self_influence"], frame)
    error = scores.self_influence(train, mode="error", per_checkpoint=True)
    write_parquet(outputs["error_self_influence"], error)
    write_parquet(outputs["curvature_self_influence"],
                  curvature_self_influence_frame(train, float(params["damping"])))  # fmt: skip
    log(f"self-influence of {len(frame)} training images (TracIn, error-signal only, and under "
        f"the curvature at damping {params['damping']:g})")  # fmt: skip
    return frame


def curvature_self_influence_frame(train, damping: float) -> pd.DataFrame:
    """``train_idx``, ``kfac_self_influence`` (every traced layer) and, where the final layer is
    traced, ``gn_self_influence``: summed over the checkpoints with their learning rates."""
    lrs = learning_rates([train], None)
    layers = list(train[0].layers)
    frame = pd.DataFrame({"train_idx": np.asarray(train[0].idx, dtype=np.int64)})
    frame["kfac_self_influence"] = curvature_self_influence(train, "kfac", layers, lrs, damping)
    if FINAL_LAYER in layers:
        frame["gn_self_influence"] = curvature_self_influence(
            train, "gauss_newton", [FINAL_LAYER], lrs, damping
        )
    return frame
