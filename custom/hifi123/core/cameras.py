"""Cameras in threestudio's conventions, one place for every part of the project.

World +z is up. A camera at elevation e, azimuth a and distance r sits at
r (cos e cos a, cos e sin a, sin e) and looks at the origin; camera space is OpenGL's (x right,
y up, looking along -z); `fovy` is the vertical field of view; pixel centres are at +0.5
(docs/threestudio.md §8). :class:`ViewCamera` is one such camera; the functions below are the
numpy forms the sample generator, preprocessing and evaluation use. The threestudio batch of a
camera is built by `hifi123.threestudio_ext.cameras.camera_batch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch


def _normalize3(v):
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return (v[0] / n, v[1] / n, v[2] / n)


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def look_at_c2w(elevation_deg: float, azimuth_deg: float, distance: float) -> np.ndarray:
    """Camera-to-world 4x4 matrix of a camera orbiting the origin (threestudio convention)."""
    e = math.radians(float(elevation_deg))
    a = math.radians(float(azimuth_deg))
    d = float(distance)
    pos = (d * math.cos(e) * math.cos(a), d * math.cos(e) * math.sin(a), d * math.sin(e))
    lookat = _normalize3((-pos[0], -pos[1], -pos[2]))
    right = _normalize3(_cross(lookat, (0.0, 0.0, 1.0)))
    up = _cross(right, lookat)
    c2w = np.eye(4, dtype=np.float64)
    c2w[:3, 0] = right
    c2w[:3, 1] = up
    c2w[:3, 2] = (-lookat[0], -lookat[1], -lookat[2])
    c2w[:3, 3] = pos
    return c2w


def focal_from_fovy(height: int, fovy_deg: float) -> float:
    return 0.5 * float(height) / math.tan(0.5 * math.radians(float(fovy_deg)))


def pixel_directions(H, W, fovy_deg, off_x=0.5, off_y=0.5):
    f = focal_from_fovy(H, fovy_deg)
    i = np.arange(W, dtype=np.float64) + off_x
    j = np.arange(H, dtype=np.float64) + off_y
    dx = np.broadcast_to(((i - 0.5 * W) / f)[None, :], (H, W))
    dy = np.broadcast_to((-(j - 0.5 * H) / f)[:, None], (H, W))
    return np.stack([dx, dy, -np.ones((H, W))], axis=-1)


def ray_directions(H: int, W: int, fovy_deg: float) -> np.ndarray:
    """Camera-space ray directions [H, W, 3], z = -1, through pixel centres (+0.5)."""
    return pixel_directions(int(H), int(W), fovy_deg)


def rotate_vectors(R, d):
    """R @ d for d [..., 3], written element-wise (deterministic, no BLAS)."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    return np.stack([R[k, 0] * x + R[k, 1] * y + R[k, 2] * z for k in range(3)], axis=-1)


def backproject_depth(depth_z, c2w, fovy_deg: float) -> np.ndarray:
    """World points [H, W, 3] of a camera z-depth map [H, W] (``position + z * R @ dir_cam``)."""
    depth_z = np.asarray(depth_z, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    H, W = depth_z.shape
    d_world = rotate_vectors(c2w[:3, :3], ray_directions(H, W, fovy_deg))
    return c2w[:3, 3] + depth_z[..., None] * d_world


def project_points(points, c2w, fovy_deg: float, H: int, W: int):
    """Project world points [..., 3] to continuous pixel coords.

    Returns ``(u, v, z)``: column, row (pixel centres at integer + 0.5) and camera z-depth."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3], got {p.shape}")
    c2w = np.asarray(c2w, dtype=np.float64)
    R, t = c2w[:3, :3], c2w[:3, 3]
    q = p - t
    pc = rotate_vectors(R.T, q)
    f = focal_from_fovy(H, fovy_deg)
    z = -pc[..., 2]
    u = pc[..., 0] / z * f + 0.5 * W
    v = -pc[..., 1] / z * f + 0.5 * H
    return u, v, z


@dataclass
class ViewCamera:
    """A threestudio pinhole camera: `c2w` [4, 4] (OpenGL axes, looks along -z), vertical FOV in
    degrees, size in pixels; the orbit angles are kept for renderers that want them."""

    c2w: np.ndarray
    fovy_deg: float
    height: int
    width: int
    elevation_deg: float = float("nan")
    azimuth_deg: float = float("nan")
    distance: float = float("nan")

    @classmethod
    def orbit(
        cls, elevation_deg, azimuth_deg, distance, fovy_deg, height, width=None
    ) -> "ViewCamera":
        return cls(
            look_at_c2w(elevation_deg, azimuth_deg, distance),
            float(fovy_deg),
            int(height),
            int(width if width is not None else height),
            float(elevation_deg),
            float(azimuth_deg),
            float(distance),
        )

    @property
    def fovy(self) -> float:
        return math.radians(self.fovy_deg)

    @property
    def focal(self) -> float:
        return 0.5 * self.height / math.tan(0.5 * self.fovy)

    def resized(self, height: int, width: Optional[int] = None) -> "ViewCamera":
        return ViewCamera(
            self.c2w,
            self.fovy_deg,
            int(height),
            int(width if width is not None else height),
            self.elevation_deg,
            self.azimuth_deg,
            self.distance,
        )

    def c2w_tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.c2w), dtype=dtype, device=device)
