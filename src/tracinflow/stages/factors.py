"""The extract_factors rule: the ghost factors of one checkpoint on one split, in a factor folder.

``extract_factors(inputs, outputs, params, threads, log)`` takes the rule's named inputs, outputs
and params, reads, calls the influence package, and writes the folder atomically.
"""

from __future__ import annotations

import pandas as pd

from tracinflow._util.files import read_json
from tracinflow.io.common import version_split
from tracinflow.io.factor_store import extract_to_dir
from tracinflow.stages.predict import load_for_inference
from tracinflow.train.batches import CacheBatches

HEAD_LAYERS = ("fc.0", "fc.2", "fc.4")


def hooked_layers(setting) -> list[str]:
    """``influence.layers``: a list of module paths, or ``head`` for the head's three Linear layers."""
    return list(HEAD_LAYERS) if setting == "head" else list(setting)


def extract_factors(inputs, outputs, params, threads=1, log=print):
    """Ghost factors of one checkpoint on one split (train: the version's training set, with the
    labels it was trained with; test: the target the config names)."""
    split = params["split"]
    layers = hooked_layers(params["layers"])
    target = params["target"] if split == "test" else "label"
    model, checkpoint, loss_fn, device = load_for_inference(
        inputs["checkpoint"], threads, params["device"], listed=read_json(inputs["checkpoints"])
    )
    manifest = pd.read_parquet(inputs["manifest"])
    images, labels, idx = version_split(manifest, split, inputs["train_set"], inputs["cache"])
    log(
        f"factors of {inputs['checkpoint']} (stage {checkpoint.get('stage', 2)} epoch "
        f"{checkpoint['epoch']}, lr "
        f"{checkpoint['lr_head']:g}) on {split}: {len(labels)} images, layers {layers}, target "
        f"{target}, device {device}"
    )
    return extract_to_dir(
        model,
        CacheBatches(images, labels, idx, model.arch, params["batch_size"], device),
        loss_fn,
        outputs["factors"],
        epoch=int(checkpoint["epoch"]),
        stage=int(checkpoint.get("stage", 2)),
        lr=float(checkpoint["lr_head"]),  # the head's parameter group holds every hooked layer
        layers=layers,
        target=target,
        device=device,
        num_samples=len(labels),
        log=log,
        label=f"factors {split}",
    )
