"""Depth and normal maps for threestudio's single-image datamodule, and the camera assumptions.

File encodings (the same as the shipped sample, `hifi123.sample.make_sample`, whose
`encode_depth_png` / `encode_normal_png` write them):

* `<name>_depth.png`: 8-bit single channel, DISPARITY (1 / camera z-depth) min-max normalised
  inside the mask, near = bright, 0 outside. threestudio reads it `cv2.IMREAD_UNCHANGED / 255`.
* `<name>_normal.png`: 8-bit, 3 channels, WORLD-space unit normals stored as `(1 - n) / 2`, written
  so that cv2 (BGR order) returns (x, y, z); 0 outside the mask. threestudio's normal loss compares
  `1 - 2 * ref_normal` with the rendered world normal.

Camera model (threestudio's): a pinhole camera with vertical field of view `fovy_deg`, pixel
centres at +0.5, camera space x right / y up / looking along -z (OpenGL), reference camera at
(`elevation_deg`, `azimuth_deg`) looking at the origin with world +z up. World normals are
`c2w[:3, :3] @ n_cam` with `c2w` from `make_sample.look_at_c2w`, so the normal map matches a
threestudio config whose `data.default_elevation_deg` / `default_azimuth_deg` /
`default_fovy_deg` equal these values (defaults 0 / 0 / 20: Make-It-3D's and zero123's fovy;
threestudio's zero123 configs use elevation 5 and magic123 uses fovy 40: pass `--elevation 5` or
`--fovy 40` to match them).

Monocular depth (DPT/MiDaS) is affine-invariant DISPARITY: its scale and shift are unknown, so
turning it into a shape (for normals) needs two assumptions, both documented and configurable:

1. the object's centre is at distance 1 (any value: normals do not depend on the global scale);
2. its visible depth range equals `relief` times its largest extent across the image
   (default 0.5: a sphere shows half its diameter in depth), i.e. with the object spanning the
   fraction `e` of the image, `dz = relief * e * 2 tan(fovy / 2)`, near = 1 - dz/2,
   far = 1 + dz/2, and 1/z is linear in the normalised disparity between 1/far and 1/near.

The depth PNG itself needs no assumption (it is the normalised disparity). A depth given in
camera z units (the sample's ground truth) is used as is.

Normals from depth: back-project every pixel to a camera-space point, take one-sided differences
along rows and columns, and at each pixel use the side with the smaller depth jump (so occlusion
edges do not smear); n = normalize(dP/drow x dP/dcol), flipped to face the camera. Pixels with no
valid neighbour along an axis face the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.cameras import look_at_c2w
from ..core.images import encode_depth_png
from ..core.normals import encode_normal_png


@dataclass(frozen=True)
class CameraAssumptions:
    fovy_deg: float = 20.0
    elevation_deg: float = 0.0
    azimuth_deg: float = 0.0
    relief: float = 0.5

    def as_dict(self) -> dict:
        return {
            "fovy_deg": self.fovy_deg,
            "elevation_deg": self.elevation_deg,
            "azimuth_deg": self.azimuth_deg,
            "relief": self.relief,
        }


def normalized_disparity(disparity: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Min-max inside `mask` to [0, 1]; 0 outside. A constant disparity gives 0."""
    out = np.zeros(disparity.shape, np.float64)
    d = disparity[mask].astype(np.float64)
    if d.size == 0:
        return out
    lo, hi = float(d.min()), float(d.max())
    if hi > lo:
        out[mask] = (d - lo) / (hi - lo)
    return out


def disparity_to_depth(
    disparity: np.ndarray, mask: np.ndarray, extent: float, cam: CameraAssumptions
) -> np.ndarray:
    """Camera z-depth (object centre at 1) from an affine-invariant disparity under the
    assumptions in the module docstring. `extent`: the object's largest image extent as a fraction
    of the image side. 0 outside the mask."""
    dz = cam.relief * extent * 2.0 * math.tan(0.5 * math.radians(cam.fovy_deg))
    dz = min(dz, 1.5)  # keep the near plane in front of the camera
    near, far = 1.0 - 0.5 * dz, 1.0 + 0.5 * dz
    t = normalized_disparity(disparity, mask)
    inv = 1.0 / far + t * (1.0 / near - 1.0 / far)
    return np.where(mask, 1.0 / inv, 0.0)


