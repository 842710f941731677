"""Mask erosion / dilation and resolution-scaled pixel amounts (core.morphology): against a literal
window-by-window min / max filter, for every mask layout the project uses."""

from __future__ import annotations

import pytest
import torch
from hifi123.core.morphology import dilate, dilate_bool, erode, scale_px


def _literal(mask2d, radius, op):
    """min / max over the (2 r + 1)^2 window clipped to the image (OpenCV's default border)."""
    h, w = mask2d.shape
    out = torch.empty_like(mask2d, dtype=torch.float32)
    m = mask2d.float()
    for i in range(h):
        for j in range(w):
            win = m[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
            out[i, j] = op(win)
    return out


@pytest.fixture
def blob():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(17, 23, generator=g) > 0.35
    m[:, :3] = True  # touches the border: the border must not erode it
    return m


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_erode_and_dilate_equal_the_literal_filters_in_every_layout(blob, radius):
    want_e = _literal(blob, radius, torch.min) > 0.5
    want_d = _literal(blob, radius, torch.max) > 0.5
    layouts = {
        "[H,W]": (blob, lambda y: y),
        "[B,H,W]": (blob[None], lambda y: y[0]),
        "[B,H,W,1]": (blob[None, ..., None], lambda y: y[0, ..., 0]),
        "[B,1,H,W] float": (blob[None, None].float(), lambda y: y[0, 0] > 0.5),
    }
    for name, (x, flat) in layouts.items():
        e, d = erode(x, radius), dilate(x, radius)
        assert e.shape == x.shape and e.dtype == x.dtype, name
        assert torch.equal(flat(e), want_e), name
        assert torch.equal(flat(d), want_d), name
    assert torch.equal(dilate_bool(blob, radius), want_d)
    # two iterations = the filter applied twice
    assert torch.equal(erode(blob, radius, iterations=2), erode(erode(blob, radius), radius))


def test_a_5x5_kernel_erodes_two_pixels_and_radius_0_is_a_no_op():
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 5:15, 4:16] = True
    expected = torch.zeros_like(mask)
    expected[0, 7:13, 6:14] = True  # an OpenCV 5x5 kernel = radius 2
    assert torch.equal(erode(mask, 2), expected)
    # border never erodes
    assert torch.equal(erode(torch.ones(1, 8, 8, 1), 2), torch.ones(1, 8, 8, 1))
    assert erode(mask, 0) is mask and dilate(mask, 0) is mask


def test_pixel_amounts_scale_with_resolution():
    assert scale_px(2, 512, 512) == 2
    assert scale_px(2, 256, 512) == 1
    assert scale_px(2, 128, 512) == 0  # a 2-pixel border at 512 is half a pixel at 128
    assert scale_px(2, 800, 800) == 2 and scale_px(2, 400, 800) == 1 and scale_px(0, 800, 800) == 0
    assert scale_px(16, 1024, 512) == 32
    with pytest.raises(ValueError):
        erode(torch.ones(2, 3, 4, 5), 1)
