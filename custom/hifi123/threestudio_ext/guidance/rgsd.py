"""`hifi123-rgsd-guidance`: RGSD (HiFi-123 §3.3) as a threestudio guidance.

A thin shell around :class:`hifi123.core.hifi123.rgsd.RGSD` (see there for the math and decisions
7-11).

Call (threestudio's guidance contract)::

    out = guidance(comp_rgb, [prompt_utils,] **batch, opacity=out["opacity"], depth=out["depth"])
    out["loss_rgsd"]     # weight with system.loss.lambda_rgsd

* Random views (the default call): the t > 0 branch, t ~ U{1..S}; the loss is the ā_t-weighted
  latent MSE against the RGNV pipeline's clean prediction (stop-gradient).
* Fixed views: pass `fixed_view_index=j` (int or [B] ints) with renders of the fixed cameras
  (`fixed_cameras()`); the t = 0 branch regresses onto the enhanced latents that
  `compute_fixed_targets()` computed once at the start of refinement. `hifi123-system` does this on
  alternate iterations and keeps the targets in its checkpoint (`state_dict` / `load_state_dict`).
* In other systems (zero123-system, magic123-system, ...) only the random-view branch runs, by
  config alone: magic123-system weights every `loss_*` of `guidance_3d` with `lambda_3d_*` (add
  `lambda_3d_rgsd`); zero123-system reads `loss_sds`, so set `loss_name: sds` there.
* `opacity` / `depth` are the renderer's outputs (not batch keys; our system passes them). Without
  them the whole frame is the object and DPT estimates the depth.
* A positional `prompt_utils` is accepted and ignored: the prompt is the `prompt` field, or the
  caption file next to `cond_image_path` when `prompt` is empty.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from threestudio.utils.base import BaseObject

from ...core.hifi123.rgsd import RGSD, RGSDConfig, relative_fixed_cameras
from ...core.settings import derive_config
from ..registry import StrictConfig, check_guidance_call, register
from .rgnv_common import LazyRGNVCore


@register("hifi123-rgsd-guidance")
class RGSDGuidance(StrictConfig, LazyRGNVCore, BaseObject):
    # every setting is declared once, in the core `RGSDConfig`
    Config = derive_config(
        RGSDConfig,
        BaseObject.Config,
        "RGSDGuidanceConfig",
        extra=[("loss_name", str, "rgsd")],  # returns loss_<loss_name>: "sds" for zero123-system
    )

    cfg: Config
    core_config_cls = RGSDConfig
    core_cls = RGSD

    def configure(self) -> None:
        self.setup_core()
        self._pending_state: Optional[Dict[str, Any]] = None

    def core_device(self) -> torch.device:
        return self.core.pipe.c.device

    def move_core(self, device: torch.device) -> None:
        from ...core.hifi123.render_guidance import move_pipeline

        move_pipeline(self.core.pipe, device)

    def core_on(self, device: torch.device) -> RGSD:
        core = super().core_on(device)
        if self._pending_state is not None:  # restored from a checkpoint before the model loaded
            core.load_state_dict(self._pending_state)
            self._pending_state = None
        return core

    # ------------------------------------------------------------------ for the system
    def fixed_cameras(self, ref_elevation: float, ref_azimuth: float):
        """Absolute (elevation, azimuth) of the fixed views, in degrees."""
        return relative_fixed_cameras(self.core_config.fixed_views, ref_elevation, ref_azimuth)

    @property
    def has_fixed_targets(self) -> bool:
        if self.core is not None:
            return self.core.fixed_targets is not None
        return (
            self._pending_state is not None and self._pending_state.get("fixed_targets") is not None
        )

    @torch.no_grad()
    def compute_fixed_targets(self, rgb, opacity=None, depth=None) -> torch.Tensor:
        return self.core_on(rgb.device).compute_fixed_targets(rgb, opacity, depth)

    def state_dict(self) -> Dict[str, Any]:
        if self.core is None:
            return dict(self._pending_state or {"fixed_targets": None})
        return self.core.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.core is None:
            RGSD.check_state(state, self.core_config)  # fail now, not at the first call
            self._pending_state = dict(state)
        else:
            self.core.load_state_dict(state)

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        rgb: torch.Tensor,
        *args,  # an optional prompt_utils (ignored: the prompt is a config field)
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        depth: Optional[torch.Tensor] = None,
        opacity: Optional[torch.Tensor] = None,
        fixed_view_index=None,
        rgsd_t: Optional[int] = None,
        **kwargs,
    ) -> Dict[str, Any]:
        check_guidance_call("hifi123-rgsd-guidance", args, rgb_as_latents, latents_ok=False)
        core = self.core_on(rgb.device)
        if fixed_view_index is not None:
            out = core.loss_fixed(rgb, fixed_view_index, opacity, depth)
        else:
            out = core.loss_random(rgb, opacity, depth, t=rgsd_t)
        result: Dict[str, Any] = {f"loss_{self.cfg.loss_name}": out["loss_rgsd"]}
        result.update(
            {
                k: (v.detach() if torch.is_tensor(v) else v)
                for k, v in out.items()
                if k != "loss_rgsd"
            }
        )
        if guidance_eval:
            result["eval"] = self._eval_images(core, rgb, out, fixed_view_index)
        return result

    @torch.no_grad()
    def _eval_images(
        self, core: RGSD, rgb: torch.Tensor, out: Dict[str, Any], fixed_view_index
    ) -> Dict[str, Any]:
        """threestudio's guidance-eval sheet: the render as SD2-depth sees it (decoded from its
        latent) and the RGSD target it is pulled towards (the RGNV clean prediction at t, or the
        fixed view's enhanced target at t = 0), decoded; [bs, H, W, 3] in [0, 1]."""
        target = out["rgsd_target_latent"].expand(rgb.shape[0], -1, -1, -1)
        bs = target.shape[0]
        dec = core.pipe.decode(target).permute(0, 2, 3, 1)
        seen = torch.nn.functional.interpolate(
            rgb.detach().permute(0, 3, 1, 2).float(),
            dec.shape[1:3],
            mode="bilinear",
            align_corners=False,
        ).permute(0, 2, 3, 1)
        t = float(out.get("rgsd_t", torch.tensor(0.0)))
        level = t / max(1, core.cfg.num_steps)
        label = (
            "t=0 fixed view" if fixed_view_index is not None else f"t={int(t)}/{core.cfg.num_steps}"
        )
        return {
            "bs": bs,
            "noise_levels": [level] * bs,
            "imgs_noisy": seen.clamp(0, 1),
            "imgs_1step": dec,
            "imgs_1orig": dec,
            "imgs_final": dec,
            "texts": [f"rgsd {label}"] * bs,
        }
