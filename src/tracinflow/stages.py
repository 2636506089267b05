"""Workflow stages as plain functions over file paths: what each rule's script calls.

They read the contracted files (manifest, caches, checkpoints), call the library and write the
contracted outputs, so a script stays a few lines and the stages are testable without Snakemake.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow import io
from tracinflow.data import CacheRows, class_names_of, load_cache, split_rows, train_set_rows
from tracinflow.model import load_checkpoint, loss_from_checkpoint
from tracinflow.predict import false_predictions, metrics, plot_confusion_matrix, predict_split
from tracinflow.training import select_device, train_model


def version_split(manifest: pd.DataFrame, split: str, train_set_path, cache_path):
    """``(images, labels, idx)`` of a split as a version sees it: the train split is the version's
    training set (train_set.parquet: its labels, without dropped images), val and test the
    manifest's."""
    images = load_cache(cache_path)
    if split == "train":
        rows = train_set_rows(pd.read_parquet(train_set_path), manifest)
        images = CacheRows(images, rows["position"].to_numpy())
    else:
        rows = split_rows(manifest, split)
    return images, rows["label"].to_numpy(np.int64), rows["idx"].to_numpy(np.int64)


def build_version_train_set(
    manifest_path, out_path, *, label_noise, clean, reference_predictions=None, source=None,
    ranking=None, log,
):  # fmt: skip
    """train_set.parquet of a version: the manifest's train split with planted label noise, or a
    source version's training set cleaned of its top suspects under ``ranking``.

    ``source``: paths of the source version's ``train_set``, ``self_influence``,
    ``error_self_influence`` and train ``predictions``.
    """
    from tracinflow.noise import apply_cleaning, build_train_set
    from tracinflow.reports import descending_rank, suspicion_scores

    manifest = pd.read_parquet(manifest_path)
    if clean:
        source_set = pd.read_parquet(source["train_set"])
        predictions = pd.read_parquet(source["predictions"])
        idx = source_set.loc[~source_set["dropped"].to_numpy(bool), "idx"].to_numpy(np.int64)
        scores = suspicion_scores(
            ranking,
            idx,
            pd.read_parquet(source["self_influence"]),
            predictions,
            pd.read_parquet(source["error_self_influence"]),
        )
        suspects = pd.DataFrame({"train_idx": idx, "rank": descending_rank(scores, idx)})
        train_set, acted = apply_cleaning(
            source_set,
            suspects,
            fraction=clean["fraction"],
            count=clean["count"],
            action=clean["action"],
            predicted=predictions[["idx", "pred"]],
        )
        flips = int(source_set.set_index("idx").loc[acted, "noisy"].sum())
        log(
            f"cleaning {clean['from']}: {clean['action']} {len(acted)} top suspects by {ranking}; "
            f"{flips} of them carry a planted flip (of {int(source_set['noisy'].sum())} planted)"
        )
    else:
        reference_probs = None
        train = split_rows(manifest, "train")
        if label_noise and label_noise["mode"] == "confusing":
            reference = pd.read_parquet(reference_predictions).set_index("idx")
            missing = ~train["idx"].isin(reference.index)
            if missing.any():
                raise ValueError(
                    f"{reference_predictions} has no prediction for {int(missing.sum())} training "
                    "images: the reference version must train on the whole train split"
                )
            reference_probs = np.stack(reference.loc[train["idx"], "probs"].to_numpy())
        noise = {key: label_noise[key] for key in ("rate", "seed", "mode")} if label_noise else None
        train_set = build_train_set(
            train[["idx", "label"]],
            noise,
            reference_probs,
            num_classes=len(class_names_of(manifest)),
        )
        log(
            f"training set: {len(train_set)} images, {int(train_set['noisy'].sum())} labels flipped"
            + (f" ({label_noise['mode']}, rate {label_noise['rate']})" if label_noise else "")
        )
    io.write_parquet(out_path, train_set)
    return train_set


def train_version(
    manifest_path, train_set_path, caches: dict, settings: dict, out_dir, threads: int, log
) -> dict:
    """Train one version on its training set, early-stopping on val; writes the model folder."""
    manifest = pd.read_parquet(manifest_path)
    train_images, train_labels, _ = version_split(
        manifest, "train", train_set_path, caches["train"]
    )
    val = split_rows(manifest, "val")
    return train_model(
        train_images,
        train_labels,
        load_cache(caches["val"]),
        val["label"].to_numpy(),
        num_classes=len(class_names_of(manifest)),
        settings=settings,
        out_dir=out_dir,
        threads=threads,
        log=log,
    )


def load_for_inference(checkpoint_path, threads: int):
    """``(model, checkpoint, loss, device)`` of a checkpoint on the best device, the loss rebuilt
    from the checkpoint alone."""
    import torch

    torch.set_num_threads(threads)
    device = select_device("auto")
    model, checkpoint = load_checkpoint(checkpoint_path, device=device)
    return model, checkpoint, loss_from_checkpoint(checkpoint).to(device), device


