"""Preprocessing: one command from a photo to threestudio's single-image inputs
(`hifi123 preprocess`).

    inputs.py    discovery, decoding, documented conversions (CMYK, 16-bit, grayscale, palette,
                 EXIF orientation), when an input alpha is kept
    segment.py   background removal: CLIPSeg or a semantic-segmentation head (transformers), and
                 why not rembg
    recenter.py  recentre + pad to a square with a border ratio, premultiplied resampling
    depth.py     DPT depth (Make-It-3D's depth prior up to the file)
    normals.py   file encodings, camera assumptions, normals from depth
    caption.py   BLIP-2 caption + Make-It-3D's post-processing; where captions come from
    pipeline.py  the per-image steps, batch processing, the up-to-date sidecar, the contact sheet
    tiny.py      tiny random clipseg / segformer / blip2 writers for offline runs and tests
    cli.py       `add_parser(subparsers)` for the `hifi123` command

Nothing here imports threestudio.
"""

from .pipeline import PreprocessConfig, preprocess, preprocess_image

__all__ = ["PreprocessConfig", "preprocess", "preprocess_image"]
