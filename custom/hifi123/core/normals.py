"""The reference-view normal loss and the two normal encodings it compares.

* A normal map file (`<name>_normal.png`, written by `hifi123 preprocess` and the shipped sample)
  holds WORLD-space unit normals n as `(1 - n) / 2` (threestudio reads it with cv2, so channel
  order on disk is (z, y, x) in PIL terms and (x, y, z) after cv2's BGR read).
* A render's `comp_normal` (threestudio's volume and mesh renderers) holds the opacity-weighted
  `(n + 1) / 2` of the accumulated world normal, the normal pointing out of the surface
  (threestudio's geometry takes minus the density gradient).

Both decode to outward world normals, so the loss is one minus their mean cosine over the
reference mask. `docs/threestudio.md` ("Normals") records how this was checked against
threestudio's own cameras, geometry and renderer on the sample object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .images import to_u8


def decode_file_normal(ref_normal: torch.Tensor) -> torch.Tensor:
    """World normals from a normal map as threestudio's datamodule loads it ([..., 3] in [0, 1])."""
    return 1.0 - 2.0 * ref_normal


def decode_render_normal(comp_normal: torch.Tensor) -> torch.Tensor:
    """World normals (unnormalised where the opacity is below 1) from a render's `comp_normal`."""
    return 2.0 * comp_normal - 1.0


def reference_normal_loss(
    ref_normal: torch.Tensor, comp_normal: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """1 - mean cosine between the file's and the render's world normals inside `mask`.

    `ref_normal`, `comp_normal` [B, H, W, 3]; `mask` [B, H, W] (bool). Range [0, 2]; 0 when the
    two agree everywhere in the mask."""
    gt = decode_file_normal(ref_normal[mask])
    pred = decode_render_normal(comp_normal[mask])
    return 1.0 - F.cosine_similarity(pred, gt, dim=-1).mean()


def encode_normal_png(normal_world, mask):
    """uint8 [H, W, 3] in PIL "RGB" order = (z, y, x) of ``v = (1 - n) / 2``; 0 outside."""
    v = to_u8((1.0 - normal_world) * 0.5)[..., ::-1]
    v = np.ascontiguousarray(v)
    v[~mask] = 0
    return v


def decode_normal_png(pil_rgb_u8):
    """World normals from the PIL-decoded normal PNG (emulates threestudio's cv2 reading)."""
    v = np.asarray(pil_rgb_u8, dtype=np.float64)[..., ::-1] / 255.0  # cv2 BGR order -> (x,y,z)
    return 1.0 - 2.0 * v
