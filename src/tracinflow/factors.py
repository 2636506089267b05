"""Per-sample gradient factors of the classifier head's Linear layers.

For a Linear layer ``z = W a + b`` the per-sample gradient of the loss is ``dW = e a^T``, ``db = e`` with
``e = dl/dz``. So a layer's per-sample gradient is stored as two small factors: the activation ``a``
(N, d_in) and the error signal ``e`` (N, d_out). TracIn scores are then inner products of factors (see
:mod:`tracinflow.influence`), never of full gradients.

How the factors are obtained (DESIGN section 1):

* the whole model runs once under :func:`torch.inference_mode`; forward pre-hooks capture the input of
  the head and of every hooked layer, so the backbone never builds an autograd graph;
* for the final Linear layer (the one producing the logits) ``e = w_y * (softmax(z) - target)`` comes in
  closed form from :meth:`WeightedSmoothedCrossEntropy.error_signal`: no backward pass;
* only when a hidden head layer is hooked (``fc.0``, ``fc.2``) the head alone is re-run with autograd on a
  normal copy of the captured head input, and ``e = dl/dz`` is taken for every row at once from the sum of
  per-sample losses (each row's gradient is its own, since rows never mix inside the head).

On disk a (checkpoint, split) folder holds one memory-mappable ``.npy`` per array (see
:func:`write_factor_dir`), written atomically; ``meta.json`` is written last and marks it complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tracinflow.io import atomic_path, write_json

__all__ = [
    "FactorWriter",
    "Factors",
    "Progress",
    "extract_factors",
    "extract_to_dir",
    "is_complete",
    "load_factor_dir",
    "log_progress",
    "read_meta",
    "resolve_layers",
    "write_factor_dir",
]

META = "meta.json"
TARGETS = ("label", "prediction")


# --------------------------------------------------------------------------------------------------
# progress reporting (shared with tracinflow.influence)


@dataclass(frozen=True)
class Progress:
    """One progress report: ``done`` of ``total`` steps (batches, sub-tiles), ``items`` processed so far."""

    what: str
    done: int
    total: int | None
    items: int
    items_total: int | None
    elapsed_s: float
    unit: str

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.items / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate, or None when the total is unknown."""
        if self.items_total is None or not self.items or self.elapsed_s <= 0:
            return None
        return max(self.items_total - self.items, 0) / self.rate

    def __str__(self) -> str:
        total = "?" if self.total is None else str(self.total)
        eta = "?" if self.eta_s is None else _format_seconds(self.eta_s)
        return (
            f"{self.what} {self.done}/{total}, {self.rate:,.1f} {self.unit}/s, "
            f"elapsed {_format_seconds(self.elapsed_s)}, ETA {eta}"
        )


def _format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def log_progress(
    stream=None, min_interval_s: float = 5.0, prefix: str = ""
) -> Callable[[Progress], None]:
    """A progress callback that prints one line per report, at most every ``min_interval_s`` seconds
    (the last report, ``done == total``, always prints). ``stream`` defaults to stderr at call time."""
    last = [-math.inf]

    def report(info: Progress) -> None:
        now = time.monotonic()
        final = info.total is not None and info.done >= info.total
        if final or now - last[0] >= min_interval_s:
            last[0] = now
            print(f"{prefix}{info}", file=stream or sys.stderr, flush=True)

    return report


class _Clock:
    def __init__(self, what, total, items_total, unit, progress, every):
        self.what, self.total, self.items_total, self.unit = what, total, items_total, unit
        self.progress, self.every = progress, max(int(every), 1)
        self.start = time.perf_counter()

    def tick(self, done: int, items: int, force: bool = False) -> None:
        if self.progress is None or not (force or done % self.every == 0):
            return
        elapsed = time.perf_counter() - self.start
        self.progress(
            Progress(self.what, done, self.total, items, self.items_total, elapsed, self.unit)
        )


# --------------------------------------------------------------------------------------------------
# the factors of one checkpoint on one split


