"""`hifi123-rgnv-guidance`: the RGNV image loss (HiFi-123 §3.3, Fig. 4c) as a threestudio guidance.

A thin shell around :class:`hifi123.core.hifi123.rgnv_loss.RGNVImageLoss`. It is a `BaseObject` (not
an `nn.Module`), so the SD2-depth weights never enter the Lightning checkpoint; the reference branch
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

Device: threestudio's `BaseObject.__init__` sets `self.device = get_device`, which is always
CUDA. This class never uses it: the model is loaded lazily on the first call, on the device of
`rgb` (fp16 there if `half_precision_weights` and CUDA), and `self.device` then reports that
device. `configure` only validates the config and the files, so errors surface before any model
is loaded.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from threestudio.utils.base import BaseObject

from ...core.hifi123.rgnv_loss import RGNVImageLoss, RGNVLossConfig
from ...core.settings import derive_config
from ..registry import StrictConfig, check_guidance_call, register
from .rgnv_common import LazyRGNVCore


@register("hifi123-rgnv-guidance")
class RGNVGuidance(StrictConfig, LazyRGNVCore, BaseObject):
    # every setting is declared once, in the core `RGNVLossConfig`
    Config = derive_config(RGNVLossConfig, BaseObject.Config, "RGNVGuidanceConfig")

    cfg: Config
    core_config_cls = RGNVLossConfig
    core_cls = RGNVImageLoss

    def configure(self) -> None:
        self.setup_core()  # values and files, before any model

    @property
    def loss_fn(self) -> Optional[RGNVImageLoss]:
        return self.core

    def core_device(self) -> torch.device:
        return self.core.device

    def move_core(self, device: torch.device) -> None:
        self.core.to(device)

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
        check_guidance_call("hifi123-rgnv-guidance", args, rgb_as_latents, latents_ok=False)
        out = self.core_on(rgb.device)(rgb, opacity=opacity, depth=depth)
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
