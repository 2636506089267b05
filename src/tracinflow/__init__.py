"""tracinflow: TracIn influence for image classifiers, as a library and a Snakemake workflow.

``from tracinflow import TracIn`` is the Python entry point (:mod:`tracinflow.tracin`), with what a
user of it reaches for: ``PerSampleLoss`` (the loss contract), ``load_checkpoint`` (the model of a
checkpoint file the workflow wrote) and ``load_factor_dir`` (a factor folder). The packages below
it: ``data`` (scan, split, cache, training sets), ``train`` (model, loss, training, prediction),
``influence`` (factors, the exact kernel, shards, self-influence), ``analysis`` (rankings, noise
detection, reports, cross-version), ``plots``, ``io`` (the workflow's file formats), ``stages`` (one
function per workflow rule, reading and writing through ``io``) and ``config`` (what
workflow/rules/common.smk validates). Importing the package itself loads no torch, so the
workflow's parse step stays cheap.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["PerSampleLoss", "TracIn", "load_checkpoint", "load_factor_dir"]

# Each public name and the module that defines it, imported on first use (torch comes with them).
_HOMES = {
    "TracIn": "tracinflow.tracin",
    "PerSampleLoss": "tracinflow.train.loss",
    "load_checkpoint": "tracinflow.io.checkpoints",
    "load_factor_dir": "tracinflow.io.factor_store",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
