"""The explorer's data and folder on hand-made tables whose answers are known: each test image's
proponents and opponents are the top-k table's, a training image's helped and harmed test images
invert it, ranks follow the workflow's tie rule, the across-versions view lines up by test idx, and
the folder is written whole (thumbnails from real image files) or not at all."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_plain_folder, pattern_image, save
from PIL import Image

from tracinflow._util.tables import descending_rank
from tracinflow.data import DataError
from tracinflow.explorer.page import data_script
from tracinflow.explorer.payload import explorer_payload, top_lists
from tracinflow.explorer.thumbnails import webp_thumbnail
from tracinflow.stages.explorer import explorer

CLASSES = ["cat", "dog"]
TRAIN_IDX = [0, 1, 2, 3]
TEST_IDX = [10, 11]
# influence[test][train]
INFLUENCE = {10: {0: 3.0, 1: -2.0, 2: 3.0, 3: -5.0}, 11: {0: -1.0, 1: 4.0, 2: 0.5, 3: 2.0}}


def topk_table(influence=INFLUENCE) -> pd.DataFrame:
    """Every score as a top-k row (k = 4), positive ones as proponents, negative as opponents,
    shuffled: the page must sort them itself."""
    rows = []
    for test_idx, scores in influence.items():
        for kind, sign in (("proponent", 1), ("opponent", -1)):
            chosen = sorted(
                (t for t, v in scores.items() if sign * v > 0), key=lambda t: (-sign * scores[t], t)
            )
            rows += [
                {"test_idx": test_idx, "kind": kind, "rank": r, "train_idx": t,
                 "influence": scores[t]}
                for r, t in enumerate(chosen, start=1)
            ]  # fmt: skip
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def tables(dropped=(False,) * 4) -> dict:
    manifest = pd.DataFrame(
        {
            "idx": [0, 1, 2, 3, 5, 10, 11],
            "path": [f"{c}/img_{i:03d}.png" for c, i in
                     [("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1), ("dog", 2), ("cat", 2), ("dog", 3)]],
            "class": ["cat", "cat", "dog", "dog", "dog", "cat", "dog"],
            "label": [0, 0, 1, 1, 1, 0, 1],
            "split": ["train"] * 4 + ["val"] + ["test"] * 2,
        }
    )  # fmt: skip
    train_set = pd.DataFrame(
        {"idx": TRAIN_IDX, "label": [0, 1, 1, 1], "original_label": [0, 0, 1, 1],
         "noisy": [False, True, False, False], "dropped": list(dropped)}
    )  # fmt: skip
    kept = [i for i, d in zip(TRAIN_IDX, dropped, strict=True) if not d]
    train_pred = pd.DataFrame(
        {"idx": kept[::-1], "label": [1] * len(kept), "pred": [0] * len(kept),
         "confidence": [0.9] * len(kept)}
    )  # fmt: skip
    test_pred = pd.DataFrame(
        {"idx": [11, 10], "label": [1, 0], "pred": [0, 0], "confidence": [0.75, 0.5]}
    )
    suspicion = pd.DataFrame(
        {"train_idx": kept, "loss": [2.0, 1.0, 2.0, np.nan][: len(kept)],
         "self_influence": np.arange(len(kept), dtype=float)}
    )  # fmt: skip
    return {"manifest": manifest, "train_set": train_set, "train_pred": train_pred,
            "test_pred": test_pred, "topk": topk_table(), "suspicion": suspicion}  # fmt: skip


def payload(top=10, **kwargs):
    return explorer_payload(tables(**kwargs), version="v", default_ranking="loss", top=top,
                            planted=True)  # fmt: skip


def test_each_test_image_lists_the_top_k_tables_proponents_and_opponents_in_order():
    data = payload()
    assert data["test"]["idx"] == [10, 11]  # by idx, whatever the predictions' order
    assert data["test"]["proponents"] == [[[0, 3.0], [2, 3.0]], [[1, 4.0], [3, 2.0], [2, 0.5]]]
    assert data["test"]["opponents"] == [[[3, -5.0], [1, -2.0]], [[0, -1.0]]]
    assert data["test"]["label"] == [0, 1] and data["test"]["pred"] == [0, 0]
    assert data["test"]["confidence"] == [0.5, 0.75]
    top_one = payload(top=1)["test"]
    assert top_one["proponents"] == [[[0, 3.0]], [[1, 4.0]]]
    assert top_one["opponents"] == [[[3, -5.0]], [[0, -1.0]]]


def test_influence_values_are_written_exactly():
    exact = {10: {0: 0.1 + 0.2, 1: -1 / 3, 2: 1e-300, 3: -7.123456789012345e-5}, 11: {0: 1.0}}
    data = explorer_payload({**tables(), "topk": topk_table(exact)}, version="v",
                            default_ranking="loss", top=10, planted=False)  # fmt: skip
    read_back = json.loads(data_script(data).removeprefix("window.TRACINFLOW = ").rstrip(";\n"))
    assert read_back["test"]["proponents"][0] == [[0, 0.1 + 0.2], [2, 1e-300]]
    assert read_back["test"]["opponents"][0] == [[1, -1 / 3], [3, -7.123456789012345e-5]]


def test_a_training_image_lists_the_test_images_it_helps_and_harms_most():
    train = payload()["train"]
    assert train["idx"] == TRAIN_IDX
    assert train["helps"] == [[[10, 3.0]], [[11, 4.0]], [[10, 3.0], [11, 0.5]], [[11, 2.0]]]
    assert train["harms"] == [[[11, -1.0]], [[10, -2.0]], [], [[10, -5.0]]]
    assert top_lists(topk_table(), "opponent", "train_idx", "test_idx", 5, [7]) == {7: []}


def test_ranks_follow_the_workflows_tie_rule_and_an_image_without_a_score_has_none():
    train = payload()["train"]
    assert train["ranks"]["loss"] == [1, 3, 2, None]  # ties by the lower idx; NaN: no rank
    assert train["scores"]["loss"] == [2.0, 1.0, 2.0, None]
    values = np.arange(4, dtype=float)
    assert train["ranks"]["self_influence"] == descending_rank(values, np.arange(4)).tolist()
    assert payload()["rankings"] == ["self_influence", "loss"]  # the library's order


def test_only_the_images_a_version_trained_on_are_its_training_images():
    data = payload(dropped=(False, True, False, False))
    assert data["train"]["idx"] == [0, 2, 3]
    assert data["train"]["flipped"] == [False, False, False]
    assert data["images"]["idx"] == [0, 1, 2, 3, 10, 11]  # val images are never shown


def test_the_across_versions_view_lines_up_with_this_versions_test_images():
    other_pred = pd.DataFrame(
        {"idx": [10, 11], "label": [0, 1], "pred": [1, 1], "confidence": [0.6, 0.8]}
    )
    data = explorer_payload(
        tables(), version="v", default_ranking="loss", top=10, planted=False,
        compared={"w": {"test_pred": other_pred, "topk": topk_table()}},
    )  # fmt: skip
    view = data["versions"]["w"]
    assert view["pred"] == [1, 1] and view["confidence"] == [0.6, 0.8]
    assert view["proponents"] == [[[0, 3.0], [2, 3.0]], [[1, 4.0], [3, 2.0], [2, 0.5]]]


def test_missing_values_never_reach_the_page_as_nan():
    with pytest.raises(ValueError):
        data_script({"x": float("nan")})


def test_a_thumbnail_keeps_the_aspect_and_is_never_enlarged(tmp_path):
    wide = save(Image.new("RGB", (400, 100), (200, 10, 10)), tmp_path / "wide.jpg")
    small = save(Image.new("RGB", (20, 10), (10, 10, 200)), tmp_path / "small.png")
    for path, size in ((wide, (96, 24)), (small, (20, 10))):
        image = Image.open(io.BytesIO(webp_thumbnail(path, 96)))
        assert image.format == "WEBP" and image.size == size


def stage_inputs(tmp_path, root) -> dict:
    """The stage's input files; the manifest records the sha256 of the files under ``root`` as
    they are now (as the scan would)."""
    files = {}
    for name, frame in tables().items():
        if name == "manifest":
            frame["sha256"] = [
                hashlib.sha256((root / path).read_bytes()).hexdigest() for path in frame["path"]
            ]
        files[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(files[name])
    return {
        "manifest": files["manifest"], "train_set": files["train_set"],
        "train": files["train_pred"], "test": files["test_pred"], "topk": files["topk"],
        "suspicion": files["suspicion"], "root": root,
        "compare_test": [files["test_pred"]], "compare_topk": [files["topk"]],
    }  # fmt: skip


PARAMS = {"version": "v", "ranking": "loss", "top": 10, "thumbnail_px": 16, "planted": True,
          "compare": ["v"]}  # fmt: skip


def test_the_folder_holds_the_page_its_data_and_a_thumbnail_of_every_readable_image(tmp_path):
    root = make_plain_folder(tmp_path / "images", {"cat": 3, "dog": 4})
    (root / "dog/img_003.png").write_bytes(b"not an image")  # test image 11
    lines = []
    out = tmp_path / "explorer"
    data = explorer(stage_inputs(tmp_path, root), {"explorer": out}, PARAMS, log=lines.append)
    assert sorted(p.name for p in out.iterdir()) == [
        "data.js", "explorer.css", "explorer.js", "index.html", "thumbs",
    ]  # fmt: skip
    thumbs = sorted(p.name for p in (out / "thumbs").iterdir())
    assert thumbs == ["0.webp", "1.webp", "10.webp", "2.webp", "3.webp"]
    assert max(Image.open(out / "thumbs/0.webp").size) <= 16
    assert data["missing_thumbnails"] == [11]
    assert any("no thumbnail for image 11 (dog/img_003.png)" in line for line in lines)
    written = (out / "data.js").read_text()
    assert json.loads(written.removeprefix("window.TRACINFLOW = ").rstrip(";\n")) == data
    assert '<script src="data.js">' in (out / "index.html").read_text()


def test_an_image_changed_after_the_manifest_stops_the_page_naming_every_changed_file(tmp_path):
    """No thumbnail from pixels the model did not train on: a replaced and a removed file stop
    the stage, both named, and no folder (nor a temporary one) is left."""
    root = make_plain_folder(tmp_path / "images", {"cat": 3, "dog": 4})
    inputs = stage_inputs(tmp_path, root)
    save(pattern_image(999, (20, 16)), root / "cat/img_001.png")  # train image 1: other pixels
    (root / "dog/img_003.png").unlink()  # test image 11: gone
    out = tmp_path / "explorer"
    with pytest.raises(DataError) as info:
        explorer(inputs, {"explorer": out}, PARAMS)
    message = str(info.value)
    assert "2 image files changed since the manifest" in message
    assert str(root / "cat/img_001.png") in message and str(root / "dog/img_003.png") in message
    assert "snakemake -R build_manifest" in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failing_build_leaves_the_old_folder_and_no_temporary_one(tmp_path, monkeypatch):
    root = make_plain_folder(tmp_path / "images", {"cat": 3, "dog": 4})
    out = tmp_path / "explorer"
    explorer(stage_inputs(tmp_path, root), {"explorer": out}, PARAMS)
    before = (out / "data.js").read_bytes()

    def fails(payload):  # after the thumbnails and the page's own files are written
        raise OSError("No space left on device")

    monkeypatch.setattr("tracinflow.stages.explorer.data_script", fails)
    with pytest.raises(OSError, match="No space left"):
        explorer(stage_inputs(tmp_path, root), {"explorer": out}, PARAMS)
    assert (out / "data.js").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_page_says_which_method_its_lists_come_from():
    data = explorer_payload(tables(), version="v", default_ranking="loss", top=3, planted=False,
                            method="kfac_head")  # fmt: skip
    assert data["method"] == "kfac_head"
    assert data["method_label"] == (
        "K-FAC influence over the head's Linear layers, summed over the checkpoints"
    )
    plain = explorer_payload(tables(), version="v", default_ranking="loss", top=3, planted=False)
    assert plain["method_label"].startswith("TracIn over the final layer")
