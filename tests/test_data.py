import numpy as np
import pandas as pd
import pytest
from conftest import BAD_FILES, CONVERTED_FILES, make_plain_folder
from PIL import Image

from tracinflow.data import DataError
from tracinflow.data.images import load_for_cache, to_rgb
from tracinflow.data.scan import find_duplicates, scan_image_folder
from tracinflow.data.split import split_images, split_rows, split_summary
from tracinflow.stages.data import write_cache

EXTENSIONS = [".jpg", ".jpeg", ".png"]
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_scan_rejects_bad_files_with_reasons_and_keeps_the_rest(messy_folder):
    images, rejected = scan_image_folder(messy_folder, EXTENSIONS)
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    assert set(reasons) == set(BAD_FILES)
    for path, words in BAD_FILES.items():
        assert words in reasons[path], (path, reasons[path])
    # every other file is an image of the manifest: nothing dropped silently
    assert len(images) == 2 * 12 + len(CONVERTED_FILES) + 1
    assert set(CONVERTED_FILES) <= set(images["path"])
    assert list(images.columns) == [
        "idx", "path", "class", "folder", "label", "sha256", "width", "height",
    ]  # fmt: skip
    assert images["idx"].tolist() == list(range(len(images)))
    assert images["path"].is_monotonic_increasing
    assert images.groupby("folder")["label"].first().to_dict() == {"cat": 0, "dog": 1}
    row = images.set_index("path").loc["cat/img_001.png"]
    assert (row["width"], row["height"]) == Image.open(messy_folder / "cat/img_001.png").size


def test_scan_is_the_same_with_a_worker_pool(messy_folder):
    serial, _ = scan_image_folder(messy_folder, EXTENSIONS, workers=1)
    pooled, _ = scan_image_folder(messy_folder, EXTENSIONS, workers=2)
    pd.testing.assert_frame_equal(serial, pooled)


def test_class_names_map_folders_to_display_names(messy_folder):
    images, _ = scan_image_folder(messy_folder, EXTENSIONS, {"cat": "gatto"})
    assert set(images["class"]) == {"gatto", "dog"}
    with pytest.raises(DataError, match="not in"):
        scan_image_folder(messy_folder, EXTENSIONS, {"cane": "dog"})


@pytest.mark.parametrize("name", CONVERTED_FILES)
def test_unusual_modes_become_8_bit_rgb(messy_folder, name):
    pixels = load_for_cache(messy_folder / name, 16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 5  # real content, not a blank or clipped-white image


def test_sixteen_bit_is_scaled_not_clipped(messy_folder):
    image = Image.open(messy_folder / "cat/sixteen_bit.png")
    source = np.asarray(image, dtype=np.float64)
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape[-1] == 3
    np.testing.assert_allclose(rgb[..., 0], np.rint(source * 255 / 65535), atol=1)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba)).min() == 255


def test_duplicates_are_reported_with_conflicting_labels(messy_folder):
    images, _ = scan_image_folder(messy_folder, EXTENSIONS)
    dups = find_duplicates(images)
    assert sorted(dups["path"]) == ["cat/img_000.png", "dog/copy_of_cat.png"]
    assert dups["copies"].tolist() == [2, 2]
    assert dups["conflicting_labels"].all()


