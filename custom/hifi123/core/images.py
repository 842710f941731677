"""Reading and checking input images, masks and depth maps; compositing; depth conditioning.

Every reader validates before any model is loaded and raises `InputError` naming the file, what was
expected and the command that fixes it.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

PREPROCESS_FIX = (
    "cut the object out and pad it to a square with `hifi123 preprocess {path}` (writes "
    "<name>_rgba.png)"
)
MIN_SIZE = 32


def open_image(
    path: str,
    role: str,
    *,
    missing_fix: str = "check the path",
    large_fix: str = "downscale the image first (`hifi123 preprocess` writes 512-pixel inputs)",
    formats: str = "a PNG (or another format Pillow reads)",
    format_fix: str = "re-export the image as PNG",
):
    """The decoded PIL image at `path`, or an InputError naming `role` and the file: missing,
    too large to decode safely (a decompression bomb), or not an image. The fixes differ by
    caller (a training input vs a user's photo)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise InputError(f"{role} file not found: {path}", "an existing image file", missing_fix)
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as err:
        raise InputError(
            f"{role} file {path} is too large to decode safely ({err})",
            f"at most {Image.MAX_IMAGE_PIXELS} pixels",
            large_fix,
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(
            f"{role} file {path} is not a readable image ({type(err).__name__}: {err})",
            formats,
            format_fix,
        ) from err
    return img


def _to_float(img) -> np.ndarray:
    """PIL image -> float32 [H,W,C] in [0,1], handling 16-bit and 32-bit modes."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16) or img.mode.startswith("I"):
        a = arr.astype(np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return (a / top).astype(np.float32)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    return arr.astype(np.float32)


def load_rgba(path: str, role: str = "image", require_square: bool = True) -> np.ndarray:
    """Read an RGBA image as float32 [H,W,4] in [0,1]. The alpha channel is required."""
    img = open_image(path, role)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if not has_alpha:
        raise InputError(
            f"{role} {path} has no alpha channel (mode {img.mode}): the object's mask is unknown",
            "an RGBA image whose alpha marks the object",
            PREPROCESS_FIX.format(path=path),
        )
    if img.mode in ("I;16", "I;16B", "I"):
        img = img.convert("I")
    rgba = np.asarray(img.convert("RGBA")).astype(np.float32) / 255.0
    h, w = rgba.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise InputError(
            f"{role} {path} is {w}x{h}",
            f"at least {MIN_SIZE}x{MIN_SIZE} pixels",
            "use a larger image",
        )
    if require_square and h != w:
        raise InputError(
            f"{role} {path} is {w}x{h}, not square",
            "a square image (threestudio renders square views)",
            PREPROCESS_FIX.format(path=path),
        )
    if not (rgba[..., 3] > 0.5).any():
        raise InputError(
            f"{role} {path} has an empty mask (alpha is 0 everywhere)",
            "an alpha channel that covers the object",
            PREPROCESS_FIX.format(path=path),
        )
    if (rgba[..., 3] > 0.5).all():
        raise InputError(
            f"{role} {path} is opaque everywhere (alpha is 1 on every pixel): the whole frame "
            "would be taken for the object",
            "an alpha channel that cuts the object out of its background",
            PREPROCESS_FIX.format(path=path),
        )
    return rgba


def load_depth(
    path: str, shape: Optional[Tuple[int, int]] = None, role: str = "depth map"
) -> np.ndarray:
    """Read a depth/disparity map (threestudio `_depth.png`: near = bright) as float32 [H,W] in
    [0,1].

    `shape` (H, W) is the image it belongs to; a mismatch is an error.
    """
    img = open_image(path, role)
    arr = _to_float(img)
    if arr.ndim == 3:
        colour = arr[..., :3]
        if colour.shape[-1] > 1 and np.abs(colour - colour[..., :1]).max() > 1.0 / 255.0:
            raise InputError(
                f"{role} {path} is a colour image (mode {img.mode}); its red channel would be "
                "read as depth",
                "a single-channel depth map (grey, near = bright), as `hifi123 preprocess` writes",
                "pass the depth map, not the photo (or omit it to estimate depth with DPT)",
            )
        arr = arr[..., 0]
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise InputError(
            f"{role} {path} is {arr.shape[1]}x{arr.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]}",
            "a depth map of the same size as its image",
            "resize the depth map, or omit it to estimate depth with DPT",
        )
    return arr


# --------------------------------------------------------------------------------- tensors


def to_tensor_image(arr: np.ndarray) -> torch.Tensor:
    """[H,W,C] float -> [1,C,H,W]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()


def resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(
        x,
        size=(size, size),
        mode=mode,
        align_corners=False,
        antialias=mode in ("bilinear", "bicubic"),
    )


def composite(rgb: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb [B,3,H,W] in [0,1] over `background` ([B or 1,3,H,W] or a colour) with mask [B,1,H,W]."""
    return rgb * mask + background * (1.0 - mask)


def normalize_depth(
    depth: torch.Tensor, mask: Optional[torch.Tensor], eps: float = 1e-3
) -> torch.Tensor:
    """Per-image masked min-max of a disparity map (near = large) to [-1, 1] (decision 4;
    algorithms.md A.3: d' = 2 (d - min) / (max - min + 0.001) - 1). depth [B,1,H,W]."""
    if mask is not None:
        depth = depth * mask
    flat = depth.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1, 1)
    return 2.0 * (depth - lo) / (hi - lo + eps) - 1.0


def depth_to_latent(depth_norm: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Resize the normalised condition to the latent size (bicubic, after normalisation, as the
    official code). Bicubic overshoots at mask edges (up to ~1.2); we clamp back to [-1, 1], the
    range SD2-depth was trained on (the official code does not clamp)."""
    d = F.interpolate(
        depth_norm, size=(latent_size, latent_size), mode="bicubic", align_corners=False
    )
    return d.clamp(-1.0, 1.0)


def save_png(path: str, img: torch.Tensor) -> None:
    """Save [3 or 4,H,W] or [H,W,3/4] in [0,1] as 8-bit PNG."""
    from PIL import Image

    if img.dim() == 4:
        img = img[0]
    if img.shape[0] in (1, 3, 4) and img.shape[-1] not in (3, 4):
        img = img.permute(1, 2, 0)
    arr = (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    Image.fromarray(arr).save(path)


def image_grid(rows: Sequence[Sequence[torch.Tensor]], pad: int = 4) -> torch.Tensor:
    """Tile [3,H,W] images (all the same size) into one [3, H', W'] sheet on white."""
    h, w = rows[0][0].shape[-2:]
    ncol = max(len(r) for r in rows)
    sheet = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[:, y : y + h, x : x + w] = (
                resize(im[None, :3].float(), h)[0] if im.shape[-1] != w else im[:3]
            )
    return sheet


# ------------------------------------------------------------------------ depth PNG and textures
def to_u8(x):
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_depth_png(depth_z, mask):
    """Disparity min-max normalised inside the mask, near = bright.

    Returns ``(uint8 [H, W], disparity_min, disparity_max)``."""
    disp = np.zeros_like(depth_z, dtype=np.float64)
    disp[mask] = 1.0 / depth_z[mask]
    dmin = float(disp[mask].min())
    dmax = float(disp[mask].max())
    v = np.zeros_like(disp)
    v[mask] = (disp[mask] - dmin) / (dmax - dmin)
    out = to_u8(v)
    out[~mask] = 0
    return out, dmin, dmax


def decode_depth_png(values_u8, mask, disparity_min, disparity_max):
    """Camera z-depth from the 8-bit depth PNG (0 outside ``mask``)."""
    v = np.asarray(values_u8, dtype=np.float64) / 255.0
    disp = disparity_min + v * (disparity_max - disparity_min)
    return np.where(mask, 1.0 / disp, 0.0)


_M32 = np.uint64(0xFFFFFFFF)


def _hash_uniform(ix, iy, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values for integer lattice coordinates (murmur3 mix)."""
    h = (ix.astype(np.uint64) * np.uint64(0x8DA6B343)) & _M32
    h ^= (iy.astype(np.uint64) * np.uint64(0xD8163841)) & _M32
    h ^= np.uint64((salt * 0xCB1AB31F) & 0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    h ^= h >> np.uint64(16)
    return h.astype(np.float64) / 4294967296.0


def _value_noise(H, W, freq, salt):
    """Smooth value noise on a lattice of ``freq`` cells per image side (largest side)."""
    s = float(max(H, W))
    ox = 0.37 * salt % 1.0 * 17.0  # per-octave lattice offset (hides lattice alignment)
    oy = 0.61 * salt % 1.0 * 23.0
    u = (np.arange(W, dtype=np.float64) + 0.5) / s * freq + ox
    v = (np.arange(H, dtype=np.float64) + 0.5) / s * freq + oy
    iu = np.floor(u)
    iv = np.floor(v)
    fu = u - iu
    fv = v - iv
    fu = fu * fu * (3.0 - 2.0 * fu)
    fv = fv * fv * (3.0 - 2.0 * fv)
    IU = np.broadcast_to(iu.astype(np.int64)[None, :], (H, W))
    IV = np.broadcast_to(iv.astype(np.int64)[:, None], (H, W))
    a = _hash_uniform(IU, IV, salt)
    b = _hash_uniform(IU + 1, IV, salt)
    c = _hash_uniform(IU, IV + 1, salt)
    d = _hash_uniform(IU + 1, IV + 1, salt)
    FU = fu[None, :]
    FV = fv[:, None]
    top = a + (b - a) * FU
    bot = c + (d - c) * FU
    return top + (bot - top) * FV


def procedural_background(size, seed: int = 0) -> np.ndarray:
    """Grey concrete-like texture [H, W, 3], float in [0, 1], mean ~0.5, std ~0.1.

    ``size`` is an int (square) or ``(H, W)``.  Deterministic for a given ``(size, seed)``;
    features scale with the image, so smaller sizes look like downscaled versions."""
    if isinstance(size, (tuple, list)):
        H, W = int(size[0]), int(size[1])
    else:
        H = W = int(size)
    seed = int(seed)
    g = np.zeros((H, W))
    octaves = ((4, 0.45), (8, 0.45), (16, 0.5), (32, 0.5), (64, 0.45), (128, 0.4), (256, 0.3))
    for k, (freq, amp) in enumerate(octaves):
        g += amp * _value_noise(H, W, freq, 1 + 101 * seed + k)
    # sparse dark pores / aggregate specks
    pores = _value_noise(H, W, 160, 11 + 101 * seed)
    g -= 4.0 * np.maximum(pores - 0.9, 0.0)
    flat = g.ravel().tolist()
    mean = math.fsum(flat) / len(flat)
    var = math.fsum([(x - mean) * (x - mean) for x in flat]) / len(flat)
    z = (g - mean) / math.sqrt(var)
    grey = 0.5 + 0.1 * z
    tint = np.array([1.02, 1.0, 0.97])
    return np.clip(grey[..., None] * tint, 0.0, 1.0)
