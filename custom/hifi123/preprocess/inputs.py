"""Reading user photos for `hifi123 preprocess`: discovery, decoding and documented conversions.

Conversions (each one is reported to the user and stored in the `_preprocess.json` sidecar):

* EXIF orientation is applied (phone photos are stored rotated).
* Multi-frame files (GIF, multi-page TIFF): the first frame is used.
* CMYK: converted to sRGB with the embedded ICC profile when there is one (Pillow ImageCms),
  otherwise with Pillow's naive CMYK->RGB formula.
* 16-bit grayscale (`I;16*`) and 32-bit integer (`I`) images are scaled to [0, 1] by their bit
  depth (65535), not clipped as Pillow's `convert("L")` would. Pillow already reduces 16-bit RGB(A)
  PNGs to 8 bit per channel on load. 32-bit float (`F`) images are taken as [0, 1] when their
  maximum is <= 1, else as [0, 255].
* Grayscale (`1`, `L`, `LA`), palette (`P`, `PA`: the palette's transparency becomes the alpha),
  premultiplied (`RGBa`, `La`) and other colour spaces (`YCbCr`, `LAB`, `HSV`) become RGB(A).

Alpha: kept when it is *meaningful*, i.e. at least one pixel has alpha < 0.5 (threestudio reads
`mask = alpha > 0.5`, so a fully opaque alpha would make the whole frame the object). A fully opaque
alpha is ignored and the background is segmented. An alpha that is meaningful but has no pixel
above 0.5 is an empty foreground (an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..core.images import MIN_SIZE
from ..errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: files we write; a folder scan never takes them as inputs
OUTPUT_SUFFIXES = (
    "_rgba.png",
    "_depth.png",
    "_normal.png",
    "_sheet.png",
    "_caption.txt",
    "_preprocess.json",
)
ALPHA_THRESHOLD = 0.5  # threestudio: mask = alpha > 0.5


@dataclass
class InputImage:
    path: str
    rgb: np.ndarray  # float32 [H, W, 3] in [0, 1]
    alpha: Optional[np.ndarray]  # float32 [H, W] in [0, 1] when meaningful, else None
    notes: List[str] = field(default_factory=list)  # conversions, shown to the user

    @property
    def shape(self):
        return self.rgb.shape[:2]


def output_name(path: str) -> str:
    """`photo.jpg` -> `photo`; `cat_rgba.png` -> `cat` (outputs are `<name>_rgba.png` etc.)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[: -len("_rgba")] if stem.endswith("_rgba") and len(stem) > len("_rgba") else stem


def _fix_open(path: str) -> str:
    return (
        "check the path; preprocess takes an image file or a folder of images "
        f"({', '.join(IMAGE_EXTS)})"
    )


def discover(target: str) -> List[str]:
    """The input files: `target` itself, or the images directly inside the folder `target`
    (sorted; not recursive; our own outputs are skipped)."""
    target = os.path.expanduser(target)
    if not os.path.exists(target):
        raise InputError(
            f"input not found: {target}", "an existing image file or folder", _fix_open(target)
        )
    if os.path.isfile(target):
        return [os.path.abspath(target)]
    names = sorted(os.listdir(target))
    ours = set()
    for n in names:
        if n.endswith("_preprocess.json"):
            ours.add(n[: -len("_preprocess.json")] + "_rgba.png")
    files = []
    for n in names:
        p = os.path.join(target, n)
        if not os.path.isfile(p) or not n.lower().endswith(IMAGE_EXTS):
            continue
        if n in ours or n.endswith(OUTPUT_SUFFIXES[1:]):
            continue
        files.append(os.path.abspath(p))
    if not files:
        raise InputError(
            f"the folder {target} holds no images",
            f"image files ({', '.join(IMAGE_EXTS)}) directly inside the folder",
            "put the photos in the folder, or pass a single image file",
        )
    return files


def _open(path: str):
    from ..core.images import open_image

    return open_image(
        path,
        "input image",
        missing_fix=_fix_open(path),
        large_fix="downscale the photo first (the output is --size pixels anyway)",
        formats="a PNG, JPEG, WebP, BMP, TIFF or GIF file",
        format_fix="re-export the photo as PNG or JPEG",
    )


