"""EfficientNet-Lite0 from the ImageNet weights that install with pip: the weights really load.

The file ships in the TF conversion's layout; :func:`backbone_state` renames it to timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding). A wrong key map, a wrong padding or a wrong
input normalisation would change what the network sees in a photo; these tests would catch each.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from matplotlib import cbook
from PIL import Image

from tracinflow.config import ConfigError, pretrained_weights_file
from tracinflow.io.checkpoints import read_backbone_weights
from tracinflow.train.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_state,
    create_model,
    features,
    make_arch,
    tf_lite_key_map,
    to_input,
)

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper


@pytest.fixture(scope="module")
def imagenet_state():
    path = pretrained_weights_file("efficientnet_lite0", "imagenet")
    assert path.is_file() and path.name == "efficientnet-lite0-57934424.pth"
    return read_backbone_weights(path, "efficientnet_lite0")


@pytest.fixture(scope="module")
def photo():
    """The sample photo, resized to the network's ImageNet input size, uint8 (1, 224, 224, 3)."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    return torch.from_numpy(np.array(image))[None]


def imagenet_logits(model, state, photo, arch) -> torch.Tensor:
    """The fine-tuning model's backbone with the file's own ImageNet classifier on top."""
    with torch.no_grad():
        return features(model, to_input(photo, arch)) @ state["_fc.weight"].T + state["_fc.bias"]


def test_packaged_imagenet_weights_classify_the_sample_photo(imagenet_state, photo):
    arch = make_arch("efficientnet_lite0", 10, pretrained="imagenet")
    assert arch["mean"] == arch["std"] == [0.5, 0.5, 0.5]  # TF-Lite's [-1, 1] input scaling
    model = create_model(arch, imagenet_state).eval()
    probabilities = imagenet_logits(model, imagenet_state, photo, arch).softmax(1)[0]
    assert int(probabilities.argmax()) == MILITARY_UNIFORM

    # The photo is recognised even through a wrong normalisation, so top-1 alone cannot tell:
    # the documented one must also be the one the weights are most sure under.
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), ((0, 0, 0), (1, 1, 1))):
        other = dict(arch, mean=list(mean), std=list(std))
        wrong = imagenet_logits(model, imagenet_state, photo, other).softmax(1)[0]
        assert wrong[MILITARY_UNIFORM] < probabilities[MILITARY_UNIFORM] - 0.05, mean


def test_backbone_equals_the_reference_implementation(imagenet_state, photo):
    """Logits equal those of efficientnet-lite-pytorch (lukemelas' EfficientNet with TF padding,
    the layout the file was converted to), loaded from the same file by its own code."""
    from efficientnet_lite_pytorch import EfficientNet

    path = pretrained_weights_file("efficientnet_lite0", "imagenet")
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    arch = make_arch("efficientnet_lite0", 10, pretrained="imagenet")
    model = create_model(arch, imagenet_state).eval()
    x = to_input(photo, arch)
    with torch.no_grad():
        expected = reference(x)
    ours = imagenet_logits(model, imagenet_state, photo, arch)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_key_map_is_one_to_one_and_covers_the_backbone(imagenet_state):
    body = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    names = tf_lite_key_map(body, imagenet_state)
    assert len(set(names.values())) == len(names) == len(body.state_dict())
    assert set(names.values()) == set(body.state_dict())
    for key, name in names.items():
        assert imagenet_state[key].shape == body.state_dict()[name].shape, key
    assert names["_blocks.15._project_conv.weight"] == "blocks.6.0.conv_pwl.weight"
    assert names["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"


def test_timm_layout_file_loads_too_and_foreign_keys_are_refused(imagenet_state):
    """A file in timm's own layout (timm's published weights) loads the same backbone."""
    arch = make_arch("efficientnet_lite0", 3, pretrained="imagenet")
    model = create_model(arch, imagenet_state)
    timm_layout = {k.removeprefix("body."): v for k, v in model.state_dict().items()}
    timm_layout = {k: v for k, v in timm_layout.items() if not k.startswith("fc.")}
    again = create_model(arch, timm_layout)
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"'_blocks\.99\._bn0\.weight' is not a key"):
        backbone_state(model, {**imagenet_state, "_blocks.99._bn0.weight": torch.zeros(1)})


def test_imagenet_names_a_file_only_where_one_exists():
    assert pretrained_weights_file("resnet50", "imagenet").as_posix() == (
        "resources/weights/resnet50-imagenet1k-v1.pth"
    )
    assert pretrained_weights_file("efficientnet_lite0", None) is None
    assert pretrained_weights_file("resnet18", "my/weights.pth").as_posix() == "my/weights.pth"
    with pytest.raises(ConfigError, match=r"names no weights for model\.arch small_resnet"):
        pretrained_weights_file("small_resnet", "imagenet")
