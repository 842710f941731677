"""`hifi123-nvdiff-rasterizer` adds a correct `depth`; checked on CPU with the torch stand-in for
nvdiffrast against analytic ray-sphere distances (which also pins the stand-in's conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.threestudio


class _SphereGeometry:
    """Duck-typed geometry: a fixed icosphere, white features."""

    def __init__(self, radius=0.5):
        import trimesh
        from threestudio.models.mesh import Mesh

        s = trimesh.creation.icosphere(subdivisions=4, radius=radius)
        self.mesh = Mesh(
            torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces, dtype=torch.long)
        )

    def isosurface(self):
        return self.mesh

    def __call__(self, positions, output_normal=False):
        return {"features": torch.ones(positions.shape[0], 3)}


def test_depth_is_the_distance_to_the_visible_surface(threestudio_env):
    from hifi123.core.cameras import look_at_c2w, ray_directions
    from hifi123.testing.torch_rasterizer import TorchRasterizerContext
    from threestudio.utils.ops import get_mvp_matrix, get_projection_matrix

    ts = threestudio_env.threestudio
    mat = ts.find("no-material")({"n_output_dims": 3, "color_activation": "none"})
    bg = ts.find("solid-color-background")({"color": [1.0, 1.0, 1.0]})
    r = 0.5
    renderer = ts.find("hifi123-nvdiff-rasterizer")(
        {"context_type": "cuda"}, geometry=_SphereGeometry(r), material=mat, background=bg
    )
    renderer.ctx = TorchRasterizerContext()
    size, fovy, dist, elev, azim = 48, 20.0, 3.8, 20.0, 30.0
    c2w = torch.tensor(look_at_c2w(elev, azim, dist), dtype=torch.float32)[None]
    proj = get_projection_matrix(torch.tensor([math.radians(fovy)]), 1.0, 0.1, 100.0)
    mvp = get_mvp_matrix(c2w, proj)
    cam = c2w[:, :3, 3]
    out = renderer(mvp_mtx=mvp, camera_positions=cam, light_positions=cam, height=size, width=size)
    assert out["depth"].shape == (1, size, size, 1)
    # analytic: threestudio's ray through each pixel centre against the sphere
    d_cam = torch.tensor(ray_directions(size, size, fovy), dtype=torch.float32)
    d = torch.einsum("ij,hwj->hwi", c2w[0, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = cam[0]
    b = (d * o).sum(-1)
    disc = b**2 - (o @ o - r**2)
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    depth = out["depth"][0, ..., 0]
    ours = depth > 0
    interior = hit & (disc > 0.02)  # away from the silhouette, where facets differ from the sphere
    assert (ours[interior]).all() and not ours[disc < -0.02].any()
    err = (depth[interior] - t[interior]).abs()
    assert err.max() < 0.01, err.max()  # icosphere facets: ~r (1 - cos(edge/2)) ~ 0.003
    assert torch.allclose((out["opacity"][0, ..., 0] > 0.5), ours)
    # the nearest surface wins: depth never exceeds the centre distance (back faces hidden)
    assert depth[ours].max() < dist
    assert np.isfinite(out["comp_rgb"].numpy()).all()
