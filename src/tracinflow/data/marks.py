"""A marks file: training images a person marked ``mislabeled`` or ``fine`` (the explorer page's
download), which a version's ``clean: {from: <version>, list: <file>}`` acts on.

The file is a CSV with a header row and the columns ``idx, path, label, mark``; only ``idx`` and
``mark`` are required, extra columns are ignored. ``idx`` is the manifest idx of a training image of
the source version; ``path``, where given, must be that idx's manifest path (so a list made for
another dataset or split is refused); ``label`` is informational. Rows marked ``mislabeled`` are
acted on, rows marked ``fine`` are kept untouched. The stage reads the file
(:func:`tracinflow.stages.train.read_marks`); these functions check its rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from tracinflow.data import DataError

MARK_COLUMNS = ("idx", "path", "label", "mark")
REQUIRED_MARK_COLUMNS = ("idx", "mark")
MARKS = ("mislabeled", "fine")
HEADER = ",".join(MARK_COLUMNS)


class MarkedImages(NamedTuple):
    """The idx a marks file acts on (marked ``mislabeled``) and keeps (``fine``), each once, in
    the order of the file."""

    acted: np.ndarray
    fine: np.ndarray


def marks_table(lines, what: str) -> pd.DataFrame:
    """The rows of a marks file as a table of stripped strings: ``line`` (the row's line in the
    file, the header is line 1) and whichever of ``MARK_COLUMNS`` the header names.

    ``lines`` is ``(line number, cells)`` of every row, the header first (what ``csv.reader``
    gives); rows of empty cells are skipped. ``what`` names the file in the errors."""
    lines = [(number, [cell.strip() for cell in cells]) for number, cells in lines]
    lines = [(number, cells) for number, cells in lines if any(cells)]
    if not lines:
        raise DataError(f"{what}: the file is empty; a marks file starts with the header {HEADER}")
    header = lines[0][1]
    missing = [column for column in REQUIRED_MARK_COLUMNS if column not in header]
    if missing:
        raise DataError(
            f"{what}: the header ({','.join(header)}) lacks the column "
            f"{' and '.join(missing)}; a marks file starts with the header {HEADER} (idx and mark "
            "are required): download it again from the explorer page, or add the column"
        )
    rows = []
    for number, cells in lines[1:]:
        if len(cells) != len(header):
            raise DataError(
                f"{what}, line {number}: {len(cells)} fields where the header has "
                f"{len(header)}; give every row the header's columns (a comma inside a path needs "
                "quotes)"
            )
        rows.append([number, *(cells[header.index(c)] for c in MARK_COLUMNS if c in header)])
    return pd.DataFrame(rows, columns=["line", *(c for c in MARK_COLUMNS if c in header)])


def _where(what: str, row) -> str:
    return f"{what}, line {row.line} (idx {row.idx})"


def _with_int_idx(marks: pd.DataFrame, what: str) -> pd.DataFrame:
    """``marks`` with ``idx`` as integers, every mark checked."""
    numbers = []
    for row in marks.itertuples(index=False):
        if row.mark not in MARKS:
            raise DataError(
                f"{_where(what, row)}: mark {row.mark!r} is neither 'mislabeled' nor 'fine'; write "
                "one of the two, or delete the row"
            )
        try:
            numbers.append(int(row.idx))
        except ValueError:
            raise DataError(
                f"{what}, line {row.line}: idx {row.idx!r} is not an integer; idx is the "
                "manifest idx of a training image, as the explorer page writes it"
            ) from None
    return marks.assign(idx=np.asarray(numbers, dtype=np.int64))


def _check_training_images(marks, train_set, manifest, what: str, source: str) -> None:
    """Every marked idx is a training image of the source version that it trains on, and the path
    given (if any) is the manifest's."""
    by_idx = manifest.set_index("idx")
    in_set = train_set.set_index("idx")["dropped"]
    for row in marks.itertuples(index=False):
        where = _where(what, row)
        if row.idx not in by_idx.index:
            raise DataError(
                f"{where}: no image of the manifest has this idx ({len(manifest)} images): the "
                "list was made for another dataset; make it again from this dataset's explorer page"
            )
        split = by_idx.at[row.idx, "split"] if "split" in by_idx.columns else "train"
        if split != "train" or row.idx not in in_set.index:
            raise DataError(
                f"{where}: a {split} image, not in version {source}'s training set; only training "
                "images can be cleaned: delete the row"
            )
        if in_set.at[row.idx]:
            raise DataError(
                f"{where}: already dropped from version {source}'s training set; delete the row, "
                "or clean a version that trains on it"
            )
        path = getattr(row, "path", "")
        if path and path != str(by_idx.at[row.idx, "path"]):
            raise DataError(
                f"{where}: path {path!r} is not this idx's path in the manifest "
                f"({by_idx.at[row.idx, 'path']!r}): the list was made for another dataset or "
                "split; make it again from this dataset's explorer page"
            )


def _once_each(marks: pd.DataFrame, what: str) -> pd.DataFrame:
    """The first row of each idx; an idx marked both ways is an error."""
    for idx, rows in marks.groupby("idx", sort=False):
        if rows["mark"].nunique() > 1:
            lines = {mark: int(rows.loc[rows["mark"] == mark, "line"].iloc[0]) for mark in MARKS}
            raise DataError(
                f"{what}: idx {idx} is marked 'mislabeled' on line {lines['mislabeled']} and "
                f"'fine' on line {lines['fine']}; keep the one you mean and delete the other"
            )
    return marks.drop_duplicates("idx", keep="first")


def marked_images(
    marks: pd.DataFrame,
    train_set: pd.DataFrame,
    manifest: pd.DataFrame,
    *,
    what: str = "marks file",
    source: str = "the source",
) -> MarkedImages:
    """The idx a marks table (:func:`marks_table`) acts on and keeps, checked against the source
    version's training set (``train_set``: ``idx, dropped``) and the manifest (``idx, path``, and
    ``split`` where known).

    Every row needs a mark (``mislabeled`` or ``fine``) and the integer idx of an image the source
    trains on (in its training set, not dropped); a ``path``, where given, must be the manifest's.
    An idx listed twice with the same mark counts once; with both marks it is an error, and so is a
    file with no row marked ``mislabeled``. Errors name ``what`` (the file), the line and the idx.
    """
    marks = _with_int_idx(marks, what)
    _check_training_images(marks, train_set, manifest, what, source)
    marks = _once_each(marks, what)
    acted = marks.loc[marks["mark"] == "mislabeled", "idx"].to_numpy(np.int64)
    if not len(acted):
        raise DataError(
            f"{what}: no row is marked 'mislabeled' ({len(marks)} marked 'fine'), so there is "
            "nothing to clean; mark at least one image mislabeled, or remove the version's `clean`"
        )
    return MarkedImages(acted, marks.loc[marks["mark"] == "fine", "idx"].to_numpy(np.int64))
