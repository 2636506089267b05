"""Per-sample gradient factors of the classifier head's Linear layers.

For a Linear layer ``z = W a + b`` the per-sample gradient of the loss is ``dW = e a^T``, ``db = e`` with
``e = dl/dz``. So a layer's per-sample gradient is stored as two small factors: the activation ``a``
(N, d_in) and the error signal ``e`` (N, d_out). TracIn scores are then inner products of factors (see
:mod:`tracinflow.influence.kernel`), never of full gradients.

How the factors are obtained (``docs/math.md``):

* the whole model runs once under :func:`torch.inference_mode`; forward pre-hooks capture the input of
  the head and of every hooked layer, so the backbone never builds an autograd graph;
* for the final Linear layer (the one producing the logits) ``e = w_y * (softmax(z) - target)`` comes in
  closed form from the loss's ``error_signal`` (:class:`~tracinflow.train.loss.PerSampleLoss`): no
  backward pass;
* only when a hidden head layer is hooked (``fc.0``, ``fc.2``) the head alone is re-run with autograd on a
  normal copy of the captured head input, and ``e = dl/dz`` is taken for every row at once from the sum of
  per-sample losses (each row's gradient is its own, since rows never mix inside the head).

:func:`factor_batches` yields them batch by batch (the extract_factors stage streams them into a
factor folder, :mod:`tracinflow.io.factor_store`); :func:`extract_factors` collects them in
memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tracinflow._util.device import forward_rows, select_device
from tracinflow._util.progress import Log, Progress
from tracinflow.train.loss import PerSampleLoss, per_sample_loss

TARGETS = ("label", "prediction")


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
    def stage(self) -> int:
        """The training stage of the checkpoint (1: head-only; 2, the default, when unrecorded)."""
        return int(self.meta.get("stage", 2))

    @property
    def lr(self) -> float | None:
        lr = self.meta.get("lr")
        return None if lr is None else float(lr)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, positions) -> Factors:
        """The rows at ``positions`` (a copy), in that order: for scores of a sample of rows, which
        need not be bit-identical to the same rows scored inside the whole split."""
        positions = np.asarray(positions, dtype=np.int64)
        return Factors(
            act={k: np.ascontiguousarray(v[positions]) for k, v in self.act.items()},
            err={k: np.ascontiguousarray(v[positions]) for k, v in self.err.items()},
            labels=np.asarray(self.labels)[positions],
            logits=np.asarray(self.logits)[positions],
            idx=np.asarray(self.idx)[positions],
            has_bias=dict(self.has_bias),
            meta=dict(self.meta),
        )

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
    """The head's Linear layers in order: the head itself when it is one Linear layer (a
    torchvision ResNet's ``fc``), else the Linear modules inside it."""
    if isinstance(model.get_submodule(head), nn.Linear):
        return [head]
    prefix = f"{head}."
    return [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, nn.Linear)
    ]


