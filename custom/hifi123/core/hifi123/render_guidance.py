"""What the RGNV-based training losses share: settings, model + reference loading, render inputs.

Two losses drive 3D optimisation with the RGNV pipeline: the image-space RGNV loss
(`core/hifi123/rgnv_loss.py`, HiFi-123 Fig. 4c) and RGSD (`core/hifi123/rgsd.py`, HiFi-123 §3.3).
Both take threestudio renders (rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1]), both run
SD2-depth with the reference branch cached once, and both use the refine-stage sampler settings
(decision 7).

Render conventions
------------------
* object mask = `opacity > 0.5` (the threshold RGNV applies to an alpha channel); without an
  opacity the whole frame is the object.
* depth condition (decision 11): the render's depth, `depth_type="z"` (distance, near = small;
  converted to disparity 1/z inside the mask, 0 outside) or `"disparity"` (near = large).
  threestudio's NeRF renderers return the opacity-WEIGHTED distance (sum of w_i t_i), so z is
  divided by the opacity first (`depth_weighted_by_opacity`). Without depth, DPT estimates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal, Optional, Tuple, get_args

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...models.loader import DEFAULT_MODELS
from ..prompts import find_prompt
from ..settings import setting
from .rgnv import RGNVConfig, RGNVPipeline

DepthType = Literal["z", "disparity"]
DEPTH_TYPES = get_args(DepthType)
MASK_THRESHOLD = 0.5


@dataclass
class RGNVGuidanceConfig(RGNVConfig):
    """Settings shared by the RGNV image loss and RGSD: the RGNV sampler (`RGNVConfig`, with the
    refine-stage defaults of decision 7) plus the model, the reference and the render depth.
    Subclasses add their own; the threestudio guidances derive their `Config` from them."""

    pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_depth"]
    """SD2-depth: hub id or local directory (decision 13: the maintained mirror by default)."""
    half_precision_weights: bool = True
    """fp16 weights on CUDA (threestudio's default); always fp32 on CPU."""
    load_depth_estimator: bool = True
    """Load SD2-depth's DPT: needed when the renders or the reference have no depth."""
    cond_image_path: str = ""
    """The reference RGBA (object in alpha; threestudio's `_rgba.png`). Required."""
    cond_depth_path: Optional[str] = None
    """The reference's disparity map (near = bright; threestudio's `_depth.png`); None: DPT."""
    use_caption_file: bool = True
    """With an empty `prompt`, read `<name>_caption.txt` next to the reference (decision 30)."""
    num_steps: int = setting(20, ge=1)
    """T: RGSD's grid (HiFi-123 Sup. §3.4)."""
    inject_steps: int = setting(12, ge=1)
    """S: lost in the paper; the official 30 of 50 scaled to T = 20 (decision 7; sweep 8-14)."""
    guidance_scale: float = setting(7.5, ge=0.0)
    """CFG on the target branch (paper §4.1, refine stage)."""
    depth_type: DepthType = "z"
    """The render depth passed in: "z" (distance, near small) or "disparity" (decision 11)."""
    depth_weighted_by_opacity: bool = True
    """threestudio's NeRF depth is sum w_i t_i: divide by the opacity first."""

    def validate(self, check_files: bool = True) -> None:
        """Check values (and, with `check_files`, that the files exist) without loading anything."""
        super().validate()
        if not self.load_depth_estimator and not self.cond_depth_path:
            raise ValueError(
                "load_depth_estimator is False but no cond_depth_path is given: the "
                "reference needs a depth map or the DPT estimator"
            )
        if not check_files:
            return
        if not self.cond_image_path:
            raise InputError(
                "no reference image given (cond_image_path is empty)",
                "the path of the reference RGBA image (<name>_rgba.png, object in the alpha "
                "channel)",
                "set cond_image_path=path/to/<name>_rgba.png in the config",
            )
        for key in ("cond_image_path", "cond_depth_path"):
            path = getattr(self, key)
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise InputError(
                    f"{key}: file not found: {path}", "an existing image file", f"fix {key}"
                )
        # read them now (cheap), so that an RGB photo or a colour "depth" map stops the run here
        from ..images import load_depth, load_rgba

        ref = load_rgba(
            os.path.expanduser(self.cond_image_path), role="reference image (cond_image_path)"
        )
        if self.cond_depth_path:
            load_depth(
                os.path.expanduser(self.cond_depth_path),
                ref.shape[:2],
                role="reference depth (cond_depth_path)",
            )

    def with_prompt(self) -> Tuple["RGNVGuidanceConfig", Optional[str]]:
        """These settings with the target prompt resolved (decision 30: an explicit `prompt` wins,
        then the caption file when `use_caption_file`); the second value says why there is no
        prompt at all (None when there is one)."""
        prompt, why = find_prompt(self.cond_image_path or None, self.prompt, self.use_caption_file)
        return replace(self, prompt=prompt or ""), (None if prompt is not None else why)


def load_pipeline_and_reference(cfg: RGNVGuidanceConfig, device=None):
    """Read the reference (and its depth) of validated settings, then load SD2-depth on `device`
    (fp16 only on CUDA with `half_precision_weights`). Returns (RGNVPipeline, reference RGBA,
    reference depth)."""
    from ...models.loader import load_diffusion
    from ..images import load_depth, load_rgba

    ref = load_rgba(
        os.path.expanduser(cfg.cond_image_path), role="reference image (cond_image_path)"
    )
    ref_depth = None
    if cfg.cond_depth_path:
        ref_depth = load_depth(
            os.path.expanduser(cfg.cond_depth_path),
            shape=ref.shape[:2],
            role="reference depth (cond_depth_path)",
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.float16 if cfg.half_precision_weights and device.type == "cuda" else torch.float32
    components = load_diffusion(
        cfg.pretrained_model_name_or_path,
        "pretrained_model_name_or_path",
        dtype=dtype,
        device=device,
        with_depth_estimator=cfg.load_depth_estimator,
    )
    return RGNVPipeline(components, cfg), ref, ref_depth


def move_pipeline(pipeline: RGNVPipeline, device) -> None:
    """Move the models (the reference K/V follow the UNet's device when injected)."""
    c = pipeline.c
    for m in (c.unet, c.vae, c.text_encoder, c.depth_estimator):
        if m is not None:
            m.to(device)
    pipeline._emb.clear()


# ------------------------------------------------------------------------------ render inputs
def object_mask(opacity: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """[B,H,W,1] float mask: opacity > 0.5, or all ones when the renderer gave no opacity."""
    if opacity is None:
        return torch.ones_like(like[..., :1])
    return (opacity.detach() > MASK_THRESHOLD).to(like.dtype)


def render_disparity(
    depth: torch.Tensor,
    opacity: Optional[torch.Tensor] = None,
    depth_type: str = "z",
    weighted_by_opacity: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Render depth [B,H,W,1] or [B,H,W] -> disparity [B,1,H,W] (near = large), 0 outside the mask.

    z-depth: 1 / z (after z / opacity when the renderer weighted it by opacity). Disparity: as
    given. Both masked with `object_mask(opacity)`; RGNV then min-max normalises inside the mask.
    """
    if depth_type not in DEPTH_TYPES:
        raise ValueError(f"depth_type must be one of {DEPTH_TYPES}, got {depth_type!r}")
    d = depth.detach().float()
    if d.dim() == 3:
        d = d[..., None]
    if opacity is not None and opacity.dim() == 3:
        opacity = opacity[..., None]
    if d.dim() != 4 or d.shape[-1] != 1:
        raise ValueError(f"depth must be [B,H,W,1] or [B,H,W], got {tuple(depth.shape)}")
    mask = object_mask(opacity, d).float()
    if depth_type == "z":
        if weighted_by_opacity and opacity is not None:
            d = d / opacity.detach().float().clamp_min(eps)
        d = 1.0 / d.clamp_min(eps)
    return (d * mask).permute(0, 3, 1, 2)


def check_render(
    rgb: torch.Tensor, opacity: Optional[torch.Tensor], depth: Optional[torch.Tensor]
) -> None:
    if not torch.is_tensor(rgb) or rgb.dim() != 4 or rgb.shape[-1] != 3:
        got = tuple(rgb.shape) if torch.is_tensor(rgb) else type(rgb).__name__
        raise ValueError(
            f"rgb must be a [B,H,W,3] tensor in [0,1] (threestudio comp_rgb), got {got}"
        )
    B, H, W, _ = rgb.shape
    if opacity is not None and tuple(opacity.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(
            f"opacity must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(opacity.shape)}"
        )
    if depth is not None and tuple(depth.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(
            f"depth must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(depth.shape)}"
        )


def resize_to(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """[B,C,h,w] -> [B,C,H,W] (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


def surface_distance(
    positions: torch.Tensor, camera_positions: torch.Tensor, hit: torch.Tensor
) -> torch.Tensor:
    """Per-pixel distance [B,H,W,1] from the camera centre [B,3] to rasterised world positions
    [B,H,W,3]; 0 where `hit` [B,H,W,1] is False (the mesh renderer's `depth`)."""
    d = (positions - camera_positions[:, None, None, :]).norm(dim=-1, keepdim=True)
    return torch.where(hit, d, torch.zeros_like(d))
