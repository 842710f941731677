"""Reference images and depth maps are checked before use: an RGBA whose alpha cuts the object
out (not missing, empty or opaque everywhere), square; a single-channel depth map. Each refusal
names the file, says what was expected and how to fix it."""

from __future__ import annotations

import numpy as np
import pytest
from hifi123.core.images import load_depth, load_rgba
from hifi123.errors import InputError
from PIL import Image


def _rgba(path, alpha, size=(64, 64)):
    a = np.zeros((size[1], size[0], 4), np.uint8)
    a[..., :3] = 120
    a[..., 3] = alpha
    Image.fromarray(a, "RGBA").save(path)
    return str(path)


def test_a_good_reference_loads(tmp_path):
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255
    assert load_rgba(_rgba(tmp_path / "ok_rgba.png", alpha)).shape == (64, 64, 4)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("rgb", "no alpha channel"),
        ("transparent", "empty mask"),
        ("opaque", "opaque everywhere"),
        ("wide", "not square"),
    ],
)
def test_bad_references_are_refused_with_the_preprocess_fix(tmp_path, case, needle):
    path = tmp_path / f"{case}_rgba.png"
    if case == "rgb":
        Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
    elif case == "wide":
        alpha = np.zeros((64, 96), np.uint8)
        alpha[16:48, 16:48] = 255
        _rgba(path, alpha, size=(96, 64))
    else:
        _rgba(path, 0 if case == "transparent" else 255)
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        load_rgba(str(path), role="data.image_path")
    text = err.value.render()
    assert needle in text and str(path) in text and "hifi123 preprocess" in text
    assert path.read_bytes() == before


def test_a_colour_image_is_not_a_depth_map(tmp_path):
    colour = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(colour)
    with pytest.raises(InputError, match="colour image"):
        load_depth(str(colour), (32, 32))
    grey = tmp_path / "depth.png"
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), "L").save(grey)
    assert load_depth(str(grey), (32, 32)).shape == (32, 32)
    grey_rgb = tmp_path / "depth_rgb.png"  # grey saved as RGB (equal channels) carries no colour
    Image.open(grey).convert("RGB").save(grey_rgb)
    np.testing.assert_array_equal(
        load_depth(str(grey_rgb), (32, 32)), load_depth(str(grey), (32, 32))
    )
