"""Make-It-3D inputs around the reference image: the caption file next to it and the reference as
CLIP sees it.

* Caption: Make-It-3D captions the reference with BLIP-2 (paper §3.2, algorithms.md C.1); the
  caption is the SDS prompt and the CLIP text, found by the one prompt rule of `core.prompts`.
* CLIP reference: the RGBA composited on the background of the render it is compared with
  (:func:`composite_reference`). The official code draws a random solid colour per iteration for
  the render's background and composites the reference on the same colour before CLIP
  (nerf/utils.py, `gt_rgb = ref * a + bg * (1 - a)` passed as the CLIP reference); its
  white-composited reference only feeds the depth network. A reference fixed on white while the
  renders get random backgrounds would reward whitening the background (haze, floaters) once
  CLIP-D carries a gradient. Full resolution; the CLIP encoder resizes it.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..images import load_rgba, to_tensor_image


def reference_rgba(image_path: str, role: str = "reference image") -> torch.Tensor:
    """The reference RGBA, [1,4,H,W] in [0,1]."""
    return to_tensor_image(load_rgba(image_path, role=role))


def composite_reference(
    rgba: torch.Tensor, background: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The reference [1,4,H,W] composited on `background` (CLIP-D: the render's own, decision 25):
    None = white; [B,3] colours; or
    [B,3,h,w] / [B,h,w,3] images (a render's background, resized to the reference's size).
    Returns [B,3,H,W] in [0,1] (B = 1 for white)."""
    rgb, alpha = rgba[:, :3], rgba[:, 3:4]
    if background is None:
        return rgb * alpha + (1.0 - alpha)
    bg = background.to(rgba)
    if bg.dim() == 2:  # [B,3] solid colours
        bg = bg[:, :, None, None]
    elif bg.dim() == 4:
        if bg.shape[1] != 3 and bg.shape[-1] == 3:  # channels last (threestudio)
            bg = bg.permute(0, 3, 1, 2)
        if bg.shape[-2:] != rgba.shape[-2:]:
            bg = torch.nn.functional.interpolate(
                bg, rgba.shape[-2:], mode="bilinear", align_corners=False
            )
    else:
        raise ValueError(
            f"background must be [B,3] or [B,3,H,W] / [B,H,W,3], got {tuple(background.shape)}"
        )
    return rgb * alpha + bg * (1.0 - alpha)


def reference_on_white(image_path: str, role: str = "reference image") -> torch.Tensor:
    """The reference RGBA composited on white, [1,3,H,W] in [0,1]."""
    return composite_reference(reference_rgba(image_path, role))
