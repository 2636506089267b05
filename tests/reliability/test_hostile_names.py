"""File and class names that are not plain: in the explorer page (real Chromium, the page the
workflow's explorer stage writes from real files) and in the markdown the workflow writes (rendered
by a real CommonMark renderer with raw HTML allowed, as a non-sanitising one would).

The page: a search for a name with ``&``, ``+``, ``%`` or ``#`` finds it, typed or in a link; a
malformed ``%`` in a link is searched as typed; a newline or tab in a name shows as ``\\n``, ``\\t``;
a ranking the version does not have (another version's link, a typo) falls back to the default and
says so, on a fresh load too. The markdown: a name with ``|``, ``<`` and a backtick is one cell that
reads as the name, and creates no element.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM, pattern_image, save
from markdown_it import MarkdownIt

from tracinflow.analysis.cross_version_text import summary_markdown
from tracinflow.analysis.markdown import markdown_table, markdown_text
from tracinflow.data.scan import scan_image_folder
from tracinflow.stages.explorer import explorer

TEST_NAMES = [
    "Tom & Jerry.png", "C++.png", "100%.png", "sharp #1.png", "a+b=c.png",
    "line\nbreak.png", "tab\there.png", "<img src=x onerror=alert(1)>.png", "plain.png",
]  # fmt: skip
TRAIN_NAMES = [f"train {i}.png" for i in range(6)]


# --- the explorer page ---------------------------------------------------------------------------


def hostile_explorer(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """An explorer folder written by the stage from a folder of hostile names: the test images
    are TEST_NAMES (in cat/ and dog/ alternately), the training images TRAIN_NAMES; the version's
    rankings are loss and self_influence (no cleanlab)."""
    root = tmp_path / "images"
    for i, name in enumerate(TEST_NAMES + TRAIN_NAMES):
        save(pattern_image(i), root / ("cat", "dog")[i % 2] / name)
    images, _ = scan_image_folder(root, [".png"])
    images["split"] = np.where(
        images["path"].str.split("/").str[1].isin(TRAIN_NAMES), "train", "test"
    )
    manifest = images.drop(columns="folder")
    train = manifest[manifest["split"] == "train"]
    test = manifest[manifest["split"] == "test"]
    rng = np.random.default_rng(0)
    topk = pd.DataFrame(
        [(t, kind, r, j, sign * (10.0 - r)) for t in test["idx"]
         for kind, sign in (("proponent", 1), ("opponent", -1))
         for r, j in enumerate(train["idx"][:3], start=1)],
        columns=["test_idx", "kind", "rank", "train_idx", "influence"],
    )  # fmt: skip
    frames = {
        "manifest": manifest,
        "train_set": pd.DataFrame({"idx": train["idx"], "label": train["label"],
                                   "original_label": train["label"], "noisy": False,
                                   "dropped": False}),
        "train": pd.DataFrame({"idx": train["idx"], "label": train["label"], "pred": train["label"],
                               "confidence": 0.8}),
        "test": pd.DataFrame({"idx": test["idx"], "label": test["label"], "pred": 1 - test["label"],
                              "confidence": rng.random(len(test))}),
        "topk": topk,
        "suspicion": pd.DataFrame({"train_idx": train["idx"], "loss": rng.random(len(train)),
                                   "self_influence": rng.random(len(train))}),
    }  # fmt: skip
    inputs = {"root": root, "compare_test": [], "compare_topk": []}
    for name, frame in frames.items():
        inputs[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(inputs[name])
    out = tmp_path / "explorer"
    params = {"version": "v", "ranking": "loss", "top": 3, "thumbnail_px": 32, "planted": False,
              "compare": []}  # fmt: skip
    explorer(inputs, {"explorer": out}, params, log=lambda line: None)
    return out / "index.html", manifest


@pytest.fixture
def page_of_names(tmp_path, page):
    if CHROMIUM is None:
        pytest.skip("the browser tests need Debian's chromium (apt-get install chromium)")
    index, manifest = hostile_explorer(tmp_path)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.errors, page.manifest = errors, manifest.set_index("idx")["path"]

    def open_at(fragment: str):
        """A fresh load of the page at ``#fragment`` (a link followed from elsewhere)."""
        page.goto("about:blank")
        page.goto(f"{index.as_uri()}#{fragment}")
        page.wait_for_selector("body[data-ready='1']")

    page.open_at = open_at
    return page


def shown_names(page) -> list[str]:
    """The file names of the test images the grid shows."""
    page.wait_for_selector("#test-grid", state="attached")
    idx = page.locator("#test-grid a.card").evaluate_all("cards => cards.map(c => c.dataset.idx)")
    return sorted(page.manifest[int(i)].split("/", 1)[1] for i in idx)


@pytest.mark.parametrize(
    "typed, found",
    [("Tom & Jerry", ["Tom & Jerry.png"]), ("C++", ["C++.png"]), ("100%", ["100%.png"]),
     ("#1", ["sharp #1.png"]), ("+b=", ["a+b=c.png"]), ("&", ["Tom & Jerry.png"])],
)  # fmt: skip
def test_a_search_for_a_name_with_and_plus_percent_or_hash_finds_it(page_of_names, typed, found):
    page = page_of_names
    page.open_at("test")
    page.fill("#search", typed)
    page.press("#search", "Enter")
    page.wait_for_function("location.hash.includes('q=')")
    assert shown_names(page) == found
    # the link the search made opens the same grid on a fresh load
    page.open_at(page.evaluate("location.hash").removeprefix("#"))
    assert page.input_value("#search") == typed and shown_names(page) == found
    assert page.errors == []


