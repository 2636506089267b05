"""Cleaning by a marks file: a CSV of training images marked mislabeled or fine (the explorer
page's download), read and checked by the build_train_set stage, written in tmp_path as a person
would hand it over."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tracinflow._util.files import write_parquet
from tracinflow.data import DataError
from tracinflow.data.train_set import apply_listed_cleaning
from tracinflow.stages.train import build_train_set, read_marks

HEADER = "idx,path,label,mark"


def _manifest() -> pd.DataFrame:
    """idx 0..11: 0..7 train, 8..9 val, 10..11 test, in two classes."""
    idx = np.arange(12)
    label = idx % 2
    return pd.DataFrame(
        {
            "idx": idx,
            "path": [f"{'ab'[y]}/img_{i:02d}.png" for i, y in zip(idx, label, strict=True)],
            "class": ["ab"[y] for y in label],
            "label": label,
            "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2,
        }
    )


def _source_set() -> pd.DataFrame:
    """The train rows 0..7; idx 1 and 4 carry a planted flip, idx 6 is already dropped."""
    original = np.arange(8) % 2
    label = original.copy()
    label[[1, 4]] = 1 - label[[1, 4]]
    return pd.DataFrame(
        {
            "idx": np.arange(8),
            "label": label,
            "original_label": original,
            "noisy": label != original,
            "dropped": np.arange(8) == 6,
        }
    )


def _row(idx: int, mark: str) -> str:
    manifest = _manifest().set_index("idx")
    return f"{idx},{manifest.at[idx, 'path']},{manifest.at[idx, 'class']},{mark}"


@pytest.fixture
def run(tmp_path):
    """Write the source version's files and a marks file, then call the build_train_set stage as
    the rule calls it; returns (train_set, log lines, output path)."""
    inputs = {
        "manifest": tmp_path / "manifest.parquet",
        "source_train_set": tmp_path / "source" / "train_set.parquet",
        "source_predictions": tmp_path / "source" / "train_predictions.parquet",
        "marks": tmp_path / "marks.csv",
    }
    write_parquet(inputs["manifest"], _manifest())
    write_parquet(inputs["source_train_set"], _source_set())
    # the source model predicts the manifest's label everywhere but idx 3 (says 0, truly 1)
    pred = np.arange(8) % 2
    pred[3] = 0
    write_parquet(inputs["source_predictions"], pd.DataFrame({"idx": np.arange(8), "pred": pred}))
    output = tmp_path / "cleaned" / "train_set.parquet"

    def call(text: str, action: str = "drop", encoding: str = "utf-8"):
        inputs["marks"].write_bytes(text.encode(encoding))
        params = {
            "label_noise": None,
            "clean": {"from": "noisy", "list": str(inputs["marks"]), "action": action},
        }
        lines = []
        train_set = build_train_set(inputs, {"train_set": output}, params, log=lines.append)
        return train_set, lines, output

    return call


def lines(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def test_a_marks_file_drops_exactly_the_images_marked_mislabeled(run):
    text = lines(_row(1, "mislabeled"), _row(2, "fine"), _row(4, "mislabeled"), _row(5, "fine"))
    train_set, log, output = run(text)
    written = pd.read_parquet(output)
    pd.testing.assert_frame_equal(written, train_set)
    assert set(written.loc[written["dropped"], "idx"]) == {1, 4, 6}  # 6 was dropped already
    source = _source_set()
    pd.testing.assert_frame_equal(
        written.drop(columns="dropped"), source.drop(columns="dropped")
    )  # labels untouched
    assert log == [
        f"cleaning noisy by the list {output.parent.parent / 'marks.csv'}: drop 2 images marked "
        "mislabeled, keep 2 marked fine; 2 of them carry a planted flip (of 2 planted)"
    ]


def test_relabel_sets_the_source_models_prediction_on_the_marked_images_only(run):
    train_set, _, _ = run(
        lines(_row(1, "mislabeled"), _row(3, "mislabeled"), _row(4, "fine")), "relabel"
    )
    row = train_set.set_index("idx")
    # idx 1: a planted flip, the model says the true class: restored
    assert (row.at[1, "label"], bool(row.at[1, "noisy"])) == (1, False)
    # idx 3: clean, the model says 0: relabelled to it, now differs from the manifest
    assert (row.at[3, "label"], bool(row.at[3, "noisy"])) == (0, True)
    # idx 4 is marked fine: its planted flip stays; nothing is dropped by relabelling
    assert bool(row.at[4, "noisy"])
    assert set(train_set.loc[train_set["dropped"], "idx"]) == {6}


def test_the_file_as_a_browser_or_a_spreadsheet_writes_it_is_accepted(run):
    """A byte-order mark, CRLF line ends, quoted cells, an extra column, blank lines, spaces."""
    text = (
        '\ufeffidx,path,label,mark,note\r\n"1","b/img_01.png",b, mislabeled ,"looks, odd"\r\n'
        "\r\n2,a/img_02.png,a,fine,\r\n"
    )
    train_set, log, _ = run(text)
    assert set(train_set.loc[train_set["dropped"], "idx"]) == {1, 6}
    assert "drop 1 images marked mislabeled, keep 1 marked fine" in log[0]


def test_idx_and_mark_alone_are_enough_and_the_same_mark_twice_counts_once(run):
    train_set, log, _ = run(lines("5,mislabeled", "5,mislabeled", "0,fine", header="idx,mark"))
    assert set(train_set.loc[train_set["dropped"], "idx"]) == {5, 6}
    assert "drop 1 images marked mislabeled" in log[0]
    assert "0 of them carry a planted flip" in log[0]


def test_read_marks_gives_the_acted_and_the_kept_idx_in_file_order(tmp_path):
    path = tmp_path / "marks.csv"
    path.write_text(lines(_row(4, "mislabeled"), _row(0, "fine"), _row(1, "mislabeled")))
    marked = read_marks(path, _source_set(), _manifest(), source="noisy")
    np.testing.assert_array_equal(marked.acted, [4, 1])
    np.testing.assert_array_equal(marked.fine, [0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty; a marks file starts with the header idx,path,label,mark"),
        (lines("1,b/img_01.png,b", header="idx,path,label"), "lacks the column mark"),
        (lines("b/img_01.png,mislabeled", header="path,mark"), "lacks the column idx"),
        (lines(_row(1, "wrong")), "line 2 (idx 1): mark 'wrong' is neither 'mislabeled' nor"),
        (
            lines(_row(1, "mislabeled"), "x,b/img_01.png,b,fine"),
            "line 3: idx 'x' is not an integer",
        ),
        (lines(_row(1, "mislabeled"), "1,b/img_01.png,mislabeled"), "line 3: 3 fields where the"),
        (
            lines(_row(1, "mislabeled"), "99,z.png,a,fine"),
            "line 3 (idx 99): no image of the manifest",
        ),
        (
            lines(_row(8, "mislabeled")),
            "line 2 (idx 8): a val image, not in version noisy's training",
        ),
        (lines(_row(11, "fine"), _row(1, "mislabeled")), "(idx 11): a test image"),
        (lines(_row(6, "mislabeled")), "line 2 (idx 6): already dropped from version noisy's"),
        (
            lines(_row(1, "fine"), "2,a/img_03.png,a,mislabeled"),
            "line 3 (idx 2): path 'a/img_03.png' is not this idx's path in the manifest "
            "('a/img_02.png'): the list was made for another dataset or split",
        ),
        (
            lines(_row(1, "mislabeled"), _row(2, "fine"), _row(1, "fine")),
            "idx 1 is marked 'mislabeled' on line 2 and 'fine' on line 4",
        ),
        (
            lines(_row(1, "fine"), _row(2, "fine")),
            "no row is marked 'mislabeled' (2 marked 'fine')",
        ),
        (lines(), "no row is marked 'mislabeled'"),
    ],
)
def test_a_bad_marks_file_is_refused_naming_the_file_and_the_row_and_writes_nothing(
    run, text, message
):
    with pytest.raises(DataError) as caught:
        run(text)
    assert message in str(caught.value)
    assert "marks.csv" in str(caught.value)


def test_a_refused_marks_file_leaves_no_output(run, tmp_path):
    with pytest.raises(DataError):
        run(lines(_row(1, "fine")))
    assert not (tmp_path / "cleaned" / "train_set.parquet").exists()


def test_a_marks_file_that_is_not_utf8_text_is_refused(run):
    with pytest.raises(DataError, match="not a CSV file of UTF-8 text"):
        run(lines(_row(1, "mislabeled")).replace("b/", "\u00e9/"), encoding="latin-1")


def test_listed_cleaning_refuses_an_idx_not_in_the_set_or_dropped():
    source = _source_set()
    with pytest.raises(KeyError, match="missing from the train set"):
        apply_listed_cleaning(source, [1, 9])
    with pytest.raises(ValueError, match="already dropped"):
        apply_listed_cleaning(source, [6])
    with pytest.raises(ValueError, match="predictions"):
        apply_listed_cleaning(source, [1], action="relabel")
    out = apply_listed_cleaning(source, [2, 2, 1])
    assert set(out.loc[out["dropped"], "idx"]) == {1, 2, 6}
    pd.testing.assert_frame_equal(source, _source_set())  # the input is left as it was
