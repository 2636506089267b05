"""Dashboards and galleries: real image files and report tables on disk, real PNGs read back."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tracinflow._util.files import save_figure, write_parquet
from tracinflow.data import DataError
from tracinflow.data.images import Thumbnails, load_thumbnail
from tracinflow.plots.dashboards import (
    plot_class_influence_heatmap,
    plot_influence_distributions,
    plot_self_influence_distribution,
    plot_top_influencers,
)
from tracinflow.plots.figure import DPI
from tracinflow.plots.galleries import misprediction_gallery, suspects_gallery
from tracinflow.stages.reports import report_galleries, report_plots

CLASSES = ["cat", "dog", "frog"]
# Solid colours planted in the image files; none of them is a matplotlib default colour.
TEST_RGB = (12, 200, 77)
PROP_RGB = (240, 20, 200)
OPP_RGB = (20, 220, 230)
GRAY = 90  # a mode "L" training image
MISSING_RGB = (200, 200, 200)  # plots.MISSING_RGB, spelled out so a change is noticed
SUSPECT_RED = (218, 61, 62)  # "#d62728" at alpha 0.9 on white


def png(path) -> np.ndarray:
    """Decode a written PNG fully (catches truncation) and return its RGB pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 3_000
    assert not list(path.parent.glob(".*.tmp"))
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB"))


def drawn(figure, path):
    """A figure saved as the stages save it; returns the path."""
    return save_figure(figure, path)


def size_of(pixels: np.ndarray) -> tuple[int, int]:
    return pixels.shape[1], pixels.shape[0]


def px(inches: float) -> int:
    return round(inches * DPI)


def colour_mask(pixels: np.ndarray, rgb, tol: int = 3) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.asarray(rgb)) <= tol).all(-1)


# --- a tiny dataset and its report tables ---------------------------------------------------------


def solid(path, rgb, size, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path)
    return path


