"""The explorer page of the tiny workflow run, in a real browser: headless Chromium (Debian's
`chromium`) driven by Playwright, opening index.html from the file system as a user would.

What a person relies on: the page loads without errors; a mispredicted test image shows exactly
the proponents and opponents of top_k_influences.parquet; the filters select the images they say;
a training image's page tells its label, flip and ranks as the workflow's files do; keys and deep
links work; and two images marked on the page download as a list that a cleaned version accepts,
dropping exactly those two.
"""

from __future__ import annotations

import csv
import shutil

import pandas as pd
import pytest
from conftest import CHROMIUM
from snakemake_runs import run_snakemake, write_config

from tracinflow._util.tables import descending_rank

pytestmark = pytest.mark.workflow

if CHROMIUM is None:
    pytest.skip(
        "the browser tests need Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )

VERSION = "v2"  # planted noise (v3 is cleaned from it)


@pytest.fixture
def explorer(tiny_workflow, page):
    """The page of VERSION opened in the browser, with every console error and page error
    collected (``page.errors``)."""
    errors = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    url = (tiny_workflow.workdir / "results" / VERSION / "explorer" / "index.html").as_uri()
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    page.errors, page.url_of = errors, lambda fragment: f"{url}#{fragment}"
    return page


def results(tiny_workflow, name):
    return pd.read_parquet(tiny_workflow.workdir / "results" / VERSION / name)


def grid_idx(page) -> list[int]:
    return [int(i) for i in page.locator("#test-grid a.card").evaluate_all(
        "cards => cards.map(card => card.dataset.idx)")]  # fmt: skip


def test_the_page_loads_with_every_thumbnail_and_no_console_error(explorer, tiny_workflow):
    test = results(tiny_workflow, "predictions/test.parquet")
    assert explorer.inner_text("#grid-count") == f"{len(test)} of {len(test)} test images"
    images = explorer.locator("#test-grid img")
    images.last.scroll_into_view_if_needed()
    explorer.wait_for_function(
        "[...document.querySelectorAll('#test-grid img')].every(i => i.complete)"
    )
    widths = images.evaluate_all("images => images.map(image => image.naturalWidth)")
    assert len(widths) == len(test) and min(widths) > 0
    assert explorer.errors == []


def test_a_mispredicted_test_image_shows_the_top_k_tables_proponents_and_opponents(
    explorer, tiny_workflow
):
    test = results(tiny_workflow, "predictions/test.parquet")
    topk = results(tiny_workflow, "influence/top_k_influences.parquet")
    explorer.select_option("select[name=outcome]", "wrong")
    explorer.wait_for_selector("#test-grid a.card[data-wrong='true']")
    card = explorer.locator("#test-grid a.card").first
    test_idx = int(card.get_attribute("data-idx"))
    assert (
        test.set_index("idx").loc[test_idx, "pred"] != test.set_index("idx").loc[test_idx, "label"]
    )
    card.click()
    explorer.wait_for_selector(f"#test-detail[data-idx='{test_idx}']")
    for kind in ("proponent", "opponent"):
        expected = topk[(topk["test_idx"] == test_idx) & (topk["kind"] == kind)].sort_values("rank")
        shown = explorer.locator(f"#{kind}s a.influencer")
        assert shown.count() == len(expected) > 0
        for i, row in enumerate(expected.itertuples()):
            entry = shown.nth(i)
            assert int(entry.get_attribute("data-train-idx")) == row.train_idx
            assert float(entry.get_attribute("data-influence")) == row.influence  # exactly
            assert float(entry.locator(".score").inner_text()) == pytest.approx(
                row.influence, rel=1e-3
            )
    first = explorer.locator("#proponents a.influencer").first
    train_idx = first.get_attribute("data-train-idx")
    first.click()
    explorer.wait_for_selector(f"#train-detail[data-idx='{train_idx}']")
    assert explorer.errors == []


def test_the_filters_select_the_images_they_say(explorer, tiny_workflow):
    test = results(tiny_workflow, "predictions/test.parquet").sort_values("idx")
    true_class, predicted = int(test["label"].mode()[0]), int(test["pred"].mode()[0])
    explorer.select_option("select[name=true]", str(true_class))
    explorer.wait_for_function(f"location.hash.includes('true={true_class}')")
    assert sorted(grid_idx(explorer)) == test.loc[test["label"] == true_class, "idx"].tolist()
    explorer.select_option("select[name=pred]", str(predicted))
    explorer.wait_for_function(f"location.hash.includes('pred={predicted}')")
    both = (test["label"] == true_class) & (test["pred"] == predicted)
    assert sorted(grid_idx(explorer)) == test.loc[both, "idx"].tolist()
    explorer.goto(explorer.url_of("test?outcome=right&sort=confidence-asc"))
    explorer.wait_for_selector("#test-grid")
    right = test[test["label"] == test["pred"]].sort_values(["confidence", "idx"])
    assert grid_idx(explorer) == right["idx"].tolist()
    # The search finds an image by its index or by any part of its path, so "15" also finds
    # ".../0151.png": the expected images are the right ones whose index or path says it.
    # (the tiny model may get only a few test images right, or none)
    some = int((right if len(right) else test)["idx"].iloc[0])
    explorer.fill("#search", str(some))
    explorer.press("#search", "Enter")
    explorer.wait_for_function(f"location.hash.includes('q={some}')")
    paths = pd.read_parquet(
        tiny_workflow.workdir / "results/data/digits/manifest.parquet"
    ).set_index("idx")["path"]
    found = right[
        (right["idx"] == some) | right["idx"].map(lambda idx: str(some) in paths[idx].lower())
    ]
    assert grid_idx(explorer) == found["idx"].tolist()
    assert explorer.errors == []


def test_a_training_image_shows_its_label_flip_and_rank_under_every_ranking(
    explorer, tiny_workflow
):
    train_set = results(tiny_workflow, "train_set.parquet").set_index("idx")
    suspicion = results(tiny_workflow, "rankings/suspicion_scores.parquet")
    flipped = int(train_set.index[train_set["noisy"]][0])
    explorer.goto(explorer.url_of(f"train/{flipped}"))
    explorer.wait_for_selector(f"#train-detail[data-idx='{flipped}']")
    assert "flipped from" in explorer.inner_text("#train-flipped")
    ranks = descending_rank(suspicion["loss"].to_numpy(), suspicion["train_idx"].to_numpy())
    rank = int(ranks[suspicion["train_idx"].to_numpy() == flipped][0])
    assert explorer.inner_text("#rankings tr[data-ranking='loss'] td:last-child") == (
        f"{rank} of {len(suspicion)}"
    )
    kept = int(train_set.index[~train_set["noisy"]][0])
    explorer.goto(explorer.url_of(f"train/{kept}"))
    explorer.wait_for_selector(f"#train-detail[data-idx='{kept}']")
    assert explorer.inner_text("#train-flipped") == "label not flipped"
    assert explorer.errors == []


def test_keys_and_deep_links_move_between_images(explorer, tiny_workflow):
    test = results(tiny_workflow, "predictions/test.parquet").sort_values("idx")
    first, second = (int(i) for i in test["idx"].iloc[:2])
    explorer.goto(explorer.url_of(f"test/{first}?sort=idx"))
    explorer.wait_for_selector(f"#test-detail[data-idx='{first}']")
    explorer.keyboard.press("ArrowRight")
    explorer.wait_for_selector(f"#test-detail[data-idx='{second}']")
    explorer.keyboard.press("Escape")
    explorer.wait_for_selector("#test-grid")
    explorer.goto(explorer.url_of(f"test/{first}"))
    explorer.wait_for_selector(f"#test-detail[data-idx='{first}']")
    assert explorer.locator("#across-versions").count() == 0  # v2 is built from no version
    # v3 is cleaned from v2: its page shows both versions' prediction of each test image
    v3 = (tiny_workflow.workdir / "results/v3/explorer/index.html").as_uri()
    explorer.goto(f"{v3}#test/{first}")
    explorer.wait_for_selector("#across-versions")
    classes = explorer.evaluate("window.TRACINFLOW.classes")
    rows = explorer.locator("#across-versions tr[data-version]")
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.version)") == ["v2", "v3"]
    for version in ("v2", "v3"):
        predictions = pd.read_parquet(
            tiny_workflow.workdir / "results" / version / "predictions/test.parquet"
        ).set_index("idx")
        cell = explorer.locator(f"#across-versions tr[data-version='{version}'] td").nth(1)
        assert cell.inner_text() == classes[int(predictions.loc[first, "pred"])]
    assert explorer.errors == []