def predict_version(
    manifest_path, train_set_path, caches: dict, checkpoint_path, outputs: dict, threads: int,
    batch_size: int, log,
) -> dict:  # fmt: skip
    """Predictions of every split with the best model (train: the version's training set, with its
    training labels), metrics, mispredictions, confusion matrix."""
    manifest = pd.read_parquet(manifest_path)
    names = class_names_of(manifest)
    model, checkpoint, loss_fn, device = load_for_inference(checkpoint_path, threads)
    log(f"predicting with {checkpoint_path} (epoch {checkpoint['epoch']}) on {device}")
    predictions = {}
    for split in ("train", "val", "test"):
        images, labels, idx = version_split(manifest, split, train_set_path, caches[split])
        predictions[split] = predict_split(
            model, images, labels, idx, loss_fn, batch_size=batch_size, device=device
        )
        accuracy = float((predictions[split]["pred"] == predictions[split]["label"]).mean())
        log(f"{split}: {len(labels)} images, accuracy {accuracy:.4f}")
        io.write_parquet(outputs[split], predictions[split])
    summary = metrics(predictions, names)
    io.write_json(outputs["metrics"], summary)
    io.write_csv(outputs["false_test"], false_predictions(predictions["test"], manifest, names))
    io.write_csv(outputs["false_train"], false_predictions(predictions["train"], manifest, names))
    plot_confusion_matrix(np.asarray(summary["confusion_matrix"]), names, outputs["confusion"])
    return summary


HEAD_LAYERS = ("fc.0", "fc.2", "fc.4")


def hooked_layers(setting) -> list[str]:
    """``influence.layers``: a list of module paths, or ``head`` for the head's three Linear layers."""
    return list(HEAD_LAYERS) if setting == "head" else list(setting)


class CacheBatches:
    """Normalised batches of the memory-mapped cache, in row order, with labels and dataset idx;
    sized, so progress lines can say how many batches are left."""

    def __init__(self, images, labels, idx, arch, batch_size: int, device):
        self.images, self.labels, self.idx = images, labels, idx
        self.arch, self.batch_size, self.device = arch, batch_size, device

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        import torch

        from tracinflow.model import to_input

        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            batch = torch.from_numpy(np.array(self.images[start:stop]))  # a writable copy
            yield (
                to_input(batch, self.arch, self.device),
                torch.as_tensor(self.labels[start:stop], device=self.device),
                torch.as_tensor(self.idx[start:stop]),
            )


def extract_version_factors(
    checkpoint_path, manifest_path, train_set_path, cache_path, split, out_dir, *, layers, target,
    batch_size, threads, log,
):  # fmt: skip
    """Ghost factors of one checkpoint on one split (train: the version's training set, with the
    labels it was trained with)."""
    from tracinflow.factors import extract_to_dir, log_progress

    model, checkpoint, loss_fn, device = load_for_inference(checkpoint_path, threads)
    manifest = pd.read_parquet(manifest_path)
    images, labels, idx = version_split(manifest, split, train_set_path, cache_path)
    log(
        f"factors of {checkpoint_path} (epoch {checkpoint['epoch']}, lr {checkpoint['lr_head']:g}) "
        f"on {split}: {len(labels)} images, layers {layers}, target "
        f"{target if split == 'test' else 'label'}, device {device}"
    )
    return extract_to_dir(
        model,
        CacheBatches(images, labels, idx, model.arch, batch_size, device),
        loss_fn,
        out_dir,
        epoch=int(checkpoint["epoch"]),
        lr=float(checkpoint["lr_head"]),  # the head's parameter group holds every hooked layer
        layers=layers,
        target=target if split == "test" else "label",
        device=device,
        num_samples=len(labels),
        progress=log_progress(prefix=f"factors {split}: "),
    )


def influence_shard(test_dirs, train_dirs, tile, tiles, out_path, *, k, memory_mb, threads, log):
    """Top-k candidates of one (test tile, train tile) shard, summed over every checkpoint."""
    import torch

    from tracinflow.factors import log_progress
    from tracinflow.influence import shard_topk, write_shard

    torch.set_num_threads(threads)
    log(f"shard test tile {tile[0]}/{tiles[0]}, train tile {tile[1]}/{tiles[1]}, k {k}")
    frame = shard_topk(
        test_dirs,
        train_dirs,
        k,
        test_tile=(tile[0], tiles[0]),
        train_tile=(tile[1], tiles[1]),
        memory_bytes=memory_mb * 2**20,
        progress=log_progress(prefix="shard: "),
    )
    write_shard(frame, out_path)
    return frame


def merge_version_topk(shard_paths, k, manifest_path, predictions: dict, outputs: dict, log):
    """Exact per-test-row top-k over all shards, plus a CSV with paths, labels and predictions."""
    from tracinflow.influence import merge_topk

    merged = merge_topk([pd.read_parquet(path) for path in shard_paths], k)
    io.write_parquet(outputs["parquet"], merged)
    manifest = pd.read_parquet(manifest_path).set_index("idx")
    names = class_names_of(manifest.reset_index())
    readable = merged.copy()
    for side, split in (("test", "test"), ("train", "train")):
        pred = pd.read_parquet(predictions[split]).set_index("idx")["pred"]
        key = readable[f"{side}_idx"]
        readable[f"{side}_path"] = manifest.loc[key, "path"].to_numpy()
        readable[f"{side}_true"] = [names[i] for i in manifest.loc[key, "label"]]
        readable[f"{side}_pred"] = [names[i] for i in pred.loc[key]]
    io.write_csv(outputs["csv"], readable)
    log(f"merged {len(shard_paths)} shards: {merged['test_idx'].nunique()} test images, k {k}")
    return merged


def version_self_influence(train_dirs, out_path, error_out_path, log):
    """Self-influence of every training image, with each checkpoint's term alongside; and the
    error-signal-only variant ``sum lr |e|^2`` (a ranking the noise evaluation compares)."""
    from tracinflow.influence import self_influence

    frame = self_influence(train_dirs, per_checkpoint=True)
    io.write_parquet(out_path, frame)
    io.write_parquet(error_out_path, self_influence(train_dirs, mode="error", per_checkpoint=True))
    log(f"self-influence of {len(frame)} training images (full and error-signal only)")
    return frame
