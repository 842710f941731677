"""Mask erosion and dilation, and pixel amounts that follow the resolution: one vocabulary.

Every amount is a RADIUS in pixels: a square window of (2 r + 1)^2 pixels (OpenCV's ones kernel
of size 2 r + 1), given at a reference resolution and scaled with :func:`scale_px` to the size at
hand (round(r * size / reference); 0 stays 0). A config that states an OpenCV kernel size k (the
official codes do) means the radius k // 2.

Erosion is a min-filter and dilation a max-filter over that window. Pixels outside the image are
ignored (as OpenCV's default border: the image edge does not erode a mask). Masks may be
[H, W], [B, H, W], [B, H, W, 1] (threestudio) or [B, 1, H, W], bool or float; the result has
the input's shape and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scale_px(px: float, size: int, reference_size: int) -> int:
    """A pixel amount given at `reference_size`, at `size` (rounded; 0 stays 0)."""
    return int(round(float(px) * float(size) / float(reference_size)))


def _as_b1hw(mask: torch.Tensor):
    shape = mask.shape
    if mask.dim() == 2:
        x = mask[None, None]
    elif mask.dim() == 3:
        x = mask[:, None]
    elif mask.dim() == 4 and mask.shape[1] == 1:
        x = mask
    elif mask.dim() == 4 and mask.shape[-1] == 1:
        x = mask.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"mask must be [H,W], [B,H,W], [B,H,W,1] or [B,1,H,W], got {tuple(shape)}")

    def back(y: torch.Tensor) -> torch.Tensor:
        if mask.dim() == 4 and mask.shape[1] != 1:
            y = y.permute(0, 2, 3, 1)
        y = y.reshape(shape)
        return y > 0.5 if mask.dtype == torch.bool else y.to(mask.dtype)

    return x.float(), back


def _window_filter(mask: torch.Tensor, radius: int, iterations: int, sign: float) -> torch.Tensor:
    """sign * max-pool(sign * x): a max-filter (sign 1) or a min-filter (sign -1); max_pool pads
    with -inf, so pixels outside the image never win."""
    radius = int(radius)
    if radius <= 0 or iterations <= 0:
        return mask
    x, back = _as_b1hw(mask)
    for _ in range(int(iterations)):
        x = sign * F.max_pool2d(sign * x, 2 * radius + 1, stride=1, padding=radius)
    return back(x)


def dilate(mask: torch.Tensor, radius: int, iterations: int = 1) -> torch.Tensor:
    """Max-filter over a (2 radius + 1)^2 square, `iterations` times (radius <= 0: unchanged)."""
    return _window_filter(mask, radius, iterations, 1.0)


def erode(mask: torch.Tensor, radius: int, iterations: int = 1) -> torch.Tensor:
    """Min-filter over a (2 radius + 1)^2 square, `iterations` times; the border does not erode."""
    return _window_filter(mask, radius, iterations, -1.0)


def dilate_bool(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`dilate` of one [H, W] bool map by shifted ORs: the same result, much cheaper than a
    float max-pool for the rasteriser's per-pixel masks."""
    out = mask.clone()
    for dim in (0, 1):
        src = out.clone()
        n = src.shape[dim]
        for s in range(1, min(int(radius), n - 1) + 1):
            out.narrow(dim, s, n - s).logical_or_(src.narrow(dim, 0, n - s))
            out.narrow(dim, 0, n - s).logical_or_(src.narrow(dim, s, n - s))
    return out