def resolve_layers(model: nn.Module, layers: Iterable[str], head: str = "fc"):
    """Check the layer names; return ``(head_module, {name: Linear}, final_name)``.

    ``final_name`` is the head's last Linear layer (the one producing the logits). Raises ValueError
    naming the offending layer and the available ones when a name is not a Linear layer of the head
    (a ``layers`` list is never ignored: every name must resolve).
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
        if layer != head and not layer.startswith(f"{head}."):
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


def traced_loss(model: nn.Module, final: str, loss) -> PerSampleLoss:
    """``loss`` as the :class:`~tracinflow.train.loss.PerSampleLoss` of the classes of the model's
    final layer ``final`` (from :func:`resolve_layers`): a plain ``nn.CrossEntropyLoss`` is
    wrapped; anything that is not a per-sample loss is refused."""
    return per_sample_loss(loss, int(model.get_submodule(final).out_features))


# --------------------------------------------------------------------------------------------------
# extraction


def _split_batch(batch):
    if isinstance(batch, dict):
        return batch["images"], batch["labels"], batch.get("idx")
    if len(batch) == 2:
        return batch[0], batch[1], None
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    raise ValueError("a batch must be (images, labels) or (images, labels, idx)")


class _Captures:
    """Forward hooks that record the head's input, every hooked layer's input and the final
    layer's output of one forward pass (removed by :meth:`remove`)."""

    def __init__(self, model: nn.Module, head_module, modules: dict, final: str):
        self.values: dict[str, list] = {}
        self.handles = [head_module.register_forward_pre_hook(self._record("head_in"))]
        self.handles += [
            module.register_forward_pre_hook(self._record(f"in:{name}"))
            for name, module in modules.items()
        ]
        final_module = dict(model.named_modules())[final]
        self.handles.append(final_module.register_forward_hook(self._record_output("final_out")))

    def _record(self, key):
        def hook(_module, args):
            self.values.setdefault(key, []).append(args[0])

        return hook

    def _record_output(self, key):
        def hook(_module, _args, output):
            self.values.setdefault(key, []).append(output)

        return hook

    def one(self, key):
        values = self.values.get(key, [])
        if len(values) != 1:
            raise ValueError(f"{key!r} ran {len(values)} times in one forward pass, expected once")
        return values[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.get_default_dtype()


def _half_to_float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


class _Extractor:
    """The factors of one batch: a forward pass under inference mode with the hooks recording,
    the closed-form error signal of the final layer, autograd through the head for the others."""

    def __init__(self, model, loss_fn, layers, head, target, device, autocast):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.model, self.target = model, target
        self.head_module, self.modules, self.final = resolve_layers(model, layers, head)
        self.loss_fn = loss_fn = traced_loss(model, self.final, loss_fn)
        self.hidden = [name for name in self.modules if name != self.final]
        self.device = select_device(device)
        self.dtype = _model_dtype(model)
        model.to(self.device)
        loss_fn.to(self.device)
        self.autocast = autocast
        self.captures = _Captures(model, self.head_module, self.modules, self.final)
        self.was_training = model.training
        model.eval()
        self.checked = False

    def autocast_ctx(self):
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        """``(act, err, labels, logits)`` of one batch, act and err by layer."""
        images = images.to(self.device, non_blocking=True)
        if images.is_floating_point():
            images = images.to(self.dtype)
        labels = labels.to(self.device, non_blocking=True).long()
        self.captures.values.clear()
        with torch.inference_mode(), self.autocast_ctx():
            logits = self.model(images)
        if not self.checked:
            _check_logits_come_from(self.captures.one("final_out"), logits, self.final)
            self.checked = True
        logits = _half_to_float(logits)
        y = logits.argmax(dim=1) if self.target == "prediction" else labels
        # Read the captures now: the head re-run below fires the same hooks again.
        act = {n: self.captures.one(f"in:{n}") for n in self.modules}
        err = {}
        if self.final in self.modules:
            with torch.inference_mode():
                err[self.final] = self.loss_fn.error_signal(logits, y)
        if self.hidden:
            head_in = self.captures.one("head_in")
            err.update(self._hidden_errors(head_in, y))
        return act, {n: err[n] for n in self.modules}, labels, logits

    def _hidden_errors(self, head_in, y) -> dict:
        """``dl/dz`` of the hidden head layers for every row at once: the head alone re-run with
        autograd on a normal (non-inference) copy of its input, one backward pass of the summed
        per-sample losses (rows never mix inside the head, so each row's gradient is its own)."""
        head_in = head_in.clone().requires_grad_(True)
        outputs: dict[str, torch.Tensor] = {}
        hooks = [
            self.modules[n].register_forward_hook(
                lambda _m, _a, out, n=n, store=outputs: store.__setitem__(n, out)
            )
            for n in self.hidden
        ]
        try:
            with torch.enable_grad(), self.autocast_ctx():
                logits = _half_to_float(self.head_module(head_in))
                losses = self.loss_fn(logits, y, reduction="none")
                grads = torch.autograd.grad(losses.sum(), [outputs[n] for n in self.hidden])
        finally:
            for handle in hooks:
                handle.remove()
        return {n: g.detach() for n, g in zip(self.hidden, grads, strict=True)}

    def close(self) -> None:
        self.captures.remove()
        self.model.train(self.was_training)


def factor_batches(
    model: nn.Module,
    loader: Iterable,
    loss_fn: PerSampleLoss,
    layers: Sequence[str] = ("fc.4",),
    head: str = "fc",
    target: str = "label",
    device=None,
    autocast: bool = False,
) -> Iterator[dict]:
    """The factors of one batch at a time: a dict of tensors ``act`` and ``err`` (per layer),
    ``labels``, ``logits`` and ``idx`` (None when the loader yields none); see
    :func:`extract_factors` for the arguments. The model runs in eval mode (restored afterwards).
    On the CPU a loader's batch comes as pieces of
    :func:`~tracinflow._util.device.forward_rows` rows, the forward's fastest size there.
    """
    extractor = _Extractor(model, loss_fn, layers, head, target, device, autocast)
    try:
        for batch in loader:
            images, labels, idx = _split_batch(batch)
            rows = forward_rows(images, extractor.device)
            for start in range(0, len(images), rows):
                part = slice(start, start + rows)
                act, err, part_labels, logits = extractor(images[part], labels[part])
                part_idx = None if idx is None else idx[part]
                yield {
                    "act": act, "err": err, "labels": part_labels, "logits": logits, "idx": part_idx
                }  # fmt: skip
    finally:
        extractor.close()


def _check_logits_come_from(z_final: torch.Tensor, logits: torch.Tensor, final: str) -> None:
    if z_final.shape != logits.shape or not torch.equal(z_final, logits):
        raise ValueError(
            f"the model's output is not the output of the head's last Linear {final!r}; "
            "the closed-form error signal needs the logits to come straight from it"
        )


def to_numpy(tensor, dtype=None) -> np.ndarray:
    """A tensor (or array) as a numpy array on the CPU; half precision widened to float32."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        array = tensor.cpu().numpy()
    else:
        array = np.asarray(tensor)
    return array if dtype is None else array.astype(dtype, copy=False)


def _len_or_none(obj) -> int | None:
    try:
        return len(obj)
    except TypeError:
        return None


def loader_samples(loader) -> int | None:
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
    loss_fn: PerSampleLoss,
    layers: Sequence[str] = ("fc.4",),
    head: str = "fc",
    target: str = "label",
    device=None,
    *,
    autocast: bool = False,
    dtype=np.float32,
    log: Log | None = None,
    progress_every: float = 5.0,
) -> Factors:
    """Factors of ``model`` on every sample ``loader`` yields, in memory.

    ``loader`` yields ``(images, labels)`` or ``(images, labels, idx)`` batches of normalised float
    images (idx defaults to the running row number). ``loss_fn`` is a
    :class:`~tracinflow.train.loss.PerSampleLoss` or a plain ``nn.CrossEntropyLoss``. ``layers`` are module paths of Linear layers
    inside ``head`` (or ``head`` itself when it is one Linear layer). ``target="prediction"`` takes
    the error signal at the argmax of the logits instead of the label. ``device`` defaults to CUDA
    when available (the model is moved there). ``autocast`` runs the forward in bfloat16
    (approximate); factors are always returned as ``dtype`` (float32 by default; float64 keeps a
    float64 model exact). With ``log``, a progress line every ``progress_every`` seconds when the
    number of samples is known.
    """
    _, modules, final = resolve_layers(model, layers, head)
    loss_fn = traced_loss(model, final, loss_fn)
    total = loader_samples(loader)
    progress = None
    if log is not None and total is not None:
        progress = Progress(total, "factors", "images", log, every=progress_every)
    batches = factor_batches(model, loader, loss_fn, layers, head, target, device, autocast)
    arrays = _concatenated(batches, list(modules), dtype, progress)
    return Factors(
        **arrays,
        has_bias={n: m.bias is not None for n, m in modules.items()},
        meta={"layers": list(modules), "target": target, "loss": loss_fn.settings()},
    )


def _concatenated(batches: Iterable[dict], layers: list[str], dtype, progress) -> dict:
    """The batches' factors as whole arrays: ``act``, ``err`` (by layer), ``labels``, ``logits``,
    ``idx`` (the running row number where a batch has none)."""
    parts: dict[str, list] = {"labels": [], "logits": [], "idx": []}
    acts: dict[str, list] = {n: [] for n in layers}
    errs: dict[str, list] = {n: [] for n in layers}
    seen = 0
    for batch in batches:
        n = int(batch["labels"].shape[0])
        for name in layers:
            acts[name].append(to_numpy(batch["act"][name], dtype))
            errs[name].append(to_numpy(batch["err"][name], dtype))
        parts["labels"].append(to_numpy(batch["labels"], np.int64))
        parts["logits"].append(to_numpy(batch["logits"], dtype))
        idx = batch["idx"]
        parts["idx"].append(
            np.arange(seen, seen + n, dtype=np.int64) if idx is None else to_numpy(idx, np.int64)
        )
        seen += n
        if progress is not None:
            progress.update(n)
    if not seen:
        raise ValueError("the loader yielded no samples")
    return {
        "act": {n: np.concatenate(v) for n, v in acts.items()},
        "err": {n: np.concatenate(v) for n, v in errs.items()},
        **{key: np.concatenate(values) for key, values in parts.items()},
    }
