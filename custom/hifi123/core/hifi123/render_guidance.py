"""What the RGNV-based training losses share: settings, model + reference loading, render inputs.

Two losses drive 3D optimisation with the RGNV pipeline: the image-space RGNV loss
(`core/hifi123/rgnv_loss.py`, HiFi-123 Fig. 4c) and RGSD (`core/hifi123/rgsd.py`, HiFi-123 §3.3). Both take
threestudio renders (rgb [B,H,W,3], opacity [B,H,W,1], depth [B,H,W,1]), both run SD2-depth with
the reference branch cached once, and both use the refine-stage sampler settings (decision 7).

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
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ...errors import InputError
from ...models.loader import DEFAULT_MODELS
from .rgnv import BACKGROUNDS, RGNVConfig, RGNVPipeline

DEPTH_TYPES = ("z", "disparity")
MASK_THRESHOLD = 0.5


@dataclass
class RGNVGuidanceConfig:
    """Settings shared by the RGNV image loss and RGSD (subclasses add their own)."""

    # model (decision 13: hub id or local directory; the sd2-community SD2-depth mirror by default)
    pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_depth"]
    half_precision_weights: bool = True  # fp16 weights on CUDA (threestudio's default); fp32 on CPU
    load_depth_estimator: bool = True  # SD2-depth's DPT; needed when renders or reference lack depth
    # reference (RGBA, object in alpha; threestudio `_rgba.png`) and optional disparity map
    reference_image_path: Optional[str] = None
    reference_depth_path: Optional[str] = None  # near = bright (threestudio `_depth.png`); else DPT
    # RGNV sampler (decisions 1, 2, 7)
    num_steps: int = 20  # T: RGSD's grid (HiFi-123 Sup. §3.4)
    steps_offset: Optional[int] = 0  # DDIM grid offset: 0 as the official RGNV script; None: the model's
    inject_steps: int = 12  # S: lost in the paper; 30/50 scaled to T = 20 (decision 7; sweep 8-14)
    guidance_scale: float = 7.5  # CFG on the target branch (paper §4.1 refine stage)
    cfg_form: str = "textbook"  # eps_u + s (eps_c - eps_u), as the official RGNV code
    prompt: str = ""  # target prompt: the image caption (decision 7)
    negative_prompt: str = ""  # unconditional prompt of the target branch (decision 7)
    reference_prompt: str = ""  # reference branch unguided with the empty prompt (decision 2)
    inject_blocks: Tuple[int, ...] = (12, 13, 14, 15)  # SD2 transformer blocks (decision 2)
    mask_reference_depth: bool = True  # paper (decision 4); False = official code
    reference_background: str = "texture"  # decision 5
    coarse_background: str = "grey"  # official constant (126, 129, 127)
    texture_seed: int = 0
    cache_device: Optional[str] = None  # where the reference K/V cache lives ("cpu" saves VRAM)
    # render depth (decision 11)
    depth_type: str = "z"  # render depth given as "z" (distance, near small) or "disparity"
    depth_weighted_by_opacity: bool = True  # threestudio NeRF depth is sum w_i t_i: divide by opacity

    def _choices(self) -> Tuple[Tuple[str, tuple], ...]:
        """(field, allowed values) pairs checked by `validate`; subclasses extend."""
        return (("depth_type", DEPTH_TYPES), ("reference_background", BACKGROUNDS), ("coarse_background", BACKGROUNDS))

    def validate(self, check_files: bool = True, field_names: Optional[Dict[str, str]] = None) -> None:
        """Check values (and, optionally, that the files exist) without loading anything.
        `field_names` maps our field names to the caller's (an adapter's config) for messages."""
        names = field_names or {}

        def n(key: str) -> str:
            return names.get(key, key)

        for key, allowed in self._choices():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{n(key)} must be one of {allowed}, got {getattr(self, key)!r}")
        self.rgnv_config().validate()
        if not self.load_depth_estimator and not self.reference_depth_path:
            raise ValueError(
                f"load_depth_estimator is False but no {n('reference_depth_path')} is given: the "
                "reference needs a depth map or the DPT estimator"
            )
        if not check_files:
            return
        if not self.reference_image_path:
            raise InputError(
                f"no reference image given ({n('reference_image_path')} is empty)",
                "the path of the reference RGBA image (<name>_rgba.png, object in the alpha channel)",
                f"set {n('reference_image_path')}=path/to/<name>_rgba.png in the config",
            )
        for key in ("reference_image_path", "reference_depth_path"):
            path = getattr(self, key)
            if path and not os.path.isfile(os.path.expanduser(path)):
                raise InputError(f"{n(key)}: file not found: {path}", "an existing image file", f"fix {n(key)}")

    def rgnv_config(self) -> RGNVConfig:
        """The RGNV pipeline settings (the fields both configs share, by name); injection on."""
        names = {f.name for f in fields(RGNVConfig)}
        kw = {k: getattr(self, k) for k in names if hasattr(self, k)}
        kw["inject_blocks"] = tuple(int(b) for b in kw["inject_blocks"])
        return RGNVConfig(**kw)


def load_pipeline_and_reference(cfg: RGNVGuidanceConfig, device=None, field_names: Optional[Dict[str, str]] = None):
    """Validate `cfg`, read the reference (and its depth), then load SD2-depth on `device` (fp16 only
    on CUDA with `half_precision_weights`). Returns (RGNVPipeline, reference RGBA, reference depth)."""
    from ...models.loader import load_diffusion
    from ..images import load_depth, load_rgba

    names = field_names or {}
    cfg.validate(field_names=names)
    img_field = names.get("reference_image_path", "reference_image_path")
    ref = load_rgba(os.path.expanduser(cfg.reference_image_path), role=f"reference image ({img_field})")
    ref_depth = None
    if cfg.reference_depth_path:
        depth_field = names.get("reference_depth_path", "reference_depth_path")
        ref_depth = load_depth(
            os.path.expanduser(cfg.reference_depth_path), shape=ref.shape[:2], role=f"reference depth ({depth_field})"
        )
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = torch.float16 if cfg.half_precision_weights and device.type == "cuda" else torch.float32
    components = load_diffusion(
        cfg.pretrained_model_name_or_path, names.get("pretrained_model_name_or_path", "pretrained_model_name_or_path"),
        dtype=dtype, device=device, with_depth_estimator=cfg.load_depth_estimator,
    )
    return RGNVPipeline(components, cfg.rgnv_config()), ref, ref_depth


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


def check_render(rgb: torch.Tensor, opacity: Optional[torch.Tensor], depth: Optional[torch.Tensor]) -> None:
    if not torch.is_tensor(rgb) or rgb.dim() != 4 or rgb.shape[-1] != 3:
        got = tuple(rgb.shape) if torch.is_tensor(rgb) else type(rgb).__name__
        raise ValueError(f"rgb must be a [B,H,W,3] tensor in [0,1] (threestudio comp_rgb), got {got}")
    B, H, W, _ = rgb.shape
    if opacity is not None and tuple(opacity.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(f"opacity must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(opacity.shape)}")
    if depth is not None and tuple(depth.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(f"depth must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(depth.shape)}")


def resize_to(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """[B,C,h,w] -> [B,C,H,W] (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


def surface_distance(positions: torch.Tensor, camera_positions: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """Per-pixel distance [B,H,W,1] from the camera centre [B,3] to rasterised world positions
    [B,H,W,3]; 0 where `hit` [B,H,W,1] is False (the mesh renderer's `depth`)."""
    d = (positions - camera_positions[:, None, None, :]).norm(dim=-1, keepdim=True)
    return torch.where(hit, d, torch.zeros_like(d))
