"""Recentre an object and pad it to a square (stable-dreamfusion / DreamCraft3D convention).

The object's bounding box (pixels with alpha > 0.5) is centred in a square output of `size` pixels,
scaled (aspect ratio kept) so that its LONGER side spans `(1 - 2 * border_ratio) * size` pixels;
everything around it is transparent. One resampling step maps the input to the output:

    source square side  S = max(bbox_w, bbox_h) / (1 - 2 * border_ratio)
    source square       centred on the bbox centre (it may extend past the image: transparent)
    output pixel i      samples source x = x0 + (i + 0.5) * S / size

Colour is resampled premultiplied by alpha (no dark or light halo from the background colour),
with Pillow's antialiased bicubic filter in float32, then un-premultiplied; RGB is 0 where the
output alpha is 0. Extra channels (e.g. a given depth) are resampled with the same weights,
normalised by the resampled mask, so the background never bleeds into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import InputError

MIN_OBJECT_PIXELS = 8  # an object smaller than this (longer bbox side) cannot be recentred usefully


@dataclass(frozen=True)
class Recentring:
    """The similarity transform from input pixels to output pixels (pixel-edge coordinates)."""

    x0: float  # source square's left edge (input pixels)
    y0: float  # source square's top edge
    side: float  # source square's side (input pixels)
    size: int  # output side (pixels)

    def as_dict(self) -> dict:
        return {"x0": self.x0, "y0": self.y0, "side": self.side, "size": self.size}


def object_bbox(mask: np.ndarray) -> Optional[Tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the True pixels, exclusive ends (pixel-edge coordinates); None if
    empty."""
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def plan_recentring(
    mask: np.ndarray, size: int, border_ratio: float, source: str = "input"
) -> Recentring:
    box = object_bbox(mask)
    if box is None:
        raise InputError(f"{source} has an empty foreground", "an object in the photo")
    x0, y0, x1, y1 = box
    longest = max(x1 - x0, y1 - y0)
    if longest < MIN_OBJECT_PIXELS:
        raise InputError(
            f"the object in {source} is only {x1 - x0}x{y1 - y0} pixels",
            f"an object at least {MIN_OBJECT_PIXELS} pixels across",
            "use a photo where the object is larger, or check its alpha / the segmentation",
        )
    side = longest / (1.0 - 2.0 * border_ratio)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return Recentring(cx - 0.5 * side, cy - 0.5 * side, side, int(size))


def _resample(channels: np.ndarray, t: Recentring) -> np.ndarray:
    """Resample float32 [H, W, C] through `t` to [size, size, C] (zeros outside the input)."""
    from PIL import Image

    h, w = channels.shape[:2]
    # integer padding so the source square lies inside the (padded) image: Pillow's resize box must
    pad_l = max(0, int(np.ceil(-t.x0)) + 2)
    pad_t = max(0, int(np.ceil(-t.y0)) + 2)
    pad_r = max(0, int(np.ceil(t.x0 + t.side - w)) + 2)
    pad_b = max(0, int(np.ceil(t.y0 + t.side - h)) + 2)
    if pad_l or pad_t or pad_r or pad_b:
        channels = np.pad(channels, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)))
    box = (t.x0 + pad_l, t.y0 + pad_t, t.x0 + pad_l + t.side, t.y0 + pad_t + t.side)
    out = np.empty((t.size, t.size, channels.shape[-1]), np.float32)
    for c in range(channels.shape[-1]):
        im = Image.fromarray(np.ascontiguousarray(channels[..., c], dtype=np.float32), "F")
        out[..., c] = np.asarray(
            im.resize((t.size, t.size), Image.BICUBIC, box=box), dtype=np.float32
        )
    return out


def recenter(
    rgb: np.ndarray,
    alpha: np.ndarray,
    t: Recentring,
    extra: Optional[np.ndarray] = None,
    extra_mask: Optional[np.ndarray] = None,
):
    """Apply `t` to rgb [H,W,3] and alpha [H,W] (float in [0,1]).

    Returns (rgba [size,size,4] float32, extra_out or None). `extra` [H,W] is resampled with the
    weights `extra_mask` (default: alpha) and normalised by them; where the resampled weight is
    ~0, extra_out is NaN.
    """
    a = alpha.astype(np.float32)
    chans = [rgb.astype(np.float32) * a[..., None], a[..., None]]
    if extra is not None:
        wgt = a if extra_mask is None else extra_mask.astype(np.float32)
        chans += [(np.nan_to_num(extra) * wgt).astype(np.float32)[..., None], wgt[..., None]]
    out = _resample(np.concatenate(chans, axis=-1), t)
    a_out = np.clip(out[..., 3], 0.0, 1.0)
    keep = a_out > 1.0 / 512.0
    rgb_out = np.where(keep[..., None], out[..., :3] / np.maximum(out[..., 3:4], 1e-6), 0.0)
    a_out = np.where(keep, a_out, 0.0)
    rgba = np.concatenate([np.clip(rgb_out, 0.0, 1.0), a_out[..., None]], axis=-1).astype(
        np.float32
    )
    extra_out = None
    if extra is not None:
        w_out = out[..., 5]
        extra_out = np.where(w_out > 1e-3, out[..., 4] / np.maximum(w_out, 1e-3), np.nan).astype(
            np.float32
        )
    return rgba, extra_out
