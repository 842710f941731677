"""`makeit3d-guidance`: Make-It-3D's novel-view prior (SDS + CLIP-D, paper §3.2) as a threestudio
guidance. A thin shell around :class:`hifi123.core.makeit3d.MakeIt3DPrior`.

Call (threestudio's guidance contract, docs/threestudio.md §3)::

    out = guidance(comp_rgb, **random_camera_batch, terms=["sds", "clip_d"],
                   reference_azimuth_deg=ref_azimuth)
    out["loss_sds"], out["loss_clip_d"], ...   # weight each with system.loss.lambda_<term>

* `terms` (optional) lists the loss terms to compute (see `hifi123.core.makeit3d.TERMS`); a
  system passes the terms whose `lambda_*` is > 0 at this step, so terms at weight 0 cost nothing.
  Default: all.
* The view is "back" when |azimuth - reference azimuth| >= `back_threshold_deg`; the reference
  azimuth is `reference_azimuth_deg` (config) unless the call passes `reference_azimuth_deg`.
* A positional `prompt_utils` (text-guidance style) is accepted and ignored: the prompt is the
  caption file next to `cond_image_path` (``<name>_caption.txt``) when present and
  `use_caption_file`, otherwise the `prompt` field.
* Returns `loss_*` scalars, `grad_norm` (SDS), `timesteps`, `use_clip_d`, `is_back` ([B]),
  `min_step`, `max_step`; with `guidance_eval=True` an `eval` dict in threestudio's layout.

It is a `BaseObject` (not an `nn.Module`): the SD2 and CLIP weights never enter the Lightning
checkpoint. `configure` validates the config, the reference image, the prompt and the model
references (no model is loaded); the models load on the first call on the device of `rgb` (fp16
there when `half_precision_weights` and CUDA). threestudio's `get_device` (always CUDA) is never
used.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import threestudio  # noqa: F401  (adapters may import threestudio; the core never does)
import torch
from threestudio.utils.base import BaseObject
from threestudio.utils.misc import C

from ...core.makeit3d.cameras import relative_azimuth
from ...core.makeit3d.prior import (
    TERMS,
    MakeIt3DGuidanceConfig,
    MakeIt3DPrior,
    build_prior_from_models,
)
from ...core.makeit3d.reference import reference_rgba
from ...core.prompts import resolve_prompt
from ...core.settings import derive_config, from_config
from ...errors import InputError
from ...models.clip_encoder import load_clip_encoder, preflight_clip
from ...models.loader import DIFFUSION_SUBFOLDERS, load_diffusion, preflight
from ..registry import StrictConfig, check_guidance_call, register

#: settings that may be threestudio schedules (evaluated at every step with C())
SCHEDULED = ("min_step_percent", "max_step_percent", "grad_clip")


@register("makeit3d-guidance")
class MakeIt3DGuidance(StrictConfig, BaseObject):
    # every setting is declared once, in the core `MakeIt3DGuidanceConfig`
    Config = derive_config(
        MakeIt3DGuidanceConfig,
        BaseObject.Config,
        "MakeIt3DGuidanceConfig",
        types={name: Any for name in SCHEDULED},
    )

    cfg: Config

    # ------------------------------------------------------------------ setup
    def configure(self) -> None:
        self.core_config = self.settings_at(0, 0)
        if not self.cfg.cond_image_path:
            raise InputError(
                "makeit3d-guidance: `cond_image_path` is empty",
                "the reference RGBA image (threestudio configs set it to ${data.image_path})",
                "set system.guidance.cond_image_path=${data.image_path} in the config",
            )
        # composited per call on the render's own background (official CLIP-D; see core reference)
        self.reference_rgba = reference_rgba(self.cfg.cond_image_path, role="cond_image_path")
        self.prompt, self.prompt_source = resolve_prompt(
            self.cfg.cond_image_path, self.cfg.prompt, self.cfg.use_caption_file, "prompt"
        )
        threestudio.info(f"makeit3d-guidance: prompt from {self.prompt_source}: {self.prompt!r}")
        field = f"{self.config_path}.pretrained_model_name_or_path"
        preflight(self.cfg.pretrained_model_name_or_path, field, subfolders=DIFFUSION_SUBFOLDERS)
        preflight_clip(self.cfg.clip_backend, self.cfg.clip_model, self.cfg.clip_pretrained)
        self.prior: Optional[MakeIt3DPrior] = None
        self.device = None  # set from the first input; threestudio's get_device is CUDA-only

    def settings_at(self, epoch: int, global_step: int) -> MakeIt3DGuidanceConfig:
        """The core settings at this step (schedules evaluated), validated."""
        now = {
            name: C(getattr(self.cfg, name), epoch, global_step)
            for name in SCHEDULED
            if getattr(self.cfg, name) is not None
        }
        try:
            settings = from_config(self.cfg, MakeIt3DGuidanceConfig, now)
            settings.validate()
        except ValueError as err:
            from ...errors import settings_error

            names = MakeIt3DGuidanceConfig.__dataclass_fields__
            raise settings_error(err, self.config_path, "makeit3d-guidance", names) from None
        return settings

    def _prior_on(self, device: torch.device) -> MakeIt3DPrior:
        if self.prior is None:
            dtype = (
                torch.float16
                if (self.cfg.half_precision_weights and device.type == "cuda")
                else torch.float32
            )
            threestudio.info(
                f"makeit3d-guidance: loading {self.cfg.pretrained_model_name_or_path} and CLIP "
                f"{self.cfg.clip_model} on {device}"
            )
            components = load_diffusion(
                self.cfg.pretrained_model_name_or_path,
                "pretrained_model_name_or_path",
                dtype=dtype,
                device=device,
                attention=self.cfg.attention,
            )
            if self.cfg.vae_gradient_checkpointing:
                from ...core.makeit3d.prior import enable_vae_gradient_checkpointing

                enable_vae_gradient_checkpointing(components.vae)
            clip = load_clip_encoder(
                self.cfg.clip_backend, self.cfg.clip_model, self.cfg.clip_pretrained, device=device
            )
            self.prior = build_prior_from_models(
                self.core_config,
                components,
                clip,
                self.prompt,
                self.cfg.negative_prompt,
                self.reference_rgba,
            )
            self._models = (components, clip)
        elif self.device != device:
            components, clip = self._models
            for m in (components.unet, components.vae, components.text_encoder):
                m.to(device)
            clip.to(device)
            for name in ("reference_embedding", "text_embedding"):
                setattr(self.prior, name, getattr(self.prior, name).to(device))
        self.device = device
        return self.prior

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        # threestudio's timestep annealing: min/max_step_percent and grad_clip may be schedules
        self.core_config = self.settings_at(epoch, global_step)
        if self.prior is not None:
            self.prior.cfg = self.core_config

    # ------------------------------------------------------------------- call
    def __call__(
        self,
        rgb: torch.Tensor,
        *args,  # an optional prompt_utils (ignored: the prompt is the caption / config field)
        elevation: Optional[torch.Tensor] = None,
        azimuth: Optional[torch.Tensor] = None,
        camera_distances: Optional[torch.Tensor] = None,
        rgb_as_latents: bool = False,
        guidance_eval: bool = False,
        terms: Optional[List[str]] = None,
        reference_azimuth_deg: Optional[float] = None,
        background: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, Any]:
        check_guidance_call("makeit3d-guidance", args, rgb_as_latents, latents_ok=True)
        if terms is not None:
            bad = sorted(set(terms) - set(TERMS))
            if bad:
                raise ValueError(f"makeit3d-guidance: unknown terms {bad}; known: {list(TERMS)}")
        prior = self._prior_on(rgb.device)
        images = rgb.permute(0, 3, 1, 2)  # [B,H,W,C] -> [B,C,H,W]
        rel = None
        if azimuth is not None:
            ref = (
                self.cfg.reference_azimuth_deg
                if reference_azimuth_deg is None
                else float(reference_azimuth_deg)
            )
            rel = relative_azimuth(torch.as_tensor(azimuth, device=rgb.device).float(), ref)
        # background: the render's own ([B,H,W,3], threestudio's comp_rgb_bg); the CLIP reference
        # is composited on it (None: white)
        out = prior(
            images,
            rel,
            terms=terms,
            as_latents=rgb_as_latents,
            return_eval=guidance_eval,
            background=background,
        )
        result: Dict[str, Any] = {k: v for k, v in out.items() if k.startswith("loss_")}
        result.update(
            grad_norm=out.get("grad_norm", torch.zeros((), device=rgb.device)),
            is_back=out["is_back"],
            min_step=prior.min_step,
            max_step=prior.max_step,
        )
        if "t" in out:
            result.update(timesteps=out["t"], use_clip_d=out["use_clip_d"])
        if guidance_eval and "eval" in out and out["eval"]:
            ev = {k: v.permute(0, 2, 3, 1) for k, v in out["eval"].items()}
            bs = rgb.shape[0]
            ev["imgs_final"] = ev["imgs_1orig"]
            ev.update(
                bs=bs,
                noise_levels=[float(x) / prior.num_train_timesteps for x in out["t"].tolist()],
                texts=[
                    ("clip-d" if c else "sds") + f" t={int(t)}"
                    for c, t in zip(out["use_clip_d"].tolist(), out["t"].tolist())
                ],
            )
            result["eval"] = ev
        return result
