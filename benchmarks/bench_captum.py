"""This project's TracIn against Captum's (0.9.0) on the demo's baseline checkpoints and images.

    python benchmarks/bench_captum.py            # after `make demo`; about 4-5 minutes, 2 CPU cores
    python benchmarks/bench_captum.py --quick    # the first rows of each split only, under a minute

Prints one markdown table. Everything runs on the CPU with 2 threads. Both sides read the same
images: the workflow's uint8 cache through ``version_split`` and ``CacheBatches`` (the baseline's
training set, the test split in cache order), batches of ``influence.batch_size``, normalised by
``to_input``; both load the same checkpoint files (``results/baseline/model/epoch_*.pt``, read with
``weights_only=True``) and use, per checkpoint, the learning rate the workflow uses for the head
(``lr_head``, which Captum gets as the return value of ``checkpoints_load_func``) and the
checkpoint's loss (label smoothing 0.1, class weights all 1: ``nn.CrossEntropyLoss(label_smoothing=
0.1, reduction="sum")`` for Captum, so its per-example gradients are ours; checked numerically).

Agreement (scores float32 on both sides; "rel. diff" is ``max |captum - ours| / max |ours|`` per
test row, the largest over rows (per element for self-influence); "overlap" is the share of a
row's top-k train images both lists hold, averaged over rows, with the smallest row's share beside
it; where a float64 reference is given, it is the same score from the stored activations and an
error signal recomputed in float64 from the stored logits, so it shows how far float32 rounding
alone takes each side):

* (a) Captum ``TracInCPFast(final_fc_layer=model.fc[4])`` against ours with the bias term dropped
  (``has_bias`` False for fc.4 in the workflow's own factor folders: exactly TracInCPFast's
  score ``lr (a.a')(e.e')``): dense scores of the first test rows against every train row, top-k
  proponents and opponents, self-influence of every train row.
* (b) Captum ``TracInCP(layers=["fc.0", "fc.2", "fc.4"], sample_wise_grads_per_batch=True)``
  (weights and biases) against ``TracIn(layers=["fc.0", "fc.2", "fc.4"]).scores``: exact on both
  sides, on a small subset because TracInCP back-propagates through the whole backbone.
* (c) what dropping the bias changes: our exact top-k (with bias, what the workflow writes) against
  the no-bias top-k on every test row, Captum's TracInCPFast top-k against the exact one, and the
  self-influence ranking with and without the bias term.
* Ours from the images (the timed runs below) against ours from the workflow's factor folders and
  the workflow's own ``top_k_influences.parquet``.

Time and peak RSS, end to end from the images (every method in its own child process, which reads
the checkpoints, builds the model and extracts what it needs; peak RSS is ``ru_maxrss``, beside the
RSS before the timed part: imports and one untimed warm-up forward): top-k proponents and opponents
of every test image, and self-influence of every training image. The model forward passes each
side makes are counted too: they are most of either side's time, and a count has no timing noise.

* Ours: ``TracIn.topk(kind="both")`` (factors of the train and test split at every checkpoint, then
  the exact top-k kernel) and ``TracIn.self_influence``.
* Captum TracInCPFast with a train loader of the same batches: ``influence(..., k=, proponents=)``
  re-runs the model on the whole training set and on the test batch for every train batch and
  checkpoint, so each call costs a fixed training-set pass plus a part per test row. It is timed on
  one call of 64 test rows (``k=None``: the dense scores of (a)) and one call each of 256 rows for
  proponents and opponents; the two sizes give the fixed and the per-row part (their ratio is
  checked against the forward passes each makes), and the whole test set in batches of 256 is
  EXTRAPOLATED from them. Its fastest setting is timed too: the whole training set as one train
  batch and the whole test set as one call (proponents measured; opponents make the same passes and
  are EXTRAPOLATED from the 256-row calls' opponents/proponents ratio). ``self_influence()`` is
  measured on the whole training set. The backbone's parameters are frozen for Captum (it enables
  the layers it traces itself), which spares it autograd through the backbone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tracinflow._util.device import (  # noqa: E402
    DEFAULT_MEMORY_FORMAT,
    MEMORY_FORMAT_SETTINGS,
    in_memory_format,
    in_pieces,
    inference_form,
)
from tracinflow.influence.kernel import KINDS, score_block, topk_influence  # noqa: E402
from tracinflow.influence.self_influence import self_influence_scores  # noqa: E402
from tracinflow.io.checkpoints import load_checkpoint, read_checkpoint  # noqa: E402
from tracinflow.io.factor_store import load_checkpoints  # noqa: E402
from tracinflow.train.batches import CacheBatches  # noqa: E402
from tracinflow.train.model import model_from_checkpoint  # noqa: E402

THREADS = 2
VERSION = "baseline"
RESULTS = ROOT / "results" / VERSION
LAYER = "fc.4"
HEAD = ["fc.0", "fc.2", "fc.4"]


def scale(quick: bool) -> dict:
    """Rows used: ``n_train``/``n_test`` (None: all), Captum's timed test rows (dense call, top-k
    calls), the TracInCP subset (train, test rows) and the top-k compared on it."""
    if quick:
        return dict(n_train=384, n_test=64, dense_rows=16, call_rows=32, head=(32, 4), head_k=5)
    return dict(n_train=None, n_test=None, dense_rows=64, call_rows=256, head=(256, 32), head_k=10)


def demo_settings() -> dict:
    """The baseline version's resolved settings (config/config.yaml with the schema's defaults)."""
    import yaml

    from tracinflow.config import load_schema, version_settings

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    schema = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return version_settings(config, schema)[VERSION]


def demo_paths(settings: dict) -> dict:
    data = ROOT / "results" / "data" / settings["dataset"]["name"]
    listed = json.loads((RESULTS / "model" / "checkpoints.json").read_text())
    epochs = [int(entry["epoch"]) for entry in listed]
    return {
        "manifest": str(data / "manifest.parquet"),
        "cache": str(data / "cache"),
        "train_set": str(RESULTS / "train_set.parquet"),
        "checkpoints": [str(RESULTS / "model" / entry["file"]) for entry in listed],
        "factors": {
            split: [str(RESULTS / "factors" / f"epoch_{e:03d}" / split) for e in epochs]
            for split in ("train", "test")
        },
    }


def missing_inputs(paths: dict) -> list[str]:
    files = [paths["manifest"], paths["train_set"], *paths["checkpoints"]]
    files += [str(Path(paths["cache"]) / f"{s}.npy") for s in ("train", "test")]
    files += [str(Path(d) / "meta.json") for dirs in paths["factors"].values() for d in dirs]
    return [f for f in files if not Path(f).exists()]


# --------------------------------------------------------------------------------------------------
# inputs, as the workflow reads them


def split_data(spec: dict, split: str, n: int | None = None):
    """``(uint8 images, labels, idx)`` of ``split`` as the baseline sees it (train: its training
    set), its first ``n`` rows when ``n`` is given."""
    import pandas as pd

    from tracinflow.io.common import version_split

    manifest = pd.read_parquet(spec["manifest"])
    cache = Path(spec["cache"]) / f"{split}.npy"
    images, labels, idx = version_split(manifest, split, spec["train_set"], cache)
    if n is not None and n < len(labels):
        images, labels, idx = images[:n], labels[:n], idx[:n]
    return images, labels, idx


def batches(spec: dict, split: str, arch: dict, n=None, batch=None) -> CacheBatches:
    """The workflow's normalised batches of ``split`` (first ``n`` rows), ``(x, y, idx)``."""
    return CacheBatches(*split_data(spec, split, n), arch, batch or spec["batch"], "cpu")


