"""The extract_factors rule: the ghost factors of every checkpoint of a version on one split, one
factor folder per checkpoint.

``extract_factors(inputs, outputs, params, threads, log)`` takes the rule's named inputs, outputs
and params and runs :func:`tracinflow.io.factor_store.extract_split_factors`, which reads the split
once, then each checkpoint, calls the influence package, and writes each folder atomically.
"""

from __future__ import annotations

from tracinflow.io.factor_store import extract_split_factors


def extract_factors(inputs, outputs, params, threads=1, log=print):
    """Ghost factors of every checkpoint of a version (``inputs["checkpoint_files"]``, in training
    order) on one split, in the folders ``outputs["factors"]`` (train: the version's training set,
    with the labels it was trained with; test: the target the config names)."""
    return extract_split_factors(
        inputs["checkpoint_files"], outputs["factors"], inputs, params, threads, log
    )
