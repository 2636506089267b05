"""The one kind of error a stage reports without a traceback."""

from __future__ import annotations


class InputError(ValueError):
    """A problem with what the user gave the workflow (images, config, a checkpoint file), whose
    message names the file or key and the fix. A rule's script logs it without a traceback, and
    also prints it where snakemake's console shows it (``tracinflow._util.progress.start_log``)."""
