"""The extract_factors rule: the ghost factors of one checkpoint on one split, in a factor folder.

``extract_factors(inputs, outputs, params, threads, log)`` takes the rule's named inputs, outputs
and params and runs :func:`tracinflow.io.factor_store.extract_checkpoint_factors`, which reads
the checkpoint and the split, calls the influence package, and writes the folder atomically.
"""

from __future__ import annotations

from tracinflow.io.factor_store import extract_checkpoint_factors


def extract_factors(inputs, outputs, params, threads=1, log=print):
    """Ghost factors of one checkpoint on one split (train: the version's training set, with the
    labels it was trained with; test: the target the config names)."""
    return extract_checkpoint_factors(inputs, outputs, params, threads, log)
