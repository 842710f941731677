"""Make-It-3D refine exports: PLY, renderer weights, orbit video (algorithms.md D.7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.core.makeit3d.deferred_unet import DeferredUNet
from hifi123.core.makeit3d.point_export import (
    load_renderer_weights,
    read_ply,
    save_renderer_weights,
    write_orbit_video,
    write_ply,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small index-heavy tensors (conftest)


# ----------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(257, 3, generator=g)
    col = torch.rand(257, 3, generator=g)
    path = write_ply(str(tmp_path / "cloud.ply"), pos, col, binary=binary)
    header = Path(path).read_bytes().split(b"end_header")[0].decode()
    assert (
        "binary_little_endian" if binary else "ascii"
    ) in header and "element vertex 257" in header
    p2, c2 = read_ply(path)
    assert p2.dtype == np.float32 and np.array_equal(p2, pos.numpy())
    assert c2.dtype == np.uint8 and np.array_equal(c2, np.round(col.numpy() * 255).astype(np.uint8))


def test_renderer_weights_round_trip_and_orbit_video(tmp_path):
    torch.manual_seed(0)
    net = DeferredUNet()
    bg = torch.randn(19)
    desc = torch.randn(5, 19)
    path = save_renderer_weights(
        str(tmp_path / "r.pt"), net, bg, desc, torch.randn(5, 3), torch.ones(5, dtype=torch.bool)
    )
    other = DeferredUNet()
    payload = load_renderer_weights(path, other)
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values())
    )
    assert torch.equal(payload["background"], bg) and torch.equal(payload["descriptors"], desc)
    assert payload["unet_widths"] == [16, 32, 64]

    import imageio.v2 as imageio

    seen = []

    def render(elev, azim):
        seen.append(azim)
        return torch.full((32, 32, 3), (azim % 360) / 360.0)

    video = write_orbit_video(str(tmp_path / "orbit.mp4"), render, n_frames=4, fps=25)
    assert seen == [0.0, 90.0, 180.0, 270.0]
    frames = imageio.mimread(video)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)