@dataclass
class Factors:
    """Factors of one checkpoint on one split (or a contiguous row range of it).

    ``act[layer]`` (N, d_in) and ``err[layer]`` (N, d_out) per hooked layer; ``idx`` the dataset idx of
    each row; ``labels`` the true labels; ``logits`` the model's logits; ``has_bias[layer]``; ``meta`` the
    folder's meta.json (epoch, lr, ...) when loaded from disk. ``row_offset`` is the position of row 0 in
    the full split: :mod:`tracinflow.influence` anchors its block grid on it, so a row range scores
    bit-for-bit like the same rows inside the whole split.
    """

    act: dict[str, np.ndarray]
    err: dict[str, np.ndarray]
    labels: np.ndarray
    logits: np.ndarray
    idx: np.ndarray
    has_bias: dict[str, bool]
    meta: dict = field(default_factory=dict)
    row_offset: int = 0

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.act)

    @property
    def lr(self) -> float | None:
        lr = self.meta.get("lr")
        return None if lr is None else float(lr)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rows(self, rows: slice) -> Factors:
        """A row range (views, no copy) with ``row_offset`` moved along."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("only contiguous row ranges (step 1) are supported")
        sl = slice(start, stop)
        return Factors(
            act={k: v[sl] for k, v in self.act.items()},
            err={k: v[sl] for k, v in self.err.items()},
            labels=self.labels[sl],
            logits=self.logits[sl],
            idx=self.idx[sl],
            has_bias=dict(self.has_bias),
            meta=dict(self.meta),
            row_offset=self.row_offset + start,
        )


# --------------------------------------------------------------------------------------------------
# layer resolution


def _linear_layers(model: nn.Module, head: str) -> list[str]:
    prefix = f"{head}."
    return [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, nn.Linear)
    ]


def resolve_layers(model: nn.Module, layers: Iterable[str], head: str = "fc"):
    """Check the layer names; return ``(head_module, {name: Linear}, final_name)``.

    ``final_name`` is the head's last Linear layer (the one producing the logits). Raises ValueError
    naming the offending layer and the available ones when a name is not a Linear layer of the head.
    """
    names = dict(model.named_modules())
    if head not in names or head == "":
        raise ValueError(f"head {head!r} is not a submodule of the model")
    available = _linear_layers(model, head)
    if not available:
        raise ValueError(f"head {head!r} contains no nn.Linear layer")
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError(f"no layers given; available Linear layers in {head!r}: {available}")
    modules = {}
    for layer in layers:
        if layer not in names:
            raise ValueError(
                f"layer {layer!r} not found; available Linear layers in {head!r}: {available}"
            )
        if not layer.startswith(f"{head}."):
            raise ValueError(
                f"layer {layer!r} is not inside the head {head!r}; available: {available}"
            )
        if not isinstance(names[layer], nn.Linear):
            raise ValueError(
                f"layer {layer!r} is a {type(names[layer]).__name__}, not nn.Linear; "
                f"available Linear layers in {head!r}: {available}"
            )
        modules[layer] = names[layer]
    return names[head], modules, available[-1]


# --------------------------------------------------------------------------------------------------
# extraction


def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["images"], batch["labels"], batch.get("idx")
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise ValueError("a batch must be (images, labels) or (images, labels, idx)")


def _factor_batches(
    model: nn.Module,
    loader: Iterable,
    loss_fn,
    layers: Sequence[str],
    head: str,
    target: str,
    device,
    autocast: bool,
) -> Iterator[dict]:
    """Yield one dict of tensors per batch: act, err (per layer), labels, logits, idx (or None)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    head_module, modules, final = resolve_layers(model, layers, head)
    hidden = [name for name in modules if name != final]
    device = _default_device(device)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    model.to(device)
    loss_fn.to(device)
    autocast_ctx = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if autocast
        else contextlib.nullcontext
    )

    captured: dict[str, list] = {}

    def capture(key):
        def hook(_module, args):
            captured.setdefault(key, []).append(args[0])

        return hook

    def capture_output(key):
        def hook(_module, _args, output):
            captured.setdefault(key, []).append(output)

        return hook

    def one(key):
        values = captured.get(key, [])
        if len(values) != 1:
            raise ValueError(f"{key!r} ran {len(values)} times in one forward pass, expected once")
        return values[0]

    handles = [head_module.register_forward_pre_hook(capture("head_in"))]
    handles += [
        module.register_forward_pre_hook(capture(f"in:{n}")) for n, module in modules.items()
    ]
    final_module = dict(model.named_modules())[final]
    handles.append(final_module.register_forward_hook(capture_output("final_out")))
    was_training = model.training
    model.eval()
    checked = False
    try:
        for batch in loader:
            images, labels, idx = _split_batch(batch)
            images = images.to(device, non_blocking=True)
            if images.is_floating_point():
                images = images.to(dtype)
            labels = labels.to(device, non_blocking=True).long()
            captured.clear()
            with torch.inference_mode(), autocast_ctx():
                logits = model(images)
            z_final = one("final_out")
            if not checked:
                if z_final.shape != logits.shape or not torch.equal(z_final, logits):
                    raise ValueError(
                        f"the model's output is not the output of the head's last Linear {final!r}; "
                        "the closed-form error signal needs the logits to come straight from it"
                    )
                checked = True
            logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
            y = logits.argmax(dim=1) if target == "prediction" else labels
            # Read the captures now: the head re-run below fires the same hooks again.
            act = {n: one(f"in:{n}") for n in modules}
            err = {}
            if final in modules:
                with torch.inference_mode():
                    err[final] = loss_fn.error_signal(logits, y)
            if hidden:
                # A normal (non-inference) copy of the head input; autograd through the head only.
                head_in = one("head_in").clone().requires_grad_(True)
                outputs: dict[str, torch.Tensor] = {}
                hooks = [
                    modules[n].register_forward_hook(
                        lambda _m, _a, out, n=n, store=outputs: store.__setitem__(n, out)
                    )
                    for n in hidden
                ]
                try:
                    with torch.enable_grad(), autocast_ctx():
                        rerun = head_module(head_in)
                        losses = loss_fn(rerun.float() if autocast else rerun, y, reduction="none")
                        grads = torch.autograd.grad(losses.sum(), [outputs[n] for n in hidden])
                finally:
                    for handle in hooks:
                        handle.remove()
                err.update({n: g.detach() for n, g in zip(hidden, grads, strict=True)})
            yield {
                "act": act,
                "err": {n: err[n] for n in modules},
                "labels": labels,
                "logits": logits,
                "idx": idx,
            }
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _to_numpy(tensor: torch.Tensor, dtype) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.cpu().numpy().astype(dtype, copy=False)


