"""Factor folders on disk: one memory-mappable ``.npy`` per array, ``meta.json`` written last.

A (checkpoint, split) folder holds ``<layer>.act.npy`` (N, d_in) and ``<layer>.err.npy`` (N, d_out)
for each hooked layer, ``idx.npy``, ``labels.npy``, ``logits.npy`` and ``meta.json`` (epoch, lr,
layers, has_bias, loss settings, target, num_samples). Every array is written atomically and
``meta.json`` last, so a folder without it is incomplete and is never read as data.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from tracinflow._util.files import atomic_path, read_json, write_json
from tracinflow._util.progress import Log, Progress
from tracinflow.influence.factors import (
    Factors,
    factor_batches,
    loader_samples,
    resolve_layers,
    to_numpy,
    traced_loss,
)
from tracinflow.io.checkpoints import load_for_inference, verify_checkpoint
from tracinflow.io.common import version_split
from tracinflow.train.batches import CacheBatches
from tracinflow.train.loss import PerSampleLoss

META = "meta.json"


def _file(layer: str, kind: str) -> str:
    return f"{layer}.{kind}.npy"


def is_complete(path) -> bool:
    """A factor folder is complete when its meta.json exists (it is written last)."""
    return (Path(path) / META).is_file()


def _meta(*, epoch, lr, layers, has_bias, loss, target, num_samples, stage=2) -> dict:
    if lr is None:
        raise ValueError("lr is required in a factor folder's meta.json")
    # a stage-1 checkpoint's folder says so; stage 2's carry no stage (as before stage 1 was traced)
    return ({"stage": 1} if int(stage) == 1 else {}) | {
        "epoch": None if epoch is None else int(epoch),
        "lr": float(lr),
        "layers": list(layers),
        "has_bias": {name: bool(has_bias[name]) for name in layers},
        "loss": loss,
        "target": target,
        "num_samples": int(num_samples),
    }


class FactorWriter:
    """Streams factor batches into the ``.npy`` files of one folder, appending rows in order.

    Every array goes to a temporary file beside its final name: its ``.npy`` header (the final
    shape) first, then each batch's rows as they come, written with plain file writes. Memory stays
    bounded by one batch (a memory map would keep every written page in the process's resident set).
    :meth:`close` checks the row count, renames every file into place and writes ``meta.json``
    last; leaving the ``with`` block on an exception deletes the temporary files. An existing
    ``meta.json`` is removed first, so a half-rewritten folder never looks complete.
    """

    def __init__(
        self,
        path,
        num_samples: int,
        dims: dict[str, tuple[int, int]],
        num_classes: int,
        dtype=np.float32,
    ):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / META).unlink(missing_ok=True)
        self.num_samples = int(num_samples)
        self.layers = list(dims)
        self.pos = 0
        self._stack = contextlib.ExitStack()
        self._files: dict[str, tuple] = {}  # name -> (open file, dtype, row shape)
        shapes = {}
        for layer, (d_in, d_out) in dims.items():
            shapes[_file(layer, "act")] = ((self.num_samples, d_in), dtype)
            shapes[_file(layer, "err")] = ((self.num_samples, d_out), dtype)
        shapes["idx.npy"] = ((self.num_samples,), np.int64)
        shapes["labels.npy"] = ((self.num_samples,), np.int64)
        shapes["logits.npy"] = ((self.num_samples, num_classes), dtype)
        try:
            for name, (shape, dt) in shapes.items():
                tmp = self._stack.enter_context(atomic_path(self.path / name))
                handle = self._stack.enter_context(open(tmp, "wb"))
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dt)),
                          "fortran_order": False, "shape": shape}  # fmt: skip
                np.lib.format.write_array_header_1_0(handle, header)
                self._files[name] = (handle, np.dtype(dt), shape[1:])
        except BaseException:
            self._stack.close()
            raise

    def _append(self, name: str, rows) -> None:
        handle, dtype, row_shape = self._files[name]
        array = np.ascontiguousarray(to_numpy(rows), dtype=dtype)
        if array.shape[1:] != row_shape:
            raise ValueError(f"{name}: rows of shape {array.shape[1:]}, expected {row_shape}")
        handle.write(array.data)

    def write(self, act: dict, err: dict, labels, logits, idx) -> None:
        """Append one batch (arrays or tensors, one row per sample)."""
        n = int(np.shape(labels)[0])
        if self.pos + n > self.num_samples:
            raise ValueError(f"more rows than the {self.num_samples} announced")
        for name, rows in (("labels.npy", labels), ("logits.npy", logits), ("idx.npy", idx)):
            if int(np.shape(rows)[0]) != n:
                raise ValueError(f"{name}: {np.shape(rows)[0]} rows in a batch of {n}")
        for layer in self.layers:
            for kind, rows in (("act", act[layer]), ("err", err[layer])):
                if int(np.shape(rows)[0]) != n:
                    raise ValueError(f"{layer} {kind}: {np.shape(rows)[0]} rows in a batch of {n}")
                self._append(_file(layer, kind), rows)
        self._append("labels.npy", labels)
        self._append("logits.npy", logits)
        self._append("idx.npy", idx)
        self.pos += n

    def close(self, meta: dict) -> None:
        """Move every array into place (the files are closed first), then write ``meta.json``
        (the completion mark)."""
        if self.pos != self.num_samples:
            raise ValueError(f"wrote {self.pos} rows, expected {self.num_samples}")
        self._files.clear()
        self._stack.close()
        write_json(self.path / META, meta)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._files.clear()
            self._stack.__exit__(exc_type, exc, tb)
        return False


def write_factor_dir(
    path, factors: Factors, *, epoch, lr, loss: dict, target: str = "label"
) -> Path:
    """Write in-memory :class:`Factors` as a factor folder (float arrays keep their dtype)."""
    dims = {n: (factors.act[n].shape[1], factors.err[n].shape[1]) for n in factors.layers}
    dtype = np.result_type(*(factors.act[n].dtype for n in factors.layers))
    with FactorWriter(path, len(factors), dims, factors.logits.shape[1], dtype=dtype) as writer:
        writer.write(factors.act, factors.err, factors.labels, factors.logits, factors.idx)
        writer.close(
            _meta(
                epoch=epoch,
                lr=lr,
                layers=factors.layers,
                has_bias=factors.has_bias,
                loss=loss,
                target=target,
                num_samples=len(factors),
            )
        )
    return Path(path)


def extract_to_dir(
    model: nn.Module,
    loader: Iterable,
    loss_fn: PerSampleLoss,
    path,
    *,
    epoch: int | None,
    lr: float,
    stage: int = 2,
    layers: Sequence[str] = ("fc.4",),
    head: str = "fc",
    target: str = "label",
    device=None,
    autocast: bool = False,
    num_samples: int | None = None,
    dtype=np.float32,
    log: Log | None = None,
    label: str = "factors",
    progress_every: float = 5.0,
) -> Path:
    """:func:`~tracinflow.influence.factors.factor_batches` streamed straight into a factor folder
    (memory bounded by one batch), with a progress line at most every ``progress_every`` seconds.

    ``num_samples`` is needed only when it cannot be read off the loader (a DataLoader without
    ``drop_last`` over a sized sampler, or a list of batches). ``lr`` is the learning rate of the
    hooked layers' parameter group at this checkpoint; it goes to meta.json with ``epoch`` (and
    ``stage``: 1 for a stage-1 checkpoint).
    """
    _, modules, final = resolve_layers(model, layers, head)
    loss_fn = traced_loss(model, final, loss_fn)
    n = num_samples if num_samples is not None else loader_samples(loader)
    if n is None:
        raise ValueError("cannot tell how many samples the loader yields; pass num_samples")
    dims = {name: (m.in_features, m.out_features) for name, m in modules.items()}
    progress = Progress(n, label, "images", log, every=progress_every) if log else None
    with FactorWriter(path, n, dims, loss_fn.num_classes, dtype=dtype) as writer:
        for batch in factor_batches(model, loader, loss_fn, layers, head, target, device, autocast):
            rows = int(batch["labels"].shape[0])
            idx = batch["idx"]
            if idx is None:
                idx = np.arange(writer.pos, writer.pos + rows, dtype=np.int64)
            writer.write(batch["act"], batch["err"], batch["labels"], batch["logits"], idx)
            if progress is not None:
                progress.update(rows)
        writer.close(
            _meta(
                epoch=epoch,
                lr=lr,
                layers=list(modules),
                has_bias={name: m.bias is not None for name, m in modules.items()},
                loss=loss_fn.settings(),
                target=target,
                num_samples=n,
                stage=stage,
            )
        )
    return Path(path)


HEAD_LAYERS = ("fc.0", "fc.2", "fc.4")


def hooked_layers(setting) -> list[str]:
    """``influence.layers``: a list of module paths, or ``head`` for the head's three Linear layers."""
    return list(HEAD_LAYERS) if setting == "head" else list(setting)


