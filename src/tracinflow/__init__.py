"""tracinflow: TracIn influence for image classifiers, as a library and a Snakemake workflow.

``from tracinflow import TracIn`` is the Python entry point (:mod:`tracinflow.tracin`). The
packages below it: ``data`` (scan, split, cache, training sets), ``train`` (model, loss, training,
prediction), ``influence`` (factors, the exact kernel, shards, self-influence), ``analysis``
(rankings, noise detection, reports, cross-version), ``plots``, ``stages`` (one function per
workflow rule: the only file I/O) and ``config`` (what workflow/rules/common.smk validates). Importing the
package itself loads no torch, so the workflow's parse step stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["TracIn"]


def __getattr__(name: str):
    if name == "TracIn":
        from tracinflow.tracin import TracIn

        return TracIn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