def backproject(depth_z: np.ndarray, fovy_deg: float) -> np.ndarray:
    """Camera-space points [H, W, 3] (x right, y up, -z forward) of a z-depth map."""
    h, w = depth_z.shape
    f = 0.5 * h / math.tan(0.5 * math.radians(fovy_deg))
    x = (np.arange(w, dtype=np.float64) + 0.5 - 0.5 * w) / f
    y = -(np.arange(h, dtype=np.float64) + 0.5 - 0.5 * h) / f
    z = depth_z.astype(np.float64)
    return np.stack([z * x[None, :], z * y[:, None], -z], axis=-1)


def _derivative(p: np.ndarray, z: np.ndarray, valid: np.ndarray, axis: int):
    """One-sided difference along `axis`, choosing the side with the smaller |dz|."""
    n = p.shape[axis]
    fwd = np.zeros_like(p)
    bwd = np.zeros_like(p)
    ok_f = np.zeros(valid.shape, bool)
    ok_b = np.zeros(valid.shape, bool)
    dz_f = np.full(valid.shape, np.inf)
    dz_b = np.full(valid.shape, np.inf)
    a = [slice(None)] * 2
    b = [slice(None)] * 2
    a[axis], b[axis] = slice(0, n - 1), slice(1, n)
    a, b = tuple(a), tuple(b)
    both = valid[a] & valid[b]
    diff = p[b] - p[a]
    dzz = np.abs(z[b] - z[a])
    fwd[a] = diff
    ok_f[a] = both
    dz_f[a] = np.where(both, dzz, np.inf)
    bwd[b] = diff
    ok_b[b] = both
    dz_b[b] = np.where(both, dzz, np.inf)
    use_f = ok_f & (~ok_b | (dz_f <= dz_b))
    d = np.where(use_f[..., None], fwd, bwd)
    return d, ok_f | ok_b


def normals_from_depth(depth_z: np.ndarray, mask: np.ndarray, fovy_deg: float) -> np.ndarray:
    """Camera-space unit normals [H, W, 3] facing the camera; (0, 0, 1) where undetermined and
    outside the mask."""
    valid = mask & (depth_z > 0) & np.isfinite(depth_z)
    z = np.where(valid, depth_z, 0.0).astype(np.float64)
    p = backproject(z, fovy_deg)
    d_row, ok_r = _derivative(p, z, valid, 0)
    d_col, ok_c = _derivative(p, z, valid, 1)
    n = np.cross(d_row, d_col)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    good = valid & ok_r & ok_c & (norm[..., 0] > 1e-12)
    n = np.where(good[..., None], n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
    # face the camera: n . (camera - point) > 0
    flip = (n * (-p)).sum(-1) < 0
    n = np.where((flip & good)[..., None], -n, n)
    return n


def camera_to_world(n_cam: np.ndarray, cam: CameraAssumptions) -> np.ndarray:
    r = look_at_c2w(cam.elevation_deg, cam.azimuth_deg, 1.0)[:3, :3]
    return n_cam @ r.T


def encode_depth(depth_z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 depth PNG values (the sample's encoding); all 0 for an empty mask."""
    if not mask.any():
        return np.zeros(mask.shape, np.uint8)
    z = np.where(mask, depth_z, 1.0)
    if float(z[mask].max()) - float(z[mask].min()) <= 0:
        # a flat depth: encode_depth_png would divide by zero; every pixel is equally near
        return np.zeros(mask.shape, np.uint8)
    return encode_depth_png(z, mask)[0]


def encode_normals(n_world: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return encode_normal_png(n_world, mask)