def extract_checkpoint_factors(inputs, outputs, params, threads=1, log=print) -> Path:
    """Ghost factors of one checkpoint on one split (train: the version's training set, with the
    labels it was trained with; test: the target the config names), in the factor folder
    ``outputs["factors"]``: what the rules evaluation_factors and ensemble_factors run, given their
    named inputs (``checkpoint``, ``checkpoints``, ``manifest``, ``train_set``, ``cache``) and
    params (``split``, ``layers``, ``target``, ``device``, ``memory_format``, ``batch_size``)."""
    return extract_split_factors([inputs["checkpoint"]], [outputs["factors"]], inputs, params,
                                 threads, log)[0]  # fmt: skip


def extract_split_factors(
    checkpoint_files, folders, inputs, params, threads=1, log=print
) -> list[Path]:
    """Ghost factors of each checkpoint in ``checkpoint_files`` on one split, each in its folder of
    ``folders`` (the same order), the split read once: what the rule extract_factors runs, given
    its named inputs (``checkpoints``: checkpoints.json, ``manifest``, ``train_set``, ``cache``)
    and the params of :func:`extract_checkpoint_factors`."""
    checkpoint_files, folders = list(checkpoint_files), list(folders)
    if len(checkpoint_files) != len(folders):
        raise ValueError(f"{len(checkpoint_files)} checkpoints for {len(folders)} factor folders")
    split = params["split"]
    layers = hooked_layers(params["layers"])
    target = params["target"] if split == "test" else "label"
    listed = read_json(inputs["checkpoints"])
    for checkpoint_file in checkpoint_files:  # every file before any work: a bad one stops it all
        verify_checkpoint(checkpoint_file, listed)
    manifest = pd.read_parquet(inputs["manifest"])
    images, labels, idx = version_split(manifest, split, inputs["train_set"], inputs["cache"])
    done = []
    progress = Progress(len(folders), f"factors {split}", "checkpoints", log, every=0.0)
    for checkpoint_file, folder in zip(checkpoint_files, folders, strict=True):
        model, checkpoint, loss_fn, device = load_for_inference(  # verified above: no listed
            checkpoint_file, threads, params["device"], memory_format=params["memory_format"]
        )
        log(
            f"factors of {checkpoint_file} (stage {checkpoint.get('stage', 2)} epoch "
            f"{checkpoint['epoch']}, lr {checkpoint['lr_head']:g}) on {split}: {len(labels)} "
            f"images, layers {layers}, target {target}, device {device}, {model.memory_format}"
        )
        done.append(
            extract_to_dir(
                model,
                CacheBatches(images, labels, idx, model.arch, params["batch_size"], device),
                loss_fn,
                folder,
                epoch=int(checkpoint["epoch"]),
                stage=int(checkpoint.get("stage", 2)),
                lr=float(checkpoint["lr_head"]),  # the head's parameter group holds every layer
                layers=layers,
                target=target,
                device=device,
                num_samples=len(labels),
                log=log,
                label=f"factors {split}",
            )
        )
        progress.update(1)
    return done