@pytest.fixture
def dataset(tmp_path):
    """Files under ``root``; manifest, predictions and report tables under ``results``.

    Test images 100 (cat, predicted dog, 0.9), 101 (dog, predicted frog, 0.6), 102 (frog,
    predicted cat, 0.95) are wrong, 103 (cat) right. Train 0-2 are magenta (the proponents of 100),
    3 is gray-scale (L), 4 cyan (an opponent of 100), 5 is listed but missing, 6 is garbage bytes.
    """
    root = tmp_path / "data"
    files = {
        100: solid(root / "cat/t100.png", TEST_RGB, (60, 40)),
        101: solid(root / "dog/t101.png", (40, 40, 160), (30, 50)),
        102: solid(root / "frog/t102.jpg", (150, 90, 30), (45, 45)),
        103: solid(root / "cat/t103.png", (90, 160, 90), (32, 32)),
        0: solid(root / "cat/a0.png", PROP_RGB, (50, 30)),
        1: solid(root / "cat/a1.png", PROP_RGB, (20, 40)),
        2: solid(root / "dog/a2.png", PROP_RGB, (64, 64)),
        3: solid(root / "dog/a3.png", (GRAY, GRAY, GRAY), (40, 25), mode="L"),
        4: solid(root / "frog/a4.jpg", OPP_RGB, (33, 47)),
    }
    (root / "frog").mkdir(parents=True, exist_ok=True)
    (root / "frog/a6.jpg").write_bytes(b"this is not a JPEG at all")
    files[5] = root / "frog/a5.png"  # never written: missing
    files[6] = root / "frog/a6.jpg"
    labels = {100: 0, 101: 1, 102: 2, 103: 0, 0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
    manifest = pd.DataFrame(
        {
            "idx": list(files),
            "path": [str(p.relative_to(root)) for p in files.values()],
            "class": [CLASSES[labels[i]] for i in files],
            "label": [labels[i] for i in files],
            "split": ["test" if i >= 100 else "train" for i in files],
            # the bytes as they are (as the scan records them); none for the missing file
            "sha256": [
                hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
                for p in files.values()
            ],
        }
    )
    results = tmp_path / "results"
    reports = results / "reports"
    reports.mkdir(parents=True)
    write_parquet(results / "manifest.parquet", manifest)
    predictions = pd.DataFrame(
        {
            "idx": [100, 101, 102, 103],
            "label": [0, 1, 2, 0],
            "pred": [1, 2, 0, 0],
            "confidence": [0.9, 0.6, 0.95, 0.99],
            "loss": [2.0, 1.0, 3.0, 0.01],
            "probs": [[0.05, 0.9, 0.05], [0.2, 0.2, 0.6], [0.95, 0.0, 0.05], [0.99, 0.0, 0.01]],
        }
    )
    write_parquet(results / "test.parquet", predictions)

    # top-k for every test image: proponents positive, opponents negative
    topk_rows = []
    for t in (100, 101, 102, 103):
        for r, tr in enumerate((0, 1, 2, 3), start=1):
            topk_rows.append((t, "proponent", r, tr, 1.0 / r + t / 1000))
        for r, tr in enumerate((4, 5, 6), start=1):
            topk_rows.append((t, "opponent", r, tr, -0.5 / r))
    topk = pd.DataFrame(topk_rows, columns=["test_idx", "kind", "rank", "train_idx", "influence"])
    write_parquet(results / "topk.parquet", topk)

    wrong = {100: ("cat", "dog"), 101: ("dog", "frog"), 102: ("frog", "cat")}
    cross = topk[topk["test_idx"].isin(list(wrong))].copy()
    cross["test_true"] = cross["test_idx"].map(lambda t: wrong[t][0])
    cross["test_pred"] = cross["test_idx"].map(lambda t: wrong[t][1])
    cross["train_true"] = cross["train_idx"].map(lambda i: CLASSES[labels[i]])
    cross["train_pred"] = "dog"
    cross["same_error"] = (cross["train_true"] == cross["test_true"]) & (
        cross["test_pred"] == "dog"
    )
    # test 100 has 3 proponents (one gray-scale) and 2 opponents (cyan, missing): empty slots
    drop = (cross["test_idx"] == 100) & cross["train_idx"].isin([2, 6])
    cross = cross[~drop]
    cross = cross[
        [
            "test_idx", "test_true", "test_pred", "train_idx", "train_true", "train_pred",
            "influence", "rank", "kind", "same_error",
        ]
    ]  # fmt: skip
    cross.to_csv(reports / "misprediction_cross_analysis.csv", index=False)

    inspection = pd.DataFrame(
        {
            "rank": [1, 2, 3, 4, 5],
            "train_idx": [4, 5, 3, 0, 6],
            "ranking": "self_influence",
            "suspicion": [9.0, 5.0, 2.0, 0.5, 0.1],
            "self_influence": [900.0, 50.0, 2.0, 0.3, 0.05],
            "self_influence_rank": [1, 2, 3, 4, 5],
            "loss": [3.0, 2.0, 1.0, 0.5, 0.1],
            "loss_rank": [1, 2, 3, 4, 5],
            "true_label": ["frog", "frog", "dog", "cat", "frog"],
            "predicted_label": ["cat", "frog", "cat", "cat", "frog"],
            "confidence": [0.8, 0.7, 0.6, 0.9, 0.5],
            "opponent_count": [3, 3, 0, 0, 3],
            "proponent_count": [0, 0, 4, 4, 0],
            "same_error_count": [0, 0, 1, 1, 0],
            "image_path": [str(files[i].relative_to(root)) for i in (4, 5, 3, 0, 6)],
        }
    )
    inspection.to_csv(reports / "mislabeled_inspection_report.csv", index=False)

    influential = pd.DataFrame(
        {
            "train_idx": [0, 1, 2, 3, 6, 5, 4],
            "true_label": ["cat", "cat", "dog", "dog", "frog", "frog", "frog"],
            "predicted_label": ["cat", "cat", "dog", "cat", "frog", "frog", "cat"],
            "image_path": [str(files[i].relative_to(root)) for i in (0, 1, 2, 3, 6, 5, 4)],
            "appearances": 4,
            "proponent_count": [4, 4, 4, 4, 0, 0, 0],
            "opponent_count": [0, 0, 0, 0, 4, 4, 4],
            "influence_sum": [4.4, 2.4, 1.7, 1.4, -0.7, -1.0, -2.0],
        }
    )
    influential["influence_mean"] = influential["influence_sum"] / 4
    influential["proponent_sum"] = influential["influence_sum"].clip(lower=0)
    influential["opponent_sum"] = influential["influence_sum"].clip(upper=0)
    influential.to_csv(reports / "influential_samples.csv", index=False)

    class_influence = pd.DataFrame(
        {
            "train_class": CLASSES,
            "cat": [3.0, -1.0, 0.0],
            "dog": [0.5, 2.0, -2.5],
            "frog": [0, 1, 1],
        }
    )
    class_influence.to_csv(reports / "class_influence.csv", index=False)
    return {"root": root, "results": results, "reports": reports, "files": files}


# --- dashboards ----------------------------------------------------------------------------------


def test_report_plots_writes_the_four_dashboards(dataset):
    out = dataset["results"] / "reports" / "dashboards"
    messages = []
    reports, results = dataset["reports"], dataset["results"]
    inputs = {
        "manifest": results / "manifest.parquet",
        "test": results / "test.parquet",
        "topk": results / "topk.parquet",
        "inspection": reports / "mislabeled_inspection_report.csv",
        "influential": reports / "influential_samples.csv",
        "class_influence": reports / "class_influence.csv",
    }
    # the report_plots rule's outputs, by the names the rule gives them
    written = {
        "distributions": out / "influence_distributions.png",
        "top_influencers": out / "top_influencers.png",
        "heatmap": out / "class_influence_heatmap.png",
        "self_influence": out / "self_influence_distribution.png",
    }
    report_plots(inputs, written, {"suspects": 3, "top_n": 10}, log=messages.append)
    assert sorted(p.name for p in out.iterdir()) == [
        "class_influence_heatmap.png",
        "influence_distributions.png",
        "self_influence_distribution.png",
        "top_influencers.png",
    ]
    assert len(messages) == 4
    assert all(any(str(path) in m for m in messages) for path in written.values())
    # 3 classes: 8 x 6 in; 7 bars: 10 x max(1.6 + 0.28 * 7 -> 3.75, 3.5); heat map (6 + 1.5) x 6
    expected = {
        "distributions": (px(8), px(6)),
        "top_influencers": (px(10), px(3.75)),
        "heatmap": (px(7.5), px(6)),
        "self_influence": (px(9), px(5)),
    }
    for name, path in written.items():
        assert size_of(png(path)) == expected[name], name


def test_influence_distributions_draw_both_kinds(tmp_path):
    topk = pd.DataFrame(
        {
            "test_idx": [1, 1, 2, 2, 3, 3],
            "kind": ["proponent", "opponent"] * 3,
            "rank": 1,
            "train_idx": [10, 11, 10, 12, 13, 11],
            "influence": [2.0, -1.0, 1.5, -0.5, 3.0, -2.0],
        }
    )
    labels = pd.Series({1: 0, 2: 0, 3: 1})
    both = png(
        drawn(plot_influence_distributions(topk, labels, ["ant", "bee"]), tmp_path / "both.png")
    )
    only = png(
        drawn(
            plot_influence_distributions(topk[topk["kind"] == "proponent"], labels, ["ant", "bee"]),
            tmp_path / "only.png",
        )
    )
    assert size_of(both) == (px(8), px(6))
    # the red of opponents (alpha 0.55 on white; boxes and legend) only where there are some
    red_box = colour_mask(both, (236, 131, 131), tol=6).sum()
    assert red_box > 200
    assert colour_mask(only, (236, 131, 131), tol=6).sum() < 30


def test_top_influencers_size_and_colours(dataset, tmp_path):
    influential = pd.read_csv(dataset["reports"] / "influential_samples.csv")
    many = pd.concat([influential] * 4, ignore_index=True)
    many["train_idx"] = np.arange(len(many))
    path = drawn(plot_top_influencers(many, n=10), tmp_path / "top.png")
    pixels = png(path)
    # 16 positive -> 10 bars, 12 negative -> 10 bars: 1.6 + 0.28 * 20 = 7.2 -> 7.25 in
    assert size_of(pixels) == (px(10), px(7.25))
    blue = colour_mask(pixels, (76, 146, 195), tol=8).sum()  # "#1f77b4" at alpha 0.8
    red = colour_mask(pixels, (222, 82, 83), tol=8).sum()  # "#d62728" at alpha 0.8
    assert blue > 1000 and red > 1000
    only_helpful = png(
        drawn(plot_top_influencers(many[many["influence_sum"] > 0], n=10), tmp_path / "helpful.png")
    )
    assert colour_mask(only_helpful, (222, 82, 83), tol=8).sum() < red / 10


def test_heatmap_is_diverging_around_zero(tmp_path):
    frame = pd.DataFrame({"train_class": ["a", "b"], "a": [4.0, -4.0], "b": [0.0, 1.0]})
    pixels = png(drawn(plot_class_influence_heatmap(frame), tmp_path / "heat.png"))
    assert size_of(pixels) == (px(7.5), px(6))
    # RdBu ends: +max is dark blue, -max dark red (a cell is ~100k px, the colour bar's end ~1k)
    white = (247, 247, 247)  # RdBu's centre
    assert colour_mask(pixels, (5, 48, 97), tol=4).sum() > 20_000
    assert colour_mask(pixels, (103, 0, 31), tol=4).sum() > 20_000
    assert colour_mask(pixels, white, tol=2).sum() > 20_000  # the 0 cell
    # centred at 0, not at the minimum: with no negative value, 0 is still white and no cell red
    shifted = png(
        drawn(
            plot_class_influence_heatmap(frame.assign(a=[4.0, 0.0], b=[2.0, 1.0])),
            tmp_path / "h2.png",
        )
    )
    assert colour_mask(shifted, (103, 0, 31), tol=4).sum() < 2_000
    assert colour_mask(shifted, white, tol=2).sum() > 20_000


@pytest.mark.parametrize("k", [2, 100])
def test_dashboards_render_for_few_and_many_classes(tmp_path, k):
    rng = np.random.default_rng(k)
    names = [
        f"class_{c:03d}" + ("_with_a_rather_long_name" if c % 7 == 0 else "") for c in range(k)
    ]
    n_test = 3 * k
    labels = pd.Series(rng.integers(0, k, n_test), index=np.arange(n_test))
    topk = pd.DataFrame(
        {
            "test_idx": np.repeat(np.arange(n_test), 6),
            "kind": np.tile(["proponent"] * 3 + ["opponent"] * 3, n_test),
            "rank": np.tile([1, 2, 3, 1, 2, 3], n_test),
            "train_idx": rng.integers(0, 1000, 6 * n_test),
            "influence": np.tile([3.0, 2.0, 1.0, -1.0, -2.0, -3.0], n_test)
            * rng.random(6 * n_test),
        }
    )
    heat = pd.DataFrame(rng.normal(size=(k, k)), columns=names)
    heat.insert(0, "train_class", names)
    dist = png(drawn(plot_influence_distributions(topk, labels, names), tmp_path / "dist.png"))
    heatmap = png(drawn(plot_class_influence_heatmap(heat), tmp_path / "heat.png"))
    width = min(max(3 + 0.5 * k, 8), 30)
    side = min(max(2.5 + 0.55 * k, 6), 26)
    assert size_of(dist) == (px(width), px(6))
    assert size_of(heatmap) == (px(side + 1.5), px(side))


def test_self_influence_marks_the_suspects(dataset, tmp_path):
    inspection = pd.read_csv(dataset["reports"] / "mislabeled_inspection_report.csv")
    marked = png(
        drawn(plot_self_influence_distribution(inspection, n_suspects=3), tmp_path / "a.png")
    )
    plain = png(
        drawn(plot_self_influence_distribution(inspection, n_suspects=0), tmp_path / "b.png")
    )
    assert size_of(marked) == size_of(plain) == (px(9), px(5))
    red = colour_mask(marked, SUSPECT_RED, tol=8).sum()
    assert red > 300
    assert colour_mask(plain, SUSPECT_RED, tol=8).sum() < red / 10
    # negative values (no log axis) and a single value both render
    png(
        drawn(
            plot_self_influence_distribution(
                inspection.assign(self_influence=[-1.0, 0.0, 1.0, 2.0, 3.0])
            ),
            tmp_path / "c.png",
        )
    )
    png(drawn(plot_self_influence_distribution(inspection.head(1)), tmp_path / "d.png"))


# --- galleries -----------------------------------------------------------------------------------


def test_load_thumbnail_keeps_aspect_and_handles_bad_files(dataset):
    files = dataset["files"]
    thumb = load_thumbnail(files[100], 30)  # 60 x 40 -> 30 x 20, centred on white
    assert thumb.shape == (30, 30, 3) and thumb.dtype == np.uint8
    assert (thumb[:4] == 255).all() and (thumb[-4:] == 255).all()
    assert (np.abs(thumb[8:22].astype(int) - TEST_RGB) <= 2).all()
    gray = load_thumbnail(files[3], 64)  # mode L -> RGB, upscaled
    assert gray.shape == (64, 64, 3) and (np.abs(gray[32, 32].astype(int) - GRAY) <= 2).all()
    assert load_thumbnail(files[5], 32) is None  # missing
    assert load_thumbnail(files[6], 32) is None  # garbage bytes


def gallery_inputs(dataset, test_idx=100):
    cross = pd.read_csv(dataset["reports"] / "misprediction_cross_analysis.csv")
    paths = {i: str(p.relative_to(dataset["root"])) for i, p in dataset["files"].items()}
    rows = cross[cross["test_idx"] == test_idx].assign(
        image_path=lambda f: f["train_idx"].map(paths)
    )
    return rows[rows["kind"] == "proponent"], rows[rows["kind"] == "opponent"], paths


def test_misprediction_gallery_shows_the_original_images(dataset, tmp_path):
    proponents, opponents, paths = gallery_inputs(dataset)
    assert len(proponents) == 3 and len(opponents) == 2  # fewer than 5: empty slots
    test_row = {
        "idx": 100,
        "path": paths[100],
        "true_label": "cat",
        "predicted_label": "dog",
        "confidence": 0.9,
    }
    pixels = png(
        drawn(
            misprediction_gallery(test_row, proponents, opponents, Thumbnails(dataset["root"])),
            tmp_path / "g.png",
        )
    )
    # thumb 128: cell 1.75 x 2.25 in; (5 + 2) cells wide, 2 rows + 0.75 in
    assert size_of(pixels) == (px(7 * 1.75), px(2 * 2.25 + 0.75))
    width = pixels.shape[1]

    test_pixels = np.argwhere(colour_mask(pixels, TEST_RGB))
    assert len(test_pixels) > 5000  # shown large
    assert test_pixels[:, 1].max() < width * 2 / 7  # inside the left (test image) column
    prop = np.argwhere(colour_mask(pixels, PROP_RGB))
    opp = np.argwhere(colour_mask(pixels, OPP_RGB, tol=6))  # a JPEG
    gray = np.argwhere(colour_mask(pixels, (GRAY, GRAY, GRAY)))
    missing = np.argwhere(colour_mask(pixels, MISSING_RGB, tol=1))
    # (gray and light grey also occur in anti-aliased text: judge where most such pixels are)
    for found in (prop, opp, gray, missing):
        assert len(found) > 1500
        assert (found[:, 1] > width * 2 / 7).mean() > 0.95  # in the neighbour rows
    # proponents in the upper row, opponents (cyan and the missing file) in the lower one
    half = pixels.shape[0] / 2
    assert prop[:, 0].max() < half < opp[:, 0].min()
    assert np.median(gray[:, 0]) < half < np.median(missing[:, 0])
    # a missing test image and no candidates at all still give a picture
    empty = proponents.iloc[0:0]
    test_row["path"] = "cat/nowhere.png"
    lone = png(
        drawn(
            misprediction_gallery(test_row, empty, empty, Thumbnails(dataset["root"])),
            tmp_path / "e.png",
        )
    )
    assert colour_mask(lone, MISSING_RGB, tol=1).sum() > 5000
    assert colour_mask(lone, PROP_RGB).sum() == 0


def galleries(dataset, out, *, mispredictions=20, suspects=24, log):
    """The report_galleries rule's function on the dataset fixture's files."""
    results, reports = dataset["results"], dataset["reports"]
    inputs = {
        "manifest": results / "manifest.parquet",
        "test": results / "test.parquet",
        "cross": reports / "misprediction_cross_analysis.csv",
        "inspection": reports / "mislabeled_inspection_report.csv",
        "root": dataset["root"],
    }
    settings = {"mispredictions": mispredictions, "suspects": suspects, "thumbnail_px": 128}
    return report_galleries(inputs, {"galleries": out}, {"galleries": settings}, log=log)


def test_a_gallery_image_changed_after_the_manifest_stops_the_galleries_naming_it(dataset):
    """No gallery from pixels the model did not train on: a proponent's file given other bytes
    after the manifest was built stops the stage, naming the file and the rebuild."""
    changed = dataset["root"] / "cat/a0.png"
    solid(changed, OPP_RGB, (50, 30))
    out = dataset["results"] / "reports" / "galleries"
    with pytest.raises(DataError) as info:
        galleries(dataset, out, log=lambda line: None)
    assert f"'{changed}'" in str(info.value) and "snakemake -R build_manifest" in str(info.value)


def test_report_galleries_caps_orders_and_logs(dataset):
    out = dataset["results"] / "reports" / "galleries"
    (out / "mispredictions").mkdir(parents=True)
    (out / "mispredictions" / "test_999.png").write_bytes(b"stale")  # from an earlier run
    messages = []
    written = galleries(dataset, out, mispredictions=2, suspects=24, log=messages.append)
    folder = out / "mispredictions"
    # the two most confident mistakes: 102 (0.95) and 100 (0.9), not 101 (0.6)
    assert sorted(p.name for p in folder.iterdir()) == ["test_100.png", "test_102.png"]
    assert [p.name for p in written] == ["test_102.png", "test_100.png", "suspects.png"]
    assert [m.split(":")[0] for m in messages[:2]] == ["gallery 1/2", "gallery 2/2"]
    assert "test 102" in messages[0]
    for path in written[:2]:
        assert size_of(png(path)) == (px(7 * 1.75), px(2 * 2.25 + 0.75))
    # the test image of gallery 100 is the planted colour, at the left
    g100 = png(folder / "test_100.png")
    assert colour_mask(g100, TEST_RGB)[:, : g100.shape[1] * 2 // 7].sum() > 5000
    # and its neighbours come from the cross analysis, their paths from the manifest
    assert colour_mask(g100, PROP_RGB)[:, g100.shape[1] * 2 // 7 :].sum() > 3000
    assert colour_mask(g100, OPP_RGB, tol=6)[:, g100.shape[1] * 2 // 7 :].sum() > 1500
    # 102 also has train 2 (a 64 x 64 magenta square, shown 128 x 128) and train 6 (garbage bytes)
    g102 = png(folder / "test_102.png")
    prop100, prop102 = colour_mask(g100, PROP_RGB).sum(), colour_mask(g102, PROP_RGB).sum()
    assert 0.9 * 128 * 128 < prop102 - prop100 <= 128 * 128  # spines cover its border
    assert colour_mask(g102, MISSING_RGB, tol=1).sum() > 2 * 128 * 128 * 0.8  # two placeholders
    # 5 suspects in one row: max(5 * 1.75, 4) x (2.25 + 0.5) in; their thumbnails are shown
    suspects = png(out / "suspects.png")
    assert size_of(suspects) == (px(5 * 1.75), px(2.25 + 0.5))
    for colour in (OPP_RGB, PROP_RGB, (GRAY, GRAY, GRAY), MISSING_RGB):
        assert colour_mask(suspects, colour, tol=6).sum() > 1000, colour


def test_report_galleries_without_mispredictions_writes_a_readme(dataset):
    results = dataset["results"]
    predictions = pd.read_parquet(results / "test.parquet")
    write_parquet(results / "test.parquet", predictions.assign(pred=predictions["label"]))
    out = results / "reports" / "galleries"
    written = galleries(dataset, out, suspects=2, log=lambda _: None)
    folder = out / "mispredictions"
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
    assert "No mispredicted test images" in (folder / "README.txt").read_text()
    assert [p.name for p in written] == ["README.txt", "suspects.png"]
    # 2 suspects: max(2 * 1.75, 4) in wide
    assert size_of(png(out / "suspects.png")) == (px(4), px(2.25 + 0.5))


def test_report_galleries_disabled_says_so(dataset):
    results = dataset["results"]
    out = results / "reports" / "galleries"
    galleries(dataset, out, mispredictions=0, log=lambda _: None)
    assert [p.name for p in (out / "mispredictions").iterdir()] == ["README.txt"]
    assert "3 mispredicted test images" in (out / "mispredictions" / "README.txt").read_text()


def test_suspects_gallery_with_no_suspects(dataset, tmp_path):
    inspection = pd.read_csv(dataset["reports"] / "mislabeled_inspection_report.csv").iloc[0:0]
    pixels = png(
        drawn(suspects_gallery(inspection, Thumbnails(dataset["root"])), tmp_path / "s.png")
    )
    assert size_of(pixels) == (px(4), px(2.25 + 0.5))
