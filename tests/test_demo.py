import numpy as np
import pytest
from conftest import make_fake_fashion_mnist, write_idx
from PIL import Image

from tracinflow.data.demo import FASHION_MNIST_FOLDERS, stratified_pick
from tracinflow.stages.data import make_demo_dataset, read_idx


def make_demo(inputs, out, source, per_class, seed=0):
    """The make_demo_dataset rule's function, as the rule calls it."""
    demo = {"source": source, "images_per_class": per_class, "seed": seed}
    return make_demo_dataset(inputs, {"root": out}, {"demo": demo}, log=lambda line: None)


def test_read_idx_round_trips_and_rejects_garbage(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", array)), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_stratified_pick_takes_the_same_number_per_class():
    labels = np.repeat(np.arange(4), [10, 20, 5, 7])
    picked = stratified_pick(labels, 5, seed=0)
    assert np.bincount(labels[picked]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(picked, stratified_pick(labels, 5, seed=0))
    assert len(stratified_pick(labels, None, seed=0)) == len(labels)


def test_fashion_mnist_demo_writes_rgb_pngs_in_image_folder_layout(tmp_path):
    raw = make_fake_fashion_mnist(tmp_path / "raw", per_class=6)
    images = read_idx(raw / "train-images-idx3-ubyte.gz")
    labels = read_idx(raw / "train-labels-idx1-ubyte.gz")
    out = tmp_path / "demo"
    inputs = {
        "images": raw / "train-images-idx3-ubyte.gz",
        "labels": raw / "train-labels-idx1-ubyte.gz",
    }
    assert make_demo(inputs, out, "fashion_mnist", per_class=4) == 40
    assert sorted(p.name for p in out.iterdir()) == sorted(FASHION_MNIST_FOLDERS)
    for folder in FASHION_MNIST_FOLDERS:
        files = sorted((out / folder).glob("*.png"))
        assert len(files) == 4
        with Image.open(files[0]) as image:
            assert image.mode == "RGB" and image.size == (28, 28)
            pixels = np.asarray(image)
        # the PNG holds one of the source images of that class, exactly
        label = FASHION_MNIST_FOLDERS.index(folder)
        assert any(np.array_equal(pixels[..., 0], img) for img in images[labels == label])
    assert not list(tmp_path.glob(".demo*"))  # no temporary folder left behind


def test_digits_demo(tmp_path):
    assert make_demo({}, tmp_path / "digits", "digits", per_class=3) == 30
    files = sorted((tmp_path / "digits").rglob("*.png"))
    assert len(files) == 30
    with Image.open(files[0]) as image:
        assert image.mode == "RGB" and image.size == (8, 8)
        assert np.asarray(image).max() > 200  # scaled from 0-16 to 0-255