def read_meta(path) -> dict:
    """The folder's meta.json; FileNotFoundError when the folder is incomplete."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: no {META}, the factor folder is missing or incomplete")
    return json.loads(meta_path.read_text())


class NpyRows:
    """Rows of a C-ordered ``.npy`` file, read on demand with ``os.pread``: slicing gives another
    NpyRows and reads nothing; ``np.asarray`` reads the rows into fresh memory.

    A memory map streamed through keeps every page it touched in the process's resident set (the
    whole file, by the end); reading into buffers keeps a scan over any number of rows at the size of
    one block. The influence kernel reads train blocks this way.
    """

    def __init__(self, path, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")
        if header.dtype.hasobject or not header.flags.c_contiguous or header.ndim not in (1, 2):
            raise ValueError(f"{self.path}: not a C-ordered 1-D or 2-D numeric array")
        self.dtype, self._offset = header.dtype, header.offset
        self._total, self._width = header.shape[0], (header.shape[1:] or (None,))[0]
        self.start, self.stop = start, header.shape[0] if stop is None else stop

    @property
    def shape(self) -> tuple[int, ...]:
        rows = self.stop - self.start
        return (rows,) if self._width is None else (rows, self._width)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> NpyRows:
        if not isinstance(rows, slice):
            raise TypeError("NpyRows takes row slices only")
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous row ranges (step 1) are supported")
        view = object.__new__(NpyRows)
        view.__dict__.update(self.__dict__)
        view.start, view.stop = self.start + start, self.start + max(stop, start)
        return view

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        row_bytes = out.itemsize * (self._width or 1)
        with open(self.path, "rb", buffering=0) as handle:
            view, pos = memoryview(out.reshape(-1).view(np.uint8)), 0
            while pos < out.nbytes:  # pread may return fewer bytes than asked
                got = os.preadv(
                    handle.fileno(), [view[pos:]], self._offset + self.start * row_bytes + pos
                )
                if got <= 0:
                    raise OSError(f"{self.path}: file ends before row {self.stop}")
                pos += got
        return out if dtype is None else out.astype(dtype, copy=False)


def load_factor_dir(
    path,
    rows: slice | tuple[int, int] | None = None,
    mmap: bool = True,
    layers=None,
    stream: bool = False,
) -> Factors:
    """Load a factor folder, or only ``rows`` (a slice or ``(start, stop)``) of it.

    With ``mmap=True`` arrays are read-only memory maps (row slices read nothing until used); with
    ``mmap=False`` only the requested rows are read into memory; with ``stream=True`` the act and err
    arrays are :class:`NpyRows`, read block by block when used (a scan stays at one block's memory).
    ``layers`` selects a subset of the stored layers. The returned :class:`Factors` carries meta.json
    and the row offset of the slice.
    """
    path = Path(path)
    meta = read_meta(path)
    stored = list(meta["layers"])
    layers = stored if layers is None else list(layers)
    missing = [layer for layer in layers if layer not in stored]
    if missing:
        raise ValueError(f"{path}: layers {missing} not stored; stored layers: {stored}")
    n = int(meta["num_samples"])
    if rows is None:
        sl = slice(0, n)
    elif isinstance(rows, slice):
        sl = rows
    else:
        sl = slice(int(rows[0]), int(rows[1]))
    start, stop, step = sl.indices(n)
    if step != 1:
        raise ValueError("only contiguous row ranges (step 1) are supported")
    sl = slice(start, stop)

    def load(name, lazy=False):
        array = np.load(path / name, mmap_mode="r")
        if array.shape[0] != n:
            raise ValueError(f"{path / name}: {array.shape[0]} rows, meta.json says {n}")
        if lazy:
            return NpyRows(path / name)[sl]
        return array[sl] if mmap else np.array(array[sl])

    return Factors(
        act={layer: load(_file(layer, "act"), stream) for layer in layers},
        err={layer: load(_file(layer, "err"), stream) for layer in layers},
        labels=load("labels.npy"),
        logits=load("logits.npy"),
        idx=load("idx.npy"),
        has_bias={layer: bool(meta["has_bias"][layer]) for layer in layers},
        meta=meta,
        row_offset=start,
    )


def folder_rows(paths: Sequence, what: str) -> int:
    """The number of rows the factor folders of one split hold (they must agree)."""
    sizes = {int(read_meta(path)["num_samples"]) for path in paths}
    if len(sizes) != 1:
        raise ValueError(
            f"{what} factor folders disagree on the number of samples: {sorted(sizes)}"
        )
    return sizes.pop()


def load_checkpoints(paths: Sequence, rows=None, layers=None, stream=False) -> list[Factors]:
    """The factor folders of every checkpoint of one split (or ``rows`` of them), in order; with
    ``stream``, act and err as :class:`NpyRows`."""
    return [load_factor_dir(path, rows=rows, layers=layers, stream=stream) for path in paths]


# --- the curvature file ---------------------------------------------------------------------------


def save_curvature(path, inverses: Sequence[dict], *, method: str, damping: float, layers,
                   epochs: Sequence[int | str]) -> None:  # fmt: skip
    """One ``.npz``: each checkpoint's damped inverses (:func:`~tracinflow.influence.curvature.
    curvature_inverses`, key ``c<checkpoint>:<name>``) and what made them (``meta``, JSON: method,
    damping, layers, the checkpoints: a stage-2 epoch, or ``stage1_epoch_EEE``); written
    atomically."""
    arrays = {f"c{c}:{name}": matrix for c, found in enumerate(inverses)
              for name, matrix in found.items()}  # fmt: skip
    meta = {"method": method, "damping": float(damping), "layers": list(layers),
            "epochs": [e if isinstance(e, str) else int(e) for e in epochs]}  # fmt: skip
    arrays["meta"] = np.asarray(json.dumps(meta))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_curvature(path) -> tuple[list[dict], dict]:
    """``(inverses per checkpoint, meta)`` of a file :func:`save_curvature` wrote."""
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        inverses = [{} for _ in meta["epochs"]]
        for key in stored.files:
            if key != "meta":
                checkpoint, name = key.split(":", 1)
                inverses[int(checkpoint[1:])][name] = stored[key]
    return inverses, meta