class _Pairs(torch.utils.data.IterableDataset):
    """``CacheBatches`` as ``(x, y)`` batches, the shape Captum's loaders yield."""

    def __init__(self, source: CacheBatches):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        return ((x, y) for x, y, _ in self.source)


def captum_loader(source: CacheBatches) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_Pairs(source), batch_size=None)


def first_rows(spec: dict, split: str, arch: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` rows of ``split`` as one Captum input batch ``(x, y)``."""
    x, y, _ = next(iter(batches(spec, split, arch, n=n, batch=n)))
    return x, y


class _SummedLoss(torch.nn.Module):
    """The project's per-sample loss summed over the batch (``reduction = "sum"`` for Captum)."""

    reduction = "sum"

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, logits, labels):
        return self.loss(logits, labels, reduction="none").sum()


def captum_loss(settings: dict) -> torch.nn.Module:
    """The checkpoint's loss as Captum takes it, summed over the batch: ``nn.CrossEntropyLoss``
    when the class weights are all 1 (then it is ours per sample); otherwise ours summed, since
    PyTorch weights each smoothed target term by its own class (``w_c``), ours the whole sample
    by its label's (``w_y``)."""
    from tracinflow.train.loss import loss_from_settings

    weights = settings.get("class_weights")
    if weights is None or all(w == 1 for w in weights):
        return torch.nn.CrossEntropyLoss(
            label_smoothing=float(settings["label_smoothing"]), reduction="sum"
        )
    return _SummedLoss(loss_from_settings(settings))


def checkpoint_loader(spec: dict):
    """Captum's ``checkpoints_load_func``: the state of a checkpoint into the model (read once,
    with ``weights_only=True``), returning the head's learning rate at it. With
    ``--captum-model inference-form``, the state of the checkpoint's inference form (BatchNorms
    folded, "same" convolutions padded in the kernel: what our side extracts with), which fits
    the model :func:`frozen_model` gives Captum then."""
    states = {path: read_checkpoint(path) for path in spec["checkpoints"]}
    if spec["captum_model"] == "inference-form":
        for checkpoint in states.values():
            model = in_memory_format(model_from_checkpoint(checkpoint), spec["memory_format"])
            checkpoint["model"] = inference_form(model.eval()).state_dict()

    def load(model, path):
        model.load_state_dict(states[path]["model"])
        return float(states[path]["lr_head"])

    return load


def bench_model(spec: dict):
    """The baseline's first checkpoint (eval mode) in the run's memory format, as the workflow
    loads it (``training.memory_format``); both sides get the same."""
    model, checkpoint = load_checkpoint(spec["checkpoints"][0])
    return in_memory_format(model, spec["memory_format"]), checkpoint


def frozen_model(spec: dict):
    """The baseline's model (eval mode), all parameters frozen; Captum enables those it traces."""
    model, checkpoint = bench_model(spec)
    if spec["captum_model"] == "inference-form":
        model = inference_form(model)
        body = model.body  # runs in the CPU's pieces, as our extraction does (state dict as is)
        body.forward = lambda images, whole=body.forward: in_pieces(whole, images)
    for param in model.parameters():
        param.requires_grad_(False)
    return model, checkpoint


# --------------------------------------------------------------------------------------------------
# the timed workers, one child process each


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours_topk(spec: dict) -> dict:
    from tracinflow.tracin import TracIn

    t0 = time.perf_counter()
    model, _ = bench_model(spec)
    train = batches(spec, "train", model.arch, spec["n_train"])
    tracin = TracIn(model, train, [LAYER], checkpoints=spec["checkpoints"], device="cpu")
    frame = tracin.topk(batches(spec, "test", model.arch, spec["n_test"]), spec["k"], "both")
    wall = time.perf_counter() - t0
    frame.to_parquet(Path(spec["out"]) / "ours_topk.parquet", index=False)
    return {"wall_s": wall}


def ours_self(spec: dict) -> dict:
    from tracinflow.tracin import TracIn

    t0 = time.perf_counter()
    model, _ = bench_model(spec)
    train = batches(spec, "train", model.arch, spec["n_train"])
    tracin = TracIn(model, train, [LAYER], checkpoints=spec["checkpoints"], device="cpu")
    frame = tracin.self_influence()
    wall = time.perf_counter() - t0
    frame.to_parquet(Path(spec["out"]) / "ours_self.parquet", index=False)
    return {"wall_s": wall}


def captum_fast(spec: dict, train_batch: int):
    """``(TracInCPFast, model)`` on the baseline's checkpoints, train loader of ``train_batch``."""
    from captum.influence import TracInCPFast

    model, checkpoint = frozen_model(spec)
    loader = captum_loader(batches(spec, "train", model.arch, spec["n_train"], train_batch))
    tracin = TracInCPFast(
        model,
        model.fc[4],
        loader,
        spec["checkpoints"],
        checkpoint_loader(spec),
        loss_fn=captum_loss(checkpoint["loss"]),
    )
    return tracin, model


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def save(spec: dict, name: str, tensor) -> None:
    np.save(Path(spec["out"]) / f"{name}.npy", tensor.detach().numpy())


def captum_batched(spec: dict) -> dict:
    """TracInCPFast, train batches of ``batch``: a dense call and a top-k call of each kind."""
    (tracin, model), setup = timed(lambda: captum_fast(spec, spec["batch"]))
    small = first_rows(spec, "test", model.arch, spec["dense_rows"])
    dense, t_dense = timed(lambda: tracin.influence(small))
    save(spec, "captum_dense", dense)
    big = first_rows(spec, "test", model.arch, spec["call_rows"])
    out = {"setup_s": setup, "dense_s": t_dense}
    for kind, proponents in (("proponent", True), ("opponent", False)):
        found, wall = timed(lambda p=proponents: tracin.influence(big, k=spec["k"], proponents=p))
        save(spec, f"captum_{kind}", found.indices)
        out[f"{kind}_s"] = wall
    return out


def captum_whole(spec: dict) -> dict:
    """TracInCPFast at its fastest: the training set as one batch, the test set as one call."""
    (tracin, model), setup = timed(lambda: captum_fast(spec, spec["n_train"]))
    everything = first_rows(spec, "test", model.arch, spec["n_test"])
    found, wall = timed(lambda: tracin.influence(everything, k=spec["k"], proponents=True))
    save(spec, "captum_whole_proponent", found.indices)
    return {"setup_s": setup, "proponent_s": wall}


def captum_self(spec: dict) -> dict:
    t0 = time.perf_counter()
    tracin, _ = captum_fast(spec, spec["batch"])
    scores = tracin.self_influence()
    wall = time.perf_counter() - t0
    save(spec, "captum_self", scores)
    return {"wall_s": wall}


def captum_head(spec: dict) -> dict:
    """TracInCP on the head's three Linear layers (weights and biases), a train/test subset."""
    from captum.influence import TracInCP

    t0 = time.perf_counter()
    model, checkpoint = frozen_model(spec)
    n_train, n_test = spec["head"]
    loader = captum_loader(batches(spec, "train", model.arch, n_train, min(64, n_train)))
    tracin = TracInCP(
        model,
        loader,
        spec["checkpoints"],
        checkpoint_loader(spec),
        layers=HEAD,
        loss_fn=captum_loss(checkpoint["loss"]),
        sample_wise_grads_per_batch=True,
    )
    scores = tracin.influence(first_rows(spec, "test", model.arch, n_test))
    wall = time.perf_counter() - t0
    save(spec, "captum_head", scores)
    return {"wall_s": wall}


WORKERS = {
    f.__name__: f
    for f in (ours_topk, ours_self, captum_batched, captum_whole, captum_self, captum_head)
}


def warm_up(spec: dict) -> None:
    """One untimed forward of a throwaway model on a batch, so no timed region pays the process's
    first-call costs (oneDNN kernels, allocator), whichever method it runs."""
    model, _ = bench_model(spec)
    x, _ = first_rows(spec, "test", model.arch, min(spec["batch"], spec["n_test"]))
    with torch.no_grad():
        model(x)


def worker(name: str, spec_json: str) -> None:
    """Child process: run one worker; print its timings and peak RSS as JSON."""
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(THREADS)
    spec = json.loads(spec_json)
    import captum.influence  # noqa: F401  (imports count in the base RSS, not in the time)
    import pandas  # noqa: F401

    import tracinflow.tracin  # noqa: F401

    warm_up(spec)
    base = rss_mib()
    out = WORKERS[name](spec)
    print(json.dumps({**out, "peak_rss_mib": rss_mib(), "base_rss_mib": base}))


def child(name: str, spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `make` sets it: no spinning idle threads
    done = subprocess.run(
        [sys.executable, __file__, "--worker", name, "--spec", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"worker {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# agreement


def folder_factors(spec: dict, bias: bool = True) -> tuple[list, list]:
    """The workflow's factor folders (test, train) of every checkpoint, fc.4; without the bias
    term when ``bias`` is False."""
    sides = []
    for split, n in (("test", spec["n_test"]), ("train", spec["n_train"])):
        rows = None if n is None else (0, n)
        side = load_checkpoints(spec["factors"][split], rows=rows, layers=[LAYER])
        if not bias:
            side = [dataclasses.replace(f, has_bias={LAYER: False}) for f in side]
        sides.append(side)
    return sides[0], sides[1]


def rel_diff(theirs: np.ndarray, ours: np.ndarray) -> float:
    """``max |theirs - ours| / max |ours|`` per row, the largest over rows (1-D: per element)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale_ = np.abs(ours) if ours.ndim == 1 else np.abs(ours).max(axis=1, keepdims=True)
    return float((np.abs(theirs - ours) / scale_).max())


def topk_table(frame, kind: str, k: int) -> np.ndarray:
    """Train idx of each test row's top-k of ``kind``, rows in test order, columns by rank."""
    part = frame[frame["kind"] == kind].sort_values(["test_idx", "rank"], kind="stable")
    return part["train_idx"].to_numpy().reshape(-1, k)


def overlap(a: np.ndarray, b: np.ndarray) -> str:
    """Mean (and smallest) share of entries two sets of rows of top-k lists have in common."""
    rows = min(len(a), len(b))
    shares = [len(set(a[i]) & set(b[i])) / a.shape[1] for i in range(rows)]
    return f"{np.mean(shares):.1%} (min {min(shares):.0%}, {rows:,} test rows)"


def dense_topk(scores: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Column positions of each row's top-k (ties to the lower position)."""
    order = np.argsort(-scores if largest else scores, axis=1, kind="stable")
    return order[:, :k]


def loss_check(spec: dict) -> str:
    """Per-sample ``dl/dz`` of the loss given to Captum (autograd of its batch sum) against ours
    (closed form), on the stored test logits of the first checkpoint."""
    from tracinflow.train.loss import loss_from_settings

    folder = load_checkpoints(spec["factors"]["test"][:1])[0]
    settings = folder.meta["loss"]
    logits = torch.tensor(np.asarray(folder.logits), requires_grad=True)
    labels = torch.from_numpy(np.array(folder.labels))
    theirs = captum_loss(settings)
    (grad,) = torch.autograd.grad(theirs(logits, labels), logits)
    ours = loss_from_settings(settings).error_signal(logits.detach(), labels)
    diff = float((grad - ours).abs().max() / ours.abs().max())
    return (
        f"checkpoint loss {settings['loss']} (label smoothing {settings['label_smoothing']}, "
        f"class weights {sorted(set(settings['class_weights']))}) -> Captum gets "
        f"`{type(theirs).__name__}(reduction='sum')`; per-sample dl/dz vs ours on "
        f"{len(labels):,} test logits: max rel. diff {diff:.1e}"
    )


def same_frames(a, b) -> str:
    """``identical``, or how far two top-k tables are apart."""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    if a.equals(b):
        return "identical"
    if len(a) != len(b):
        return f"differ: {len(a):,} vs {len(b):,} rows"
    differ = int((a["train_idx"].to_numpy() != b["train_idx"].to_numpy()).sum())
    gap = rel_diff(a["influence"].to_numpy(), b["influence"].to_numpy())
    return f"{differ:,} of {len(a):,} entries differ; influence within {gap:.1e} (relative)"


def ranking_overlap(a: np.ndarray, b: np.ndarray, k: int) -> str:
    """Share of the ``k`` largest entries two score vectors have in common."""
    top_a, top_b = (set(np.argsort(-v, kind="stable")[:k]) for v in (a, b))
    return f"{len(top_a & top_b) / k:.0%} of the top {k}"


def float64_side(side: list) -> list:
    """A side's no-bias factors in float64, the error signal recomputed in float64 from the stored
    logits: the reference both float32 computations are measured against."""
    from tracinflow.train.loss import loss_from_settings

    out = []
    for f in side:
        logits = torch.from_numpy(np.array(f.logits, dtype=np.float64))
        labels = torch.from_numpy(np.array(f.labels))
        target = labels if f.meta.get("target", "label") == "label" else logits.argmax(1)
        err = loss_from_settings(f.meta["loss"]).error_signal(logits, target).numpy()
        act = np.asarray(f.act[LAYER], dtype=np.float64)
        out.append(dataclasses.replace(f, act={LAYER: act}, err={LAYER: err}))
    return out


def reference(spec: dict) -> dict:
    """Ours from the workflow's factor folders: exact (with the bias term) and without it."""
    ref = {}
    for name, bias in (("exact", True), ("nobias", False)):
        test, train = folder_factors(spec, bias)
        ref[name] = topk_influence(test, train, spec["k"], device="cpu")
        ref[f"{name}_self"] = self_influence_scores(train)
        ref[f"{name}_factors"] = (test, train)
    ref["train_idx"] = np.asarray(ref["exact_factors"][1][0].idx)
    test, train = (float64_side(side) for side in ref["nobias_factors"])
    ref["f64_test"], ref["f64_train"] = test, train
    ref["f64_self"] = self_influence_scores(train)
    return ref


def versus_float64(theirs: np.ndarray, ours: np.ndarray, f64: np.ndarray) -> str:
    """Captum against ours, and each against the float64 reference."""
    return (
        f"max rel. diff {rel_diff(theirs, ours):.1e}; against float64: Captum "
        f"{rel_diff(theirs, f64):.1e}, ours {rel_diff(ours, f64):.1e}"
    )


def captum_topk(out: Path, ref: dict, name: str) -> np.ndarray:
    """A Captum top-k result (positions in its train loader) as train idx."""
    return ref["train_idx"][np.load(out / f"{name}.npy")]


def fast_rows(spec: dict, out: Path, ref: dict) -> list[tuple[str, str]]:
    """(a): Captum TracInCPFast against ours without the bias term."""
    k, dense_rows, call_rows = spec["k"], spec["dense_rows"], spec["call_rows"]
    dense = {
        name: score_block([f.rows(slice(0, dense_rows)) for f in test], train, device="cpu")
        for name, (test, train) in (
            ("ours", ref["nobias_factors"]),
            ("f64", (ref["f64_test"], ref["f64_train"])),
        )
    }
    ours = {kind: topk_table(ref["nobias"], kind, k) for kind in KINDS}
    whole = captum_topk(out, ref, "captum_whole_proponent")
    label = "(a) Captum TracInCPFast vs ours without the bias term"
    return [
        (
            f"{label}: dense scores, {dense_rows} test x {spec['n_train']:,} train",
            versus_float64(np.load(out / "captum_dense.npy"), dense["ours"], dense["f64"]),
        ),
        *[
            (
                f"{label}: top-{k} {kind}s, calls of {call_rows} test rows",
                overlap(captum_topk(out, ref, f"captum_{kind}"), ours[kind]),
            )
            for kind in KINDS
        ],
        (
            f"{label}: top-{k} proponents, the whole test set as one call",
            overlap(whole, ours["proponent"]),
        ),
        (
            f"{label}: self-influence of every train image",
            versus_float64(np.load(out / "captum_self.npy"), ref["nobias_self"], ref["f64_self"]),
        ),
    ]


def bias_rows(spec: dict, out: Path, ref: dict) -> list[tuple[str, str]]:
    """(c): what the bias term changes: ours exact against ours without it, and Captum's."""
    k, call_rows = spec["k"], spec["call_rows"]
    exact = {kind: topk_table(ref["exact"], kind, k) for kind in KINDS}
    nobias = {kind: topk_table(ref["nobias"], kind, k) for kind in KINDS}
    label = "(c) Captum TracInCPFast vs ours exact"
    return [
        *[
            (
                f"(c) ours exact (with bias) vs ours without it: top-{k} {kind}s",
                overlap(exact[kind], nobias[kind]),
            )
            for kind in KINDS
        ],
        (
            f"{label}: top-{k} proponents (test set as one call)",
            overlap(captum_topk(out, ref, "captum_whole_proponent"), exact["proponent"]),
        ),
        (
            f"{label}: top-{k} opponents (calls of {call_rows} rows)",
            overlap(captum_topk(out, ref, "captum_opponent"), exact["opponent"]),
        ),
        (
            "(c) self-influence, ours exact vs without the bias term",
            f"ranking: {ranking_overlap(ref['exact_self'], ref['nobias_self'], k)}; the bias term "
            f"is up to {rel_diff(ref['nobias_self'], ref['exact_self']):.1%} of a score",
        ),
    ]


def ours_head_scores(spec: dict) -> np.ndarray:
    from tracinflow.tracin import TracIn

    model, _ = bench_model(spec)
    n_train, n_test = spec["head"]
    train = batches(spec, "train", model.arch, n_train)
    tracin = TracIn(model, train, HEAD, checkpoints=spec["checkpoints"], device="cpu")
    return tracin.scores(batches(spec, "test", model.arch, n_test))


def head_rows(spec: dict, out: Path, wall: float) -> list[tuple[str, str]]:
    """(b): Captum TracInCP on the head's Linear layers with bias against ours, exact both."""
    ours = ours_head_scores(spec)
    theirs = np.load(out / "captum_head.npy")
    n_train, n_test = spec["head"]
    k = spec["head_k"]
    label = (
        f"(b) Captum TracInCP vs ours, fc.0+fc.2+fc.4 with bias, {n_test} test x {n_train} train"
    )
    lists = {
        kind: [dense_topk(s, k, kind == "proponent") for s in (theirs, ours)] for kind in KINDS
    }
    return [
        (
            f"{label}: dense scores",
            f"max rel. diff {rel_diff(theirs, ours):.1e} (TracInCP took {wall:.0f} s: it "
            "back-propagates through the backbone for every image)",
        ),
        *[(f"{label}: top-{k} {kind}s", overlap(*lists[kind])) for kind in KINDS],
    ]


def consistency_rows(spec: dict, out: Path, ref: dict) -> list[tuple[str, str]]:
    """Ours from the images (the timed runs) against ours from the workflow's factor folders."""
    import pandas as pd

    ours = pd.read_parquet(out / "ours_topk.parquet")
    label = "ours from the images (`TracIn.topk`)"
    rows = [(f"{label} vs from the factor folders", same_frames(ours, ref["exact"]))]
    if spec["full"]:
        name = f"{label} vs the workflow's top_k_influences.parquet"
        # the workflow's file holds its version's method over its layers (K-FAC over the head by
        # default): the same numbers only when that is TracIn over the layer timed here
        registry = json.loads((ROOT / "results/cross_version/version_registry.json").read_text())
        influence = registry[VERSION]["settings"]["influence"]
        if influence["method"] == "tracin" and influence["layers"] == [LAYER]:
            written = pd.read_parquet(RESULTS / "influence" / "top_k_influences.parquet")
            rows.append((name, same_frames(ours, written)))
        else:
            method, layers = influence["method"], influence["layers"]
            rows.append((name, f"not compared: the workflow scores {method} over {layers}"))
    frame = pd.read_parquet(out / "ours_self.parquet").set_index("train_idx")
    from_images = frame["self_influence"].reindex(ref["train_idx"]).to_numpy()
    rows.append(
        (
            "ours from the images (`TracIn.self_influence`) vs from the factor folders",
            f"max rel. diff {rel_diff(from_images, ref['exact_self']):.1e}",
        )
    )
    return rows


# --------------------------------------------------------------------------------------------------
# time and memory


def rss(run: dict) -> str:
    peak, base = run["peak_rss_mib"], run["base_rss_mib"]
    return f"peak RSS {peak:,.0f} MiB (before the timed part {base:,.0f} MiB)"


def extrapolated(spec: dict, run: dict) -> dict:
    """Captum's calls in batches of ``call_rows`` over the whole test set, from the two sizes
    timed: a call is a fixed training-set pass ``c0`` plus ``c1`` per test row."""
    small, big = spec["dense_rows"], spec["call_rows"]
    c1 = max((run["proponent_s"] - run["dense_s"]) / (big - small), 0.0)
    calls = math.ceil(spec["n_test"] / big)
    fixed = {kind: run[f"{kind}_s"] - big * c1 for kind in KINDS}
    total = run["setup_s"] + sum(calls * fixed[k] + spec["n_test"] * c1 for k in KINDS)
    train_batches = math.ceil(spec["n_train"] / spec["batch"])

    def forwards(rows: int) -> int:  # model forward passes of one call, per checkpoint
        return train_batches * rows + spec["n_train"]

    return {
        "c1": c1,
        "c0": fixed["proponent"],
        "calls": calls,
        "total": total,
        "measured": run["proponent_s"] / run["dense_s"],
        "predicted": forwards(big) / forwards(small),
    }


def forwards_row(spec: dict, calls: int) -> tuple[str, str]:
    """Images the model runs on, per checkpoint summed: what each side's time is made of."""
    n_train, n_test = spec["n_train"], spec["n_test"]
    checkpoints = len(spec["checkpoints"])
    train_batches = math.ceil(n_train / spec["batch"])
    ours = checkpoints * (n_train + n_test)
    batched = 2 * checkpoints * (train_batches * n_test + calls * n_train)
    fastest = 2 * checkpoints * (n_train + n_test)
    return (
        "model forward passes (images x checkpoints) behind the times below",
        f"top-k: ours {ours:,} (each image once per checkpoint; proponents and opponents "
        f"together); Captum {batched:,} in calls of {spec['call_rows']} ({batched / ours:.0f}x: "
        f"the test batch again for each of {train_batches} train batches, the training set again "
        f"for each call, each kind a call of its own), {fastest:,} at its fastest "
        f"({fastest / ours:.0f}x); self-influence: {checkpoints * n_train:,} on both sides",
    )


def timing_rows(spec: dict, runs: dict) -> tuple[list[tuple[str, str]], dict]:
    ours, batched, whole = runs["ours_topk"], runs["captum_batched"], runs["captum_whole"]
    fit = extrapolated(spec, batched)
    small, big, b = spec["dense_rows"], spec["call_rows"], spec["batch"]
    opp_ratio = batched["opponent_s"] / batched["proponent_s"]
    fastest = whole["setup_s"] + whole["proponent_s"] * (1 + opp_ratio)
    ratios = {
        "batched": fit["total"] / ours["wall_s"],
        "fastest": fastest / ours["wall_s"],
        "self": runs["captum_self"]["wall_s"] / runs["ours_self"]["wall_s"],
    }
    top = f"top-{spec['k']} proponents + opponents of all {spec['n_test']:,} test images"
    rows = [
        forwards_row(spec, fit["calls"]),
        (f"ours: {top} (`TracIn.topk`, from the images)", f"{ours['wall_s']:.1f} s; {rss(ours)}"),
        (
            f"Captum TracInCPFast, train batches of {b}: one call of {small} test rows (k=None) "
            f"/ {big} rows proponents / {big} rows opponents",
            f"{batched['dense_s']:.1f} s / {batched['proponent_s']:.1f} s / "
            f"{batched['opponent_s']:.1f} s; {big} vs {small} rows: {fit['measured']:.2f}x, the "
            f"forward passes predict {fit['predicted']:.2f}x: {fit['c0']:.1f} s per call (the "
            f"training-set pass) + {fit['c1'] * 1e3:.0f} ms per test row",
        ),
        (
            f"Captum TracInCPFast: {top} in {fit['calls']} calls of {big} rows, EXTRAPOLATED",
            f"{fit['total']:.0f} s = {ratios['batched']:.1f}x ours; {rss(batched)}, of one call "
            "(the calls are independent)",
        ),
        (
            f"Captum TracInCPFast at its fastest (train set as one batch of {spec['n_train']:,}, "
            "test set as one call): proponents measured, opponents EXTRAPOLATED",
            f"{whole['proponent_s']:.1f} s + {whole['proponent_s'] * opp_ratio:.1f} s (x "
            f"{opp_ratio:.2f}, the {big}-row calls' ratio) = {fastest:.0f} s = "
            f"{ratios['fastest']:.1f}x ours; {rss(whole)}",
        ),
        (
            f"ours: self-influence of all {spec['n_train']:,} train images "
            "(`TracIn.self_influence`)",
            f"{runs['ours_self']['wall_s']:.1f} s; {rss(runs['ours_self'])}",
        ),
        (
            f"Captum TracInCPFast `self_influence()`, train batches of {b}",
            f"{runs['captum_self']['wall_s']:.1f} s = {ratios['self']:.1f}x ours; "
            f"{rss(runs['captum_self'])}",
        ),
    ]
    return rows, ratios


def goal_row(ratios: dict) -> tuple[str, str]:
    """The issue's goal: at least 10x faster than TracInCPFast end to end, said as measured."""
    parts = [
        f"{name}: {ratios[key]:.1f}x ({'met' if ratios[key] >= 10 else 'MISSED'})"
        for name, key in (
            ("top-k vs calls of batches", "batched"),
            ("top-k vs its fastest setting", "fastest"),
            ("self-influence", "self"),
        )
    ]
    return ("issue goal: ours >= 10x faster than TracInCPFast end to end", "; ".join(parts))


# --------------------------------------------------------------------------------------------------


def demo_inputs() -> tuple[dict, dict]:
    """``(settings, paths)`` of the demo's baseline; exits saying to run the demo when its results
    are missing."""
    listed = RESULTS / "model" / "checkpoints.json"
    missing = [str(listed)]
    if listed.exists():
        settings = demo_settings()
        paths = demo_paths(settings)
        missing = missing_inputs(paths)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        sys.exit(
            f"bench_captum needs the demo's baseline results; missing: {missing[0]}{more}. "
            "Run `make demo` first."
        )
    return settings, paths


def make_spec(quick: bool, out: Path, memory_format: str, captum_model: str = "as-saved") -> dict:
    settings, paths = demo_inputs()
    influence = settings["influence"]
    spec = {**paths, **scale(quick), "out": str(out), "memory_format": memory_format}
    spec["captum_model"] = captum_model
    spec.update(k=int(influence["top_k"]), batch=int(influence["batch_size"]))
    for split in ("train", "test"):
        total = len(split_data(spec, split)[1])
        spec[f"n_{split}"] = min(spec[f"n_{split}"] or total, total)
        spec[f"all_{split}"] = total
    spec["full"] = spec["n_train"] == spec["all_train"] and spec["n_test"] == spec["all_test"]
    return spec


def print_table(rows, quick: bool, seconds: float, load: float) -> None:
    import captum

    print(f"\n### bench_captum{' --quick' if quick else ''} ({THREADS} CPU threads, torch "
          f"{torch.__version__}, captum {captum.__version__}, total {seconds:.0f} s; load "
          f"average {load:.1f} at the start)\n")  # fmt: skip
    print("| measurement | result |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first rows only, about a minute")
    parser.add_argument(
        "--memory-format",
        choices=MEMORY_FORMAT_SETTINGS,
        default=DEFAULT_MEMORY_FORMAT,
        help="the network's memory format on both sides (the workflow's default: %(default)s)",
    )
    parser.add_argument(
        "--captum-model",
        choices=("as-saved", "inference-form"),
        default="as-saved",
        help="the network Captum runs: as the checkpoint saved it (%(default)s), or the inference "
        "form ours extracts with (BatchNorms folded, same-padding in the kernel, the backbone run "
        "in pieces of CPU_FORWARD_PIXELS)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.spec)
        return
    try:
        import captum.influence  # noqa: F401
    except ImportError:
        sys.exit("bench_captum needs Captum: .venv/bin/pip install -e '.[bench]'")
    torch.set_num_threads(THREADS)
    t_start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_captum_") as tmp:
        out = Path(tmp)
        spec = make_spec(args.quick, out, args.memory_format, args.captum_model)
        runs = {name: child(name, spec) for name in WORKERS}
        ref = reference(spec)
        rows = [
            (
                "problem",
                f"demo baseline: {spec['n_train']:,} train x {spec['n_test']:,} test images, "
                f"checkpoints {', '.join(Path(c).stem for c in spec['checkpoints'])} (lr = "
                f"lr_head each), layer fc.4, k {spec['k']}, batches of {spec['batch']}, the "
                f"network in {spec['memory_format']} on both sides; ours extracts with its "
                f"inference form, Captum runs the network {spec['captum_model']}",
            ),
            ("loss", loss_check(spec)),
            *fast_rows(spec, out, ref),
            *head_rows(spec, out, runs["captum_head"]["wall_s"]),
            *bias_rows(spec, out, ref),
            *consistency_rows(spec, out, ref),
        ]
        timing, ratios = timing_rows(spec, runs)
    rows += [*timing, goal_row(ratios)]
    print_table(rows, args.quick, time.perf_counter() - t_start, load)


if __name__ == "__main__":
    main()
