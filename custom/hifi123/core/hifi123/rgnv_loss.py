"""RGNV image loss: the "image loss" variant of HiFi-123 §3.3 (Fig. 4c).

Render a novel view, enhance it with RGNV (§3.2, `hifi123.core.hifi123.rgnv`) using the render
itself as the coarse view, and regress the render onto the enhanced image in image space:

    L = D(g(θ, c), sg(RGNV(g(θ, c), d_c; x_ref)))

with D the per-pixel squared (default) or absolute difference, averaged over the pixels and
channels of each view and summed over the batch divided by B (threestudio's reduction, which is
the plain mean). sg is stop-gradient: the target is computed under `torch.no_grad` from a
detached copy of the render, so the gradient is d L / d rgb = 2 (rgb - target) / N for MSE.

The paper reports that this variant over-smooths (inconsistent enhancements of overlapping views
average out) and proposes RGSD instead; we provide it as the ablation baseline and as the simplest
consumer of the RGNV pipeline inside an optimisation loop.

Inputs and conventions
----------------------
* `rgb` [B,H,W,3] in [0,1] (threestudio's `comp_rgb`), any size; the enhanced target is resized
  back to H x W.
* `opacity` [B,H,W,1] (threestudio's `opacity`): the object mask is `opacity > 0.5`, the same
  threshold RGNV applies to an alpha channel. We do NOT derive a mask from the image: when the
  renderer's opacity is not given the whole frame is treated as the object (all-ones mask), so
  the background is enhanced and supervised too.
* `depth` [B,H,W,1] or [B,H,W] of the render, the depth condition of the coarse view
  (decision 11): `depth_type="z"` (distance, near = small; converted to disparity 1 / z inside
  the mask, 0 outside) or `"disparity"` (near = large; masked). threestudio's NeRF renderers
  return the opacity-WEIGHTED distance (sum of w_i t_i), so by default z is divided by the
  opacity first (`depth_weighted_by_opacity`). Without depth, DPT estimates it on the composited
  render (the paper's NVS setting).
* Outside the mask the target is, by default, the render itself (`target_background="render"`):
  no loss and no gradient on the background, whatever colour the system's background has. With
  `"white"` the target is RGNV's output composited on white (pushes the background to white).

Cost per call: the reference branch (2 S UNet evaluations) is built ONCE, lazily on the first
call, and reused; every call then costs S inversion evaluations plus S CFG-batched denoising
evaluations (the target is recomputed on every call).

Devices: the RGNV pipeline takes its inputs on the CPU (it composites on CPU backgrounds) and runs
the models on their own device; the target is returned on the render's device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Literal, Optional, Sequence, Tuple, Union, get_args

import torch

# re-exported: object_mask, render_disparity, DEPTH_TYPES
from .render_guidance import (  # noqa: F401
    DEPTH_TYPES,
    MASK_THRESHOLD,
    RGNVGuidanceConfig,
    check_render,
    load_pipeline_and_reference,
    move_pipeline,
    object_mask,
    render_disparity,
    resize_to,
)
from .rgnv import ReferenceCache, RGNVPipeline

LossType = Literal["mse", "l1"]
LOSS_TYPES = get_args(LossType)
TargetBackground = Literal["render", "white"]
TARGET_BACKGROUNDS = get_args(TargetBackground)


@dataclass
class RGNVLossConfig(RGNVGuidanceConfig):
    """Every setting of the RGNV image loss: the shared RGNV-guidance settings (model, reference,
    sampler, render depth; `core/hifi123/render_guidance.py`) plus the loss's own."""

    loss_type: LossType = "mse"
    """Image-space distance, squared or absolute (the paper says "reconstruction loss")."""
    target_background: TargetBackground = "render"
    """Outside the mask: the render itself (no loss there) or white."""


@dataclass
class RGNVLossOutput:
    loss: torch.Tensor  # scalar, with a graph back to rgb
    target: torch.Tensor  # [B,H,W,3] enhanced target (detached), on rgb's device
    mask: torch.Tensor  # [B,H,W,1] object mask used for the target (float 0/1)
    enhanced: torch.Tensor  # [B,H,W,3] RGNV's decoded output before compositing, resized
    inputs: torch.Tensor  # [B,H,W,3] the coarse views as fed to RGNV (composited), resized
    logs: Dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars


