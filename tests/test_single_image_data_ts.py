"""Our single-image datamodules refuse a bad reference before threestudio loads anything: no
alpha, an empty or opaque alpha, a non-square image, a missing or colour depth map."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hifi123.errors import InputError
from PIL import Image

pytestmark = pytest.mark.threestudio

ASSETS = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "assets"


def _cfg(image, **kw):
    return {
        "device": "cpu",
        "image_path": str(image),
        "height": 32,
        "width": 32,
        "requires_depth": False,
        "requires_normal": False,
        "use_random_camera": False,
        **kw,
    }


@pytest.mark.parametrize(
    "name", ["hifi123-single-image-datamodule", "makeit3d-single-image-datamodule"]
)
def test_bad_references_stop_the_datamodule(threestudio_env, tmp_path, name):
    find = threestudio_env.threestudio.find
    extra = {"max_steps": 10} if name.startswith("makeit3d") else {}
    rgb = tmp_path / "rgb_rgba.png"
    Image.new("RGB", (64, 64)).save(rgb)
    with pytest.raises(InputError, match="no alpha channel"):
        find(name)(_cfg(rgb, **extra))
    good = Path(shutil.copy(ASSETS / "sample_rgba.png", tmp_path / "obj_rgba.png"))
    with pytest.raises(InputError, match="obj_depth.png does not exist"):
        find(name)(_cfg(good, requires_depth=True, **extra))
    colour = np.asarray(Image.open(ASSETS / "sample_rgba.png").convert("RGB"))
    Image.fromarray(colour).save(tmp_path / "obj_depth.png")
    with pytest.raises(InputError, match="colour image"):
        find(name)(_cfg(good, requires_depth=True, **extra))
    shutil.copy(ASSETS / "sample_depth.png", tmp_path / "obj_depth.png")
    find(name)(_cfg(good, requires_depth=True, **extra))  # the right files pass