def _len_or_none(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def _num_samples(loader) -> int | None:
    """Samples a loader yields, when knowable without iterating it."""
    if isinstance(loader, torch.utils.data.DataLoader):
        if loader.batch_size is not None and loader.drop_last:
            return len(loader) * loader.batch_size
        if loader.batch_size is not None:
            return _len_or_none(loader.sampler)
        return None
    if isinstance(loader, (list, tuple)):
        return sum(int(_split_batch(b)[0].shape[0]) for b in loader)
    return None


def extract_factors(
    model: nn.Module,
    loader: Iterable,
    loss_fn,
    layers: Sequence[str] = ("fc.4",),
    head: str = "fc",
    target: str = "label",
    device=None,
    progress: Callable[[Progress], None] | None = None,
    *,
    autocast: bool = False,
    dtype=np.float32,
    progress_every: int = 10,
) -> Factors:
    """Factors of ``model`` on every sample ``loader`` yields, in memory.

    ``loader`` yields ``(images, labels)`` or ``(images, labels, idx)`` batches of normalised float
    images (idx defaults to the running row number). ``loss_fn`` is a
    :class:`~tracinflow.loss.WeightedSmoothedCrossEntropy`. ``layers`` are module paths of Linear layers
    inside ``head``. ``target="prediction"`` takes the error signal at the argmax of the logits instead
    of the label. ``device`` defaults to CUDA when available (the model is moved there). ``autocast``
    runs the forward in bfloat16 (approximate); factors are always returned as ``dtype`` (float32 by
    default; float64 keeps a float64 model exact). ``progress`` gets a :class:`Progress` every
    ``progress_every`` batches and at the end.
    """
    _, modules, _ = resolve_layers(model, layers, head)
    parts: dict[str, list] = {"labels": [], "logits": [], "idx": []}
    acts: dict[str, list] = {n: [] for n in modules}
    errs: dict[str, list] = {n: [] for n in modules}
    total_batches = _len_or_none(loader)
    clock = _Clock("batch", total_batches, _num_samples(loader), "images", progress, progress_every)
    seen = 0
    done = 0
    for batch in _factor_batches(model, loader, loss_fn, layers, head, target, device, autocast):
        n = int(batch["labels"].shape[0])
        for name in modules:
            acts[name].append(_to_numpy(batch["act"][name], dtype))
            errs[name].append(_to_numpy(batch["err"][name], dtype))
        parts["labels"].append(_to_numpy(batch["labels"], np.int64))
        parts["logits"].append(_to_numpy(batch["logits"], dtype))
        idx = batch["idx"]
        parts["idx"].append(
            np.arange(seen, seen + n, dtype=np.int64)
            if idx is None
            else _to_numpy(torch.as_tensor(idx), np.int64)
        )
        seen += n
        done += 1
        clock.tick(done, seen)
    clock.tick(done, seen, force=done % clock.every != 0)
    if not seen:
        raise ValueError("the loader yielded no samples")
    return Factors(
        act={n: np.concatenate(v) for n, v in acts.items()},
        err={n: np.concatenate(v) for n, v in errs.items()},
        labels=np.concatenate(parts["labels"]),
        logits=np.concatenate(parts["logits"]),
        idx=np.concatenate(parts["idx"]),
        has_bias={n: m.bias is not None for n, m in modules.items()},
        meta={"layers": list(modules), "target": target, "loss": loss_fn.settings()},
    )


# --------------------------------------------------------------------------------------------------
# on-disk folders


def _file(layer: str, kind: str) -> str:
    return f"{layer}.{kind}.npy"


def is_complete(path) -> bool:
    """A factor folder is complete when its meta.json exists (it is written last)."""
    return (Path(path) / META).is_file()


def _meta(*, epoch, lr, layers, has_bias, loss, target, num_samples) -> dict:
    if lr is None:
        raise ValueError("lr is required in a factor folder's meta.json")
    return {
        "epoch": None if epoch is None else int(epoch),
        "lr": float(lr),
        "layers": list(layers),
        "has_bias": {name: bool(has_bias[name]) for name in layers},
        "loss": loss,
        "target": target,
        "num_samples": int(num_samples),
    }


class FactorWriter:
    """Streams factor batches into preallocated memory-mapped ``.npy`` files of one folder.

    Every array goes to a temporary file beside its final name (``np.lib.format.open_memmap``), so memory
    stays bounded by one batch. :meth:`close` flushes, renames every file into place and writes
    ``meta.json`` last; leaving the ``with`` block on an exception deletes the temporary files. An
    existing ``meta.json`` is removed first, so a half-rewritten folder never looks complete.
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
        self._arrays: dict[str, np.ndarray] = {}
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
                self._arrays[name] = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=dt, shape=shape
                )
        except BaseException:
            self._stack.close()
            raise

    def write(self, act: dict, err: dict, labels, logits, idx) -> None:
        """Append one batch (arrays or tensors, one row per sample)."""
        n = int(np.shape(labels)[0])
        if self.pos + n > self.num_samples:
            raise ValueError(f"more rows than the {self.num_samples} announced")
        rows = slice(self.pos, self.pos + n)
        for layer in self.layers:
            self._arrays[_file(layer, "act")][rows] = _as_numpy(act[layer])
            self._arrays[_file(layer, "err")][rows] = _as_numpy(err[layer])
        self._arrays["labels.npy"][rows] = _as_numpy(labels)
        self._arrays["logits.npy"][rows] = _as_numpy(logits)
        self._arrays["idx.npy"][rows] = _as_numpy(idx)
        self.pos += n

    def close(self, meta: dict) -> None:
        """Flush, move every array into place, then write ``meta.json`` (the completion mark)."""
        if self.pos != self.num_samples:
            raise ValueError(f"wrote {self.pos} rows, expected {self.num_samples}")
        for array in self._arrays.values():
            array.flush()
        self._arrays.clear()
        self._stack.close()
        write_json(self.path / META, meta)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._arrays.clear()
            self._stack.__exit__(exc_type, exc, tb)
        return False


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


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
    loss_fn,
    path,
    *,
    epoch: int | None,
    lr: float,
    layers: Sequence[str] = ("fc.4",),
    head: str = "fc",
    target: str = "label",
    device=None,
    autocast: bool = False,
    num_samples: int | None = None,
    dtype=np.float32,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 10,
) -> Path:
    """:func:`extract_factors` streamed straight into a factor folder (memory bounded by one batch).

    ``num_samples`` is needed only when it cannot be read off the loader (a DataLoader without
    ``drop_last`` over a sized sampler, or a list of batches). ``lr`` is the learning rate of the hooked
    layers' parameter group at this checkpoint; it goes to meta.json with ``epoch``.
    """
    _, modules, _ = resolve_layers(model, layers, head)
    n = num_samples if num_samples is not None else _num_samples(loader)
    if n is None:
        raise ValueError("cannot tell how many samples the loader yields; pass num_samples")
    dims = {name: (m.in_features, m.out_features) for name, m in modules.items()}
    clock = _Clock("batch", _len_or_none(loader), n, "images", progress, progress_every)
    done = 0
    with FactorWriter(path, n, dims, loss_fn.num_classes, dtype=dtype) as writer:
        for batch in _factor_batches(
            model, loader, loss_fn, layers, head, target, device, autocast
        ):
            rows = int(batch["labels"].shape[0])
            idx = batch["idx"]
            if idx is None:
                idx = np.arange(writer.pos, writer.pos + rows, dtype=np.int64)
            writer.write(batch["act"], batch["err"], batch["labels"], batch["logits"], idx)
            done += 1
            clock.tick(done, writer.pos)
        clock.tick(done, writer.pos, force=done % clock.every != 0)
        writer.close(
            _meta(
                epoch=epoch,
                lr=lr,
                layers=list(modules),
                has_bias={name: m.bias is not None for name, m in modules.items()},
                loss=loss_fn.settings(),
                target=target,
                num_samples=n,
            )
        )
    return Path(path)


def read_meta(path) -> dict:
    """The folder's meta.json; FileNotFoundError when the folder is incomplete."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: no {META}, the factor folder is missing or incomplete")
    return json.loads(meta_path.read_text())


def load_factor_dir(
    path, rows: slice | tuple[int, int] | None = None, mmap: bool = True, layers=None
) -> Factors:
    """Load a factor folder, or only ``rows`` (a slice or ``(start, stop)``) of it.

    With ``mmap=True`` arrays are read-only memory maps (row slices read nothing until used); with
    ``mmap=False`` only the requested rows are read into memory. ``layers`` selects a subset of the
    stored layers. The returned :class:`Factors` carries meta.json and the row offset of the slice.
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

    def load(name):
        array = np.load(path / name, mmap_mode="r")
        if array.shape[0] != n:
            raise ValueError(f"{path / name}: {array.shape[0]} rows, meta.json says {n}")
        return array[sl] if mmap else np.array(array[sl])

    return Factors(
        act={layer: load(_file(layer, "act")) for layer in layers},
        err={layer: load(_file(layer, "err")) for layer in layers},
        labels=load("labels.npy"),
        logits=load("logits.npy"),
        idx=load("idx.npy"),
        has_bias={layer: bool(meta["has_bias"][layer]) for layer in layers},
        meta=meta,
        row_offset=start,
    )