# ------------------------------------------------------------------------------ pure functions
def image_distance(rgb: torch.Tensor, target: torch.Tensor, loss_type: str = "mse") -> torch.Tensor:
    """Image-space distance with a stop-gradient on `target`: per-view mean over pixels and
    channels, summed over the batch and divided by B. rgb, target: [B,H,W,C]."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if rgb.shape != target.shape:
        raise ValueError(f"rgb {tuple(rgb.shape)} and target {tuple(target.shape)} differ in shape")
    diff = rgb - target.detach().to(rgb)
    per_pixel = diff.square() if loss_type == "mse" else diff.abs()
    return per_pixel.flatten(1).mean(1).sum() / rgb.shape[0]


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------ the loss
class RGNVImageLoss:
    """RGNV image loss on a loaded `RGNVPipeline` with a fixed reference.

    `reference`: RGBA [H,W,4] float array in [0,1] (or [1,4,H,W] tensor); `reference_depth`: the
    reference's disparity map or None (DPT). The reference branch is built on the first call and
    reused while the pipeline's (T, S, layers, reference prompt) stay the same.
    """

    def __init__(
        self,
        pipeline: RGNVPipeline,
        reference,
        reference_depth=None,
        config: Optional[RGNVLossConfig] = None,
    ) -> None:
        self.cfg = config or RGNVLossConfig()
        self.cfg.validate(check_files=False)
        self.pipeline = pipeline
        self.reference = reference
        self.reference_depth = reference_depth
        self._cache: Optional[ReferenceCache] = None
        self.reference_builds = 0  # how often the reference branch ran (1 in normal use)

    @classmethod
    def from_config(
        cls,
        cfg: RGNVLossConfig,
        device: Optional[Union[str, torch.device]] = None,
    ) -> "RGNVImageLoss":
        """Check `cfg` (files included), read the reference, then load the model (fp16 only on
        CUDA) on `device`."""
        cfg.validate()
        pipeline, ref, ref_depth = load_pipeline_and_reference(cfg, device)
        return cls(pipeline, ref, ref_depth, cfg)

    # -------------------------------------------------------------------------- state
    @property
    def device(self) -> torch.device:
        return self.pipeline.c.device

    def to(self, device: Union[str, torch.device]) -> "RGNVImageLoss":
        """Move the models (not the reference cache, whose K/V follow the UNet when injected)."""
        move_pipeline(self.pipeline, device)
        return self

    def reference_cache(self) -> ReferenceCache:
        """The reference branch, built on first use and reused afterwards."""
        if self._cache is None or self._cache.key != self.pipeline.cache_key():
            self._cache = self.pipeline.build_reference(self.reference, self.reference_depth)
            self.reference_builds += 1
        return self._cache

    def reset(self) -> None:
        """Forget the reference cache (e.g. after changing the reference)."""
        self._cache = None

    # -------------------------------------------------------------------------- the call
    @torch.no_grad()
    def enhance(
        self,
        rgb: torch.Tensor,
        opacity: Optional[torch.Tensor] = None,
        depth: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stop-gradient target for renders rgb [B,H,W,3].

        Returns (target, mask, enhanced, inputs), each [B,H,W,C] on rgb's device and dtype.
        """
        check_render(rgb, opacity, depth)
        if depth is None and self.pipeline.depth_estimator is None:
            raise ValueError(
                "no render depth given and no depth estimator loaded: pass the renderer's depth "
                "or set load_depth_estimator=True"
            )
        if opacity is not None and opacity.dim() == 3:
            opacity = opacity[..., None]
        B, H, W, _ = rgb.shape
        x = rgb.detach().float().clamp(0, 1)  # stays on the render's device
        mask = object_mask(None if opacity is None else opacity.detach().float(), x)  # [B,H,W,1]
        alpha = mask if opacity is None else opacity.detach().float().clamp(0, 1)
        views = [
            torch.cat([x[i : i + 1], alpha[i : i + 1]], -1).permute(0, 3, 1, 2) for i in range(B)
        ]
        depths: Optional[Sequence] = None
        if depth is not None:
            disp = render_disparity(
                depth.detach(),
                None if opacity is None else opacity.detach(),
                self.cfg.depth_type,
                self.cfg.depth_weighted_by_opacity,
            )
            depths = [disp[i : i + 1] for i in range(B)]
        out = self.pipeline.enhance(self.reference_cache(), views, depths, batch_size=B)
        enhanced = _nhwc(resize_to(out.raw.float().to(x.device), (H, W))).clamp(0, 1)
        inputs = _nhwc(resize_to(out.inputs.float().to(x.device), (H, W))).clamp(0, 1)
        background = x if self.cfg.target_background == "render" else torch.ones_like(x)
        target = enhanced * mask + background * (1.0 - mask)
        to = dict(device=rgb.device, dtype=rgb.dtype)
        return target.to(**to), mask.to(**to), enhanced.to(**to), inputs.to(**to)

    def __call__(
        self,
        rgb: torch.Tensor,
        opacity: Optional[torch.Tensor] = None,
        depth: Optional[torch.Tensor] = None,
    ) -> RGNVLossOutput:
        """Enhance the renders (no grad) and return the image-space loss against them."""
        target, mask, enhanced, inputs = self.enhance(rgb, opacity, depth)
        loss = image_distance(rgb, target, self.cfg.loss_type)
        with torch.no_grad():
            mse = image_distance(rgb.detach().float(), target.float(), "mse")
            logs = {
                "mse": mse,
                "l1": image_distance(rgb.detach().float(), target.float(), "l1"),
                "psnr": -10.0 * torch.log10(mse.clamp_min(1e-10)),
                "mask_fraction": mask.float().mean(),
            }
        return RGNVLossOutput(loss, target, mask, enhanced, inputs, logs)


__all__ = [
    "RGNVLossConfig",
    "RGNVLossOutput",
    "RGNVImageLoss",
    "image_distance",
    "object_mask",
    "render_disparity",
    "LOSS_TYPES",
    "DEPTH_TYPES",
    "TARGET_BACKGROUNDS",
]
