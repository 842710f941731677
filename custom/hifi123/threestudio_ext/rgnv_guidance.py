"""`hifi123-rgnv-guidance`: the RGNV image loss (HiFi-123 §3.3, Fig. 4c) as a threestudio guidance.

A thin shell around :class:`hifi123.core.rgnv_loss.RGNVImageLoss`. It is a `BaseObject` (not an
`nn.Module`), so the SD2-depth weights never enter the Lightning checkpoint; the reference branch
is rebuilt deterministically on the first call after a resume.

Call (threestudio's guidance contract, section 3 of docs/threestudio.md)::

    out = guidance(comp_rgb, [prompt_utils,] **batch, opacity=out["opacity"], depth=out["depth"])
    out["loss_rgnv"]    # weight it with `system.loss.lambda_rgnv`

* A positional `prompt_utils` (text-guidance style) is accepted and ignored: the target prompt is
  the `prompt` config field, so the guidance works in zero123-style calls (`guidance(rgb,
  **batch)`) and SD-style calls alike. Camera arguments and other batch keys are ignored.
* `opacity` and `depth` are the renderer's outputs for the same views (optional; see the core
  module for the conventions). They are not batch keys, so the system passes them explicitly.
* `rgb_as_latents=True` is refused (this is an image-space loss).
* With `guidance_eval=True` an `eval` dict in threestudio's layout is returned: `imgs_noisy` is
  the coarse view as RGNV saw it, `imgs_1step`/`imgs_1orig` the decoded enhancement, `imgs_final`
  the target.

Device: threestudio's `BaseObject.__init__` sets `self.device = get_device()`, which is always
CUDA. This class never uses it: the model is loaded lazily on the first call, on the device of
`rgb` (fp16 there if `half_precision_weights` and CUDA), and `self.device` then reports that
device. `configure` only validates the config and the files, so errors surface before any model
is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import threestudio  # noqa: F401  (adapters may import threestudio; the core never does)
import torch
from threestudio.utils.base import BaseObject

from ..core.rgnv_loss import RGNVImageLoss, RGNVLossConfig
from ..models.loader import DEFAULT_MODELS
from .registry import register

#: adapter field -> core field, where threestudio's naming differs from ours
RENAMED = {"cond_image_path": "reference_image_path", "cond_depth_path": "reference_depth_path"}
#: core field -> adapter field, for error messages
FIELD_NAMES = {core: ours for ours, core in RENAMED.items()}


@register("hifi123-rgnv-guidance")
class RGNVGuidance(BaseObject):
    @dataclass
    class Config(BaseObject.Config):
        # every field mirrors RGNVLossConfig (hifi123.core.rgnv_loss); see there for the sources
        pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_depth"]  # hub id or local dir
        half_precision_weights: bool = True  # fp16 on CUDA; ignored on CPU
        load_depth_estimator: bool = True  # DPT, for renders/reference without depth
        cond_image_path: str = ""  # reference RGBA (threestudio's zero123 field name); required
        cond_depth_path: Optional[str] = None  # reference disparity map (near bright); else DPT
        num_steps: int = 20  # T (decision 7)
        inject_steps: int = 12  # S (decision 7)
        guidance_scale: float = 7.5  # CFG on the target branch (paper §4.1)
        cfg_form: str = "textbook"  # eps_u + s (eps_c - eps_u) (official RGNV code)
        prompt: str = ""  # target prompt, e.g. the image caption (decision 7)
        negative_prompt: str = ""
        reference_prompt: str = ""  # reference branch unguided (decision 2)
        inject_blocks: List[int] = field(default_factory=lambda: [12, 13, 14, 15])  # decision 2
        mask_reference_depth: bool = True  # paper (decision 4)
        reference_background: str = "texture"  # decision 5
        coarse_background: str = "grey"  # official constant grey
        texture_seed: int = 0
        cache_device: Optional[str] = None  # "cpu" keeps the reference K/V off the GPU
        loss_type: str = "mse"  # "mse" or "l1"
        depth_type: str = "z"  # the depth passed in is "z" (distance) or "disparity"
        depth_weighted_by_opacity: bool = True  # NeRF renderers return sum w_i t_i
        target_background: str = "render"  # outside the mask: "render" (no loss) or "white"

    cfg: Config

    def configure(self) -> None:
        self.core_config = self.to_core_config()
        self.core_config.validate(field_names=FIELD_NAMES)  # values and files, before any model
        self.loss_fn: Optional[RGNVImageLoss] = None
        self.device = None  # set from the first input; threestudio's get_device() is CUDA-only

    def to_core_config(self) -> RGNVLossConfig:
        kw: Dict[str, Any] = {}
        for name in self.Config.__dataclass_fields__:
            if name == "weights":  # BaseModule-only field, should a subclass add it
                continue
            value = getattr(self.cfg, name)
            if name == "inject_blocks":
                value = tuple(int(b) for b in value)
            kw[RENAMED.get(name, name)] = value
        return RGNVLossConfig(**kw)

    def _loss_on(self, device: torch.device) -> RGNVImageLoss:
        if self.loss_fn is None:
            threestudio.info(f"hifi123-rgnv-guidance: loading {self.cfg.pretrained_model_name_or_path} on {device}")
            self.loss_fn = RGNVImageLoss.from_config(self.core_config, device, FIELD_NAMES)
        elif self.loss_fn.device != device:
            self.loss_fn.to(device)
        self.device = device
        return self.loss_fn

    def __call__(
        self,
        rgb: torch.Tensor,
        *args,  # an optional prompt_utils (ignored: the prompt is a config field)
        elevation: Optional[torch.Tensor] = None,
        azimuth: Optional[torch.Tensor] = None,
        camera_distances: Optional[torch.Tensor] = None,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        depth: Optional[torch.Tensor] = None,
        opacity: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, Any]:
        if rgb_as_latents:
            raise ValueError("hifi123-rgnv-guidance is an image-space loss: call it with rgb_as_latents=False")
        if len(args) > 1:
            raise TypeError(
                "hifi123-rgnv-guidance takes rgb and at most one positional argument (prompt_utils); "
                "pass elevation/azimuth/camera_distances by keyword (**batch)"
            )
        out = self._loss_on(rgb.device)(rgb, opacity=opacity, depth=depth)
        result: Dict[str, Any] = {"loss_rgnv": out.loss, "rgnv_target": out.target.detach()}
        result.update({f"rgnv_{k}": v for k, v in out.logs.items()})
        if guidance_eval:
            bs = rgb.shape[0]
            result["eval"] = {
                "bs": bs,
                "noise_levels": [self.cfg.inject_steps / self.cfg.num_steps] * bs,
                "imgs_noisy": out.inputs,
                "imgs_1step": out.enhanced,
                "imgs_1orig": out.enhanced,
                "imgs_final": out.target,
                "texts": [f"rgnv S={self.cfg.inject_steps}/{self.cfg.num_steps}"] * bs,
            }
        return result