def test_a_malformed_percent_in_a_link_is_searched_as_typed(page_of_names):
    page = page_of_names
    page.open_at("test?q=100%")
    assert page.input_value("#search") == "100%" and shown_names(page) == ["100%.png"]
    page.open_at("test?q=%zz")  # not an escape at all: nothing matches, nothing throws
    assert shown_names(page) == []
    assert page.errors == []


def test_a_newline_or_tab_in_a_file_name_shows_as_an_escape(page_of_names):
    page = page_of_names
    for name, shown in (
        ("line\nbreak.png", "line\\nbreak.png"),
        ("tab\there.png", "tab\\there.png"),
    ):
        idx = int(page.manifest[page.manifest.str.endswith(name)].index[0])
        page.open_at(f"test/{idx}")
        assert page.inner_text("#test-file").endswith(shown)
    page.open_at("test")
    page.fill("#search", "line\\n")  # the name as the page shows it
    page.press("#search", "Enter")
    page.wait_for_function("location.hash.includes('q=')")
    assert shown_names(page) == ["line\nbreak.png"]
    assert page.errors == []


def test_html_in_a_file_name_is_text_on_the_page(page_of_names):
    page = page_of_names
    page.open_at("test?q=onerror")
    assert shown_names(page) == ["<img src=x onerror=alert(1)>.png"]
    assert page.locator("#main img:not(.thumb)").count() == 0  # no element made from the name
    assert page.errors == []


@pytest.mark.parametrize("fragment", ["suspects?ranking=cleanlab", "suspects?ranking=los",
                                      "train/{train}?ranking=cleanlab"])  # fmt: skip
def test_an_unknown_ranking_in_a_link_falls_back_to_the_default_and_says_so(
    page_of_names, fragment
):
    page = page_of_names
    train = int(page.manifest[page.manifest.str.contains("train 0")].index[0])
    page.open_at(fragment.format(train=train))
    asked = fragment.split("ranking=")[1]
    notice = page.inner_text("#ranking-notice")
    assert f'no ranking "{asked}"' in notice and "showing loss" in notice
    if fragment.startswith("suspects"):
        assert page.locator("#suspect-grid .card").count() == len(TRAIN_NAMES)
        assert page.input_value("#ranking") == "loss"
    else:
        assert page.locator("#rankings tr td.current").inner_text().startswith("loss")
    assert page.errors == []


# --- the markdown the workflow writes -------------------------------------------------------------

HOSTILE = "a|b <img src=x onerror=alert(1)> `code` *em* _u_ [l](http://x) &amp; \\ new\nline"


def rendered_cells(markdown: str) -> tuple[str, list[list[str]]]:
    """The HTML of ``markdown`` rendered by markdown-it (CommonMark with GFM tables, raw HTML
    allowed) and the text of every table cell, by row."""
    page = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in cells])
    return page, rows


def test_a_name_with_a_pipe_a_tag_and_a_backtick_is_one_cell_that_reads_as_the_name():
    frame = pd.DataFrame({"path": [HOSTILE, "plain.png"], "class": ["x`y|z", "<b>"], "n": [1, 2]})
    text = markdown_table(frame)
    assert len(text.splitlines()) == 4  # header, rule, two rows: the newline did not end a row
    page, rows = rendered_cells(text)
    assert rows[1:] == [[HOSTILE.replace("\n", "\\n"), "x`y|z", "1"], ["plain.png", "<b>", "2"]]
    for element in ("<img", "<b>", "<code", "<em", "<a ", "<script"):
        assert element not in page, element


def test_the_cross_version_summary_escapes_version_names_in_its_text_and_tables():
    name = "v<script>alert(1)</script>|`x`"
    performance = pd.DataFrame({"version": [name], "test_images": [3], "test_accuracy": [0.5]})
    empty = pd.DataFrame({"version": []})
    files = {key: f"{key}.csv" for key in ("performance", "cleaning", "persistent", "influencers",
             "candidates", "statistics", "pairs", "registry", "performance_plot",
             "statistics_plot")}  # fmt: skip
    text = summary_markdown(performance=performance, persistent=empty, influencers=empty,
                            candidates=empty, statistics=empty, pairs=empty, min_versions=1,
                            top=5, files=files)  # fmt: skip
    page, rows = rendered_cells(text)
    assert "<script" not in page and "<code>x</code>" not in page
    assert [name, "3", "0.5"] in rows
    assert f"Best by test accuracy: {name} (0.5)." in html.unescape(re.sub(r"<[^>]+>", "", page))


def test_markdown_text_keeps_plain_names_readable():
    assert markdown_text("self_influence") == "self_influence"
    assert markdown_text("img_01.png") == "img_01.png"
    assert markdown_text("_lead") == "\\_lead"