def _cmyk_to_rgb(img, notes: List[str]):
    icc = img.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
            notes.append("converted CMYK to sRGB with the embedded ICC profile")
            return out
        except Exception:  # noqa: BLE001 - a broken profile: fall back to the plain formula
            pass
    notes.append("converted CMYK to RGB (no usable ICC profile: Pillow's plain formula)")
    return img.convert("RGB")


def _decode(img, notes: List[str]) -> np.ndarray:
    """PIL image -> float32 [H, W, 3 or 4] in [0, 1]."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(img, notes), dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        bits = 16 if mode.startswith("I;16") or a.max() > 255 else 8
        a = np.clip(a / (2**bits - 1), 0.0, 1.0).astype(np.float32)
        notes.append(f"converted {bits}-bit grayscale ({mode}) to RGB")
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(img).astype(np.float32)
        a = np.nan_to_num(a)
        top = 1.0 if a.max() <= 1.0 else 255.0
        notes.append(f"converted 32-bit float grayscale to RGB (taken as [0, {top:g}])")
        return np.repeat(np.clip(a / top, 0.0, 1.0)[..., None], 3, axis=-1)
    if mode in ("1", "L"):
        notes.append(f"converted grayscale ({mode}) to RGB")
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if mode in ("LA", "La"):
        notes.append(f"converted grayscale + alpha ({mode}) to RGBA")
        return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        notes.append(
            "converted palette image to "
            + ("RGBA (palette transparency -> alpha)" if has_alpha else "RGB")
        )
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    if mode == "RGBa":
        return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    try:
        out = img.convert("RGB")
    except (ValueError, OSError) as err:
        raise InputError(
            f"cannot convert image mode {mode}",
            "an RGB, RGBA, grayscale, palette or CMYK image",
            "re-export the photo as an 8-bit RGB(A) PNG",
        ) from err
    notes.append(f"converted {mode} to RGB")
    return np.asarray(out, dtype=np.float32) / 255.0


#: photos are brought down to this longest side before anything else (the outputs are --size
#: pixels; a 48-megapixel photo would otherwise cost minutes and gigabytes at full size)
MAX_WORKING_SIDE = 2048


def read_image(
    path: str, ignore_alpha: bool = False, max_side: int = MAX_WORKING_SIDE
) -> InputImage:
    """Decode one input photo (see the module docstring for the conversions), its longest side
    brought down to `max_side` first. Raises InputError."""
    from PIL import Image, ImageOps

    img = _open(path)
    notes: List[str] = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"used the first of {img.n_frames} frames")
        img.seek(0)
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: ignore it
        orientation = 1
    if orientation not in (None, 1):
        img = ImageOps.exif_transpose(img)
        notes.append(f"applied EXIF orientation {orientation}")
    if max(img.size) > max_side and img.mode in (
        "RGB",
        "RGBA",
        "L",
        "LA",
        "P",
        "PA",
        "CMYK",
        "YCbCr",
    ):
        before = img.size
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        img.thumbnail((max_side, max_side), Image.LANCZOS)  # in place, keeps the aspect ratio
        notes.append(
            f"downsized from {before[0]}x{before[1]} to {img.size[0]}x{img.size[1]} before "
            "processing (the outputs are --size pixels)"
        )
    arr = _decode(img, notes)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise InputError(
            f"input {path} is {w}x{h} pixels: too small",
            f"at least {MIN_SIZE}x{MIN_SIZE} pixels",
            "use a larger photo of the object",
        )
    rgb = np.ascontiguousarray(arr[..., :3])
    alpha = None
    if arr.shape[-1] == 4:
        a = np.ascontiguousarray(arr[..., 3])
        if ignore_alpha:
            notes.append("ignored the alpha channel (--ignore-alpha): the background is segmented")
        elif not (a < ALPHA_THRESHOLD).any():
            notes.append("alpha channel is fully opaque: ignored, the background is segmented")
        elif not (a > ALPHA_THRESHOLD).any():
            raise InputError(
                f"input {path} has an empty foreground: its alpha channel is below 0.5 everywhere",
                "an alpha channel that covers the object (threestudio reads mask = alpha > 0.5), "
                "or no alpha at all",
                f"re-export the cut-out, or segment the photo instead: hifi123 preprocess {path} "
                "--ignore-alpha",
            )
        else:
            alpha = a
            notes.append("kept the input's alpha channel as the object mask")
    return InputImage(os.path.abspath(path), rgb, alpha, notes)