def test_two_images_marked_on_the_page_are_what_a_cleaned_version_drops(
    explorer, tiny_workflow, tmp_path
):
    explorer.goto(explorer.url_of("suspects"))
    explorer.wait_for_selector("#suspect-grid")
    cards = explorer.locator("#suspect-grid .card")
    marked = [int(cards.nth(i).get_attribute("data-idx")) for i in (0, 2)]
    fine = int(cards.nth(1).get_attribute("data-idx"))
    cards.nth(0).locator("button[data-mark=mislabeled]").click()
    explorer.locator("#suspect-grid .card").nth(2).locator("button[data-mark=mislabeled]").click()
    explorer.locator("#suspect-grid .card").nth(1).locator("button[data-mark=fine]").click()
    explorer.goto(explorer.url_of("marks"))
    with explorer.expect_download() as download:
        explorer.click("#download-marks")
    marks = tmp_path / "marks.csv"
    download.value.save_as(marks)
    rows = list(csv.DictReader(marks.open()))
    assert {int(r["idx"]): r["mark"] for r in rows} == {
        **{idx: "mislabeled" for idx in marked}, fine: "fine",
    }  # fmt: skip
    manifest = pd.read_parquet(tiny_workflow.workdir / "results/data/digits/manifest.parquet")
    paths = manifest.set_index("idx")["path"]
    assert all(r["path"] == paths[int(r["idx"])] for r in rows)

    # The list, as downloaded, in a version cleaned from VERSION (in a copy of the finished tree)
    tree = tmp_path / "tree"
    shutil.copytree(tiny_workflow.workdir, tree, symlinks=True)
    config = {**tiny_workflow.config}
    config["versions"] = {**config["versions"],
                          "marked": {"clean": {"from": VERSION, "list": str(marks), "action": "drop"}}}  # fmt: skip
    marked_config = write_config(tree, config, "marked.yaml")
    target = "results/marked/train_set.parquet"
    run_snakemake(tree, "--cores", "1", target, "--configfile", str(marked_config))
    source = pd.read_parquet(tree / "results" / VERSION / "train_set.parquet")
    cleaned = pd.read_parquet(tree / target)
    newly = set(cleaned.loc[cleaned["dropped"], "idx"]) - set(source.loc[source["dropped"], "idx"])
    assert newly == set(marked)
    assert explorer.errors == []
