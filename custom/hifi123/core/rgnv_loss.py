"""RGNV image loss: the "image loss" variant of HiFi-123 §3.3 (Fig. 4c).

Render a novel view, enhance it with RGNV (§3.2, `hifi123.core.rgnv`) using the render itself as
the coarse view, and regress the render onto the enhanced image in image space:

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

import os
from dataclasses import dataclass, field, fields
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..models.loader import DEFAULT_MODELS
from .rgnv import BACKGROUNDS, ReferenceCache, RGNVConfig, RGNVPipeline

LOSS_TYPES = ("mse", "l1")
DEPTH_TYPES = ("z", "disparity")
TARGET_BACKGROUNDS = ("render", "white")
MASK_THRESHOLD = 0.5  # object = opacity > 0.5, as RGNVPipeline.prepare thresholds alpha


@dataclass
class RGNVLossConfig:
    """Every setting of the RGNV image loss. RGNV defaults follow the refine stage (decision 7)."""

    # model (decision 13: hub id or local directory; the loader's SD2-depth mirror by default)
    pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_depth"]
    half_precision_weights: bool = True  # fp16 weights on CUDA (threestudio's default); fp32 on CPU
    load_depth_estimator: bool = True  # SD2-depth's DPT; needed when renders or reference lack depth
    # reference (RGBA, object in alpha; threestudio `_rgba.png`) and optional disparity map
    reference_image_path: Optional[str] = None
    reference_depth_path: Optional[str] = None  # near = bright (threestudio `_depth.png`); else DPT
    # RGNV sampler (decisions 1, 2, 7)
    num_steps: int = 20  # T: RGSD's grid (Sup. §3.4), so the ablation differs from RGSD only in the loss
    inject_steps: int = 12  # S: 30/50 scaled to T = 20 (decision 7)
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
    # the loss
    loss_type: str = "mse"  # image-space distance: "mse" or "l1" (the paper says "reconstruction loss")
    depth_type: str = "z"  # render depth given as "z" (distance, near small) or "disparity"
    depth_weighted_by_opacity: bool = True  # threestudio NeRF depth is sum w_i t_i: divide by opacity
    target_background: str = "render"  # outside the mask: "render" (no loss) or "white"

    def validate(self, check_files: bool = True, field_names: Optional[Dict[str, str]] = None) -> None:
        """Check values (and, optionally, that the files exist) without loading anything.

        `field_names` maps our field names to the caller's (an adapter's config) for the messages.
        """
        names = field_names or {}

        def n(key: str) -> str:
            return names.get(key, key)

        for key, allowed in (
            ("loss_type", LOSS_TYPES),
            ("depth_type", DEPTH_TYPES),
            ("target_background", TARGET_BACKGROUNDS),
            ("reference_background", BACKGROUNDS),
            ("coarse_background", BACKGROUNDS),
        ):
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
        """The RGNV pipeline settings (the fields both configs share, by name)."""
        names = {f.name for f in fields(RGNVConfig)}
        kw = {k: getattr(self, k) for k in names if hasattr(self, k)}
        kw["inject_blocks"] = tuple(int(b) for b in kw["inject_blocks"])
        return RGNVConfig(**kw)


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


def _resize_to(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """[B,C,h,w] -> [B,C,H,W] (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=shrink)


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
        field_names: Optional[Dict[str, str]] = None,
    ) -> "RGNVImageLoss":
        """Validate `cfg`, read the reference, then load the model (fp16 only on CUDA) on `device`.
        `field_names` renames config fields in error messages (see `RGNVLossConfig.validate`)."""
        from ..models.loader import load_diffusion
        from .images import load_depth, load_rgba

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
            cfg.pretrained_model_name_or_path, "pretrained_model_name_or_path",
            dtype=dtype, device=device, with_depth_estimator=cfg.load_depth_estimator,
        )
        return cls(RGNVPipeline(components, cfg.rgnv_config()), ref, ref_depth, cfg)

    # -------------------------------------------------------------------------- state
    @property
    def device(self) -> torch.device:
        return self.pipeline.c.device

    def to(self, device: Union[str, torch.device]) -> "RGNVImageLoss":
        """Move the models (not the reference cache, whose K/V follow the UNet when injected)."""
        c = self.pipeline.c
        for m in (c.unet, c.vae, c.text_encoder, c.depth_estimator):
            if m is not None:
                m.to(device)
        self.pipeline._emb.clear()
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
        _check_render(rgb, opacity, depth)
        if depth is None and self.pipeline.depth_estimator is None:
            raise ValueError(
                "no render depth given and no depth estimator loaded: pass the renderer's depth "
                "or set load_depth_estimator=True"
            )
        if opacity is not None and opacity.dim() == 3:
            opacity = opacity[..., None]
        B, H, W, _ = rgb.shape
        x = rgb.detach().float().cpu().clamp(0, 1)
        mask = object_mask(None if opacity is None else opacity.float().cpu(), x)  # [B,H,W,1]
        alpha = mask if opacity is None else opacity.detach().float().cpu().clamp(0, 1)
        views = [torch.cat([x[i : i + 1], alpha[i : i + 1]], -1).permute(0, 3, 1, 2) for i in range(B)]
        depths: Optional[Sequence] = None
        if depth is not None:
            disp = render_disparity(
                depth.cpu(), None if opacity is None else opacity.cpu(),
                self.cfg.depth_type, self.cfg.depth_weighted_by_opacity,
            )
            depths = [disp[i : i + 1] for i in range(B)]
        out = self.pipeline.enhance(self.reference_cache(), views, depths, batch_size=B)
        enhanced = _nhwc(_resize_to(out.raw.float().cpu(), (H, W))).clamp(0, 1)
        inputs = _nhwc(_resize_to(out.inputs.float().cpu(), (H, W))).clamp(0, 1)
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


def _check_render(rgb: torch.Tensor, opacity: Optional[torch.Tensor], depth: Optional[torch.Tensor]) -> None:
    if not torch.is_tensor(rgb) or rgb.dim() != 4 or rgb.shape[-1] != 3:
        got = tuple(rgb.shape) if torch.is_tensor(rgb) else type(rgb).__name__
        raise ValueError(f"rgb must be a [B,H,W,3] tensor in [0,1] (threestudio comp_rgb), got {got}")
    B, H, W, _ = rgb.shape
    if opacity is not None and tuple(opacity.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(f"opacity must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(opacity.shape)}")
    if depth is not None and tuple(depth.shape) not in ((B, H, W, 1), (B, H, W)):
        raise ValueError(f"depth must be [B,H,W,1] like rgb {tuple(rgb.shape)}, got {tuple(depth.shape)}")


__all__ = [
    "RGNVLossConfig", "RGNVLossOutput", "RGNVImageLoss", "image_distance", "object_mask",
    "render_disparity", "LOSS_TYPES", "DEPTH_TYPES", "TARGET_BACKGROUNDS",
]