def test_empty_class_folder_is_a_clear_error(tmp_path):
    root = make_plain_folder(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / "bird").mkdir()
    (root / "bird/broken.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"bird.*broken.jpg: empty file"):
        scan_image_folder(root, EXTENSIONS)


def _images(tmp_path, per_class):
    root = make_plain_folder(tmp_path / "images", per_class)
    return scan_image_folder(root, EXTENSIONS)[0]


def test_split_is_stratified_within_one_image_per_class(tmp_path):
    per_class = {"a": 37, "b": 10, "c": 23, "d": 5}
    manifest = split_images(_images(tmp_path, per_class), FRACTIONS, seed=3)
    counts = pd.crosstab(manifest["folder"] if "folder" in manifest else manifest["class"],
                         manifest["split"])  # fmt: skip
    for name, total in per_class.items():
        for split, fraction in FRACTIONS.items():
            assert abs(counts.loc[name, split] - fraction * total) <= 1, (name, split)
    assert list(manifest.columns) == [
        "idx", "path", "class", "label", "split", "sha256", "width", "height",
    ]  # fmt: skip
    summary = split_summary(manifest)
    assert summary.set_index("class").loc["(all)", "total"] == sum(per_class.values())


def test_split_is_deterministic_and_depends_on_the_seed(tmp_path):
    images = _images(tmp_path, {"a": 30, "b": 30})
    first = split_images(images, FRACTIONS, seed=1)
    assert first.equals(split_images(images, FRACTIONS, seed=1))
    assert not first["split"].equals(split_images(images, FRACTIONS, seed=2)["split"])


def test_adding_a_class_leaves_the_other_classes_split_alone(tmp_path):
    two = split_images(_images(tmp_path / "x", {"a": 30, "b": 30}), FRACTIONS, seed=1)
    three = split_images(_images(tmp_path / "y", {"a": 30, "b": 30, "c": 30}), FRACTIONS, seed=1)
    keep = three[three["class"] != "c"].reset_index(drop=True)
    assert two["split"].tolist() == keep["split"].tolist()


def test_duplicates_never_straddle_splits(tmp_path):
    root = make_plain_folder(tmp_path / "images", {"a": 30, "b": 30})
    for i in range(10):  # ten files, each copied twice more, within and across classes
        (root / "a" / f"copy1_{i}.png").write_bytes((root / "a" / f"img_{i:03d}.png").read_bytes())
        (root / "b" / f"copy2_{i}.png").write_bytes((root / "a" / f"img_{i:03d}.png").read_bytes())
    images, _ = scan_image_folder(root, EXTENSIONS)
    for seed in range(5):
        manifest = split_images(images, FRACTIONS, seed)
        assert (manifest.groupby("sha256")["split"].nunique() == 1).all()


def test_split_errors_are_clear(tmp_path):
    images = _images(tmp_path, {"a": 30, "b": 2})
    with pytest.raises(DataError, match=r"'b' has 2 readable images.*at least 3"):
        split_images(images, FRACTIONS, seed=0)
    with pytest.raises(DataError, match="at least 2 classes"):
        split_images(images[images["folder"] == "a"], FRACTIONS, seed=0)
    with pytest.raises(DataError, match="sum to 1"):
        split_images(images, {"train": 0.5, "val": 0.2, "test": 0.2}, seed=0)


def test_cache_matches_a_direct_pil_decode_and_resize(messy_folder, tmp_path):
    images, _ = scan_image_folder(messy_folder, EXTENSIONS)
    manifest = split_images(images, FRACTIONS, seed=0)
    for split in ("train", "test"):
        out = tmp_path / f"{split}.npy"
        assert (
            write_cache(manifest, messy_folder, split, 12, out, workers=2)
            == (manifest["split"] == split).sum()
        )
        cache = np.load(out, mmap_mode="r")
        rows = split_rows(manifest, split)
        assert cache.shape == (len(rows), 12, 12, 3) and cache.dtype == np.uint8
        for position, path in enumerate(rows["path"]):
            with Image.open(messy_folder / path) as image:
                if image.mode not in ("RGB", "L"):
                    continue  # converted by to_rgb, tested above
                expected = np.asarray(image.convert("RGB").resize((12, 12), Image.BILINEAR))
            np.testing.assert_array_equal(cache[position], expected, err_msg=path)


def test_center_crop_keeps_the_middle(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 200  # bright middle third
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    assert load_for_cache(path, 10, "center_crop").min() == 200
    assert load_for_cache(path, 10, "squash").min() == 0


def test_cache_refuses_a_file_changed_since_the_manifest(tmp_path):
    root = make_plain_folder(tmp_path / "images", {"a": 5, "b": 5})
    manifest = split_images(scan_image_folder(root, EXTENSIONS)[0], FRACTIONS, seed=0)
    changed = split_rows(manifest, "test")["path"].iloc[0]
    Image.new("RGB", (5, 5), "red").save(root / changed)
    out = tmp_path / "test.npy"
    with pytest.raises(DataError, match="changed since the manifest"):
        write_cache(manifest, root, "test", 8, out)
    assert not out.exists()  # no half-written cache under the final name
    assert not list(tmp_path.glob(".test.npy*"))


def test_cache_rows_reads_only_the_chosen_rows_in_cache_order(tmp_path):
    from tracinflow.data.cache import CacheRows
    from tracinflow.io.common import load_cache

    images = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    np.save(tmp_path / "train.npy", images)
    rows = CacheRows(load_cache(tmp_path / "train.npy"), [0, 2, 5])
    assert len(rows) == 3 and rows.shape == (3, 2, 2, 3) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[1], images[2])
    np.testing.assert_array_equal(rows[1:3], images[[2, 5]])
    np.testing.assert_array_equal(rows[np.array([0, 2])], images[[0, 5]])
    with pytest.raises(ValueError, match="strictly increasing"):
        CacheRows(images, [2, 1])
    with pytest.raises(ValueError, match="out of range"):
        CacheRows(images, [0, 6])


def test_train_set_rows_follow_the_cache_and_skip_dropped_images():
    from tracinflow.data.train_set import train_set_rows

    manifest = pd.DataFrame(
        {"idx": [0, 1, 2, 3, 4, 5], "label": [0, 1, 0, 1, 0, 1],
         "split": ["train", "test", "train", "train", "val", "train"]}
    )  # fmt: skip
    train_set = pd.DataFrame(
        {"idx": [5, 0, 2, 3], "label": [0, 0, 1, 1], "original_label": [1, 0, 0, 1],
         "noisy": [True, False, True, False], "dropped": [False, False, False, True]}
    )  # fmt: skip
    rows = train_set_rows(train_set, manifest)
    # cache/train.npy holds idx 0, 2, 3, 5 in that order; idx 3 is dropped
    assert rows.to_dict("list") == {"position": [0, 1, 3], "idx": [0, 2, 5], "label": [0, 1, 0]}
    with pytest.raises(DataError, match="not in the manifest's train split"):
        train_set_rows(pd.concat([train_set, train_set.assign(idx=[1, 9, 9, 9])]), manifest)
