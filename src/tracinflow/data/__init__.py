"""The data stages' domain: scan an ImageFolder root, split it, decode it, build a version's
training set (planted label noise, cleaning).

The manifest is the contract every later stage reads: one row per readable image with a stable
``idx`` (position in path order), its path relative to the dataset root, class, label, split,
sha256 and size. This package decodes the dataset's own image files; every other file is read and
written by :mod:`tracinflow.stages` (through the formats of :mod:`tracinflow.io`).
"""

from tracinflow._util.errors import InputError

SPLITS = ("train", "val", "test")


class DataError(InputError):
    """A problem with the images themselves, worded for the person who owns the folder."""
