"""A core camera (`hifi123.core.cameras.ViewCamera`) as a threestudio camera batch: the one place
where our cameras enter threestudio (the HiFi-123 fixed views, the Make-It-3D point-cloud views)."""

from __future__ import annotations

from typing import Any, Dict

import torch

from ..core.cameras import ViewCamera


def camera_batch(
    camera: ViewCamera, device=None, near: float = 0.01, far: float = 100.0
) -> Dict[str, Any]:
    """The threestudio batch of one core camera (near / far as threestudio's random views):
    `rays_o`, `rays_d` (unit), `mvp_mtx`, `c2w`, `camera_positions`, `light_positions` (= camera),
    `elevation`, `azimuth`, `camera_distances`, `fovy`, `height`, `width` (threestudio's
    `RandomCameraDataset` layout)."""
    from threestudio.utils.ops import (
        get_mvp_matrix,
        get_projection_matrix,
        get_ray_directions,
        get_rays,
    )

    c2w = camera.c2w_tensor(device)[None]
    fovy = torch.tensor([camera.fovy], dtype=torch.float32, device=device)
    dirs = get_ray_directions(camera.height, camera.width, float(camera.focal)).to(device)[None]
    rays_o, rays_d = get_rays(dirs, c2w, keepdim=True, normalize=True)
    proj = get_projection_matrix(fovy.cpu(), camera.width / camera.height, near, far).to(device)
    pos = c2w[:, :3, 3]
    return {
        "rays_o": rays_o,
        "rays_d": rays_d,
        "mvp_mtx": get_mvp_matrix(c2w, proj),
        "c2w": c2w,
        "camera_positions": pos,
        "light_positions": pos,
        "elevation": torch.tensor([camera.elevation_deg], device=device),
        "azimuth": torch.tensor([camera.azimuth_deg], device=device),
        "camera_distances": pos.norm(dim=-1),
        "fovy": fovy,
        "height": camera.height,
        "width": camera.width,
    }
