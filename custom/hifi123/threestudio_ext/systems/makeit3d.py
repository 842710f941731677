"""`makeit3d-system`: Make-It-3D's coarse stage (paper §3.2; algorithms.md C) on the shared
image-conditioned base.

Per iteration, `reference_schedule` (default: exactly 25% reference iterations, shuffled per block
of 100, as the official loader) picks the reference sub-step or a novel-view sub-step:

* reference view (albedo shading): `rgb` (L1 x 1000 in the official code), `depth` (1 - Pearson in
  the eroded mask), plus the base's optional `mask` / `normal`;
* novel view: the `makeit3d-guidance` terms `sds`, `clip_d`, `clip_d_txt`, `clip_img`, `clip_txt`
  (only those whose lambda is > 0 at this step are computed, so the official "no diffusion loss
  before iteration 400" is a lambda schedule), with the reference azimuth of the batch;
* both: the base regularisers, plus `opacity`: mean(opacity^2), multiplied by
  `back_view_opacity_factor` (10, official) on back views (|relative azimuth| >=
  back_threshold_deg).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import threestudio
import torch

from ...core.makeit3d.cameras import is_back_view
from ...core.makeit3d.point_refine import REFINE_TERMS
from ...core.makeit3d.pointcloud import PointCloudConfig
from ...core.makeit3d.prior import TERMS
from ...core.settings import setting
from ..registry import register
from .base import ImageConditionedSystem
from .makeit3d_refine import (
    build_refine_point_cloud,
    refine_config,
    refine_reference_terms,
    refine_regularizer_terms,
    save_initial_point_cloud,
    save_refine_exports,
)


@register("makeit3d-system")
class MakeIt3DSystem(ImageConditionedSystem):
    @dataclass
    class Config(ImageConditionedSystem.Config):
        # back view: |azimuth - reference| >= 180 - 45
        back_threshold_deg: float = setting(135.0, ge=0.0)
        back_view_opacity_factor: float = setting(10.0, ge=0.0)  # official utils.py:521-524
        # stage (the base's switch): coarse = NeRF (paper §3.2), refine = point cloud + deferred
        # renderer (§3.3)
        # stage refine: hifi123.core.makeit3d.point_refine.RefineConfig
        refine: dict = field(default_factory=dict)
        # novel views are rendered albedo-only while the step lies in one of these [start, end)
        # windows (the official two-phase run: 0-1000, then 2000-3500 as the 360 degree views start)
        albedo_only_windows: list = field(default_factory=list)

    cfg: Config
    refine_geometry = "points"  # the NeRF regularisers stay (at weight 0 in the refine YAML)

    def configure(self) -> None:
        self.stage  # noqa: B018  (the stage switch is checked first)
        windows = [list(w) for w in self.cfg.albedo_only_windows]
        if any(len(w) != 2 or not 0 <= int(w[0]) < int(w[1]) for w in windows):
            from ...errors import InputError

            raise InputError(
                f"system.albedo_only_windows={windows}",
                "a list of [start, end) step pairs, 0 <= start < end",
                "e.g. system.albedo_only_windows=[[0,1000],[2000,3500]] (or [] for the "
                "material's own)",
            )
        self.albedo_windows = [(int(a), int(b)) for a, b in windows]
        self.refine = None
        self._coarse_checkpoint = None
        if self.refining:
            refine_config(self.cfg.refine)  # its keys: checked before the coarse trial is looked up
        self.resolve_chained_paths()  # before the refine stage takes the coarse checkpoint over
        self._contextual = None  # (VGG19 features, {render size: reference features})
        if self.refining:
            self.refine = refine_config(self.cfg.refine)
            if "lambda_contextual" in self.cfg.loss and self.C(self.cfg.loss.lambda_contextual) > 0:
                from ...evaluation.models import preflight_vgg19

                preflight_vgg19(self.refine.contextual_model, "system.refine.contextual_model")
            # the point cloud needs the whole coarse model and the reference image: it is built in
            # on_fit_start; threestudio's single-geometry conversion (create_from) must not run
            self._coarse_checkpoint, self.cfg.geometry_convert_from = (
                self.cfg.geometry_convert_from,
                None,
            )
        super().configure()

    def loss_terms(self):
        terms = super().loss_terms()
        return terms + REFINE_TERMS if self.refining else terms

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.refining and self.geometry.n_points == 0:  # not resumed / loaded
            cloud = build_refine_point_cloud(
                self._coarse_checkpoint,
                self.refine,
                self.cfg.geometry_convert_override,
                device=self.device,
                log=threestudio.info,
            )
            # in place: the optimiser keeps the parameters
            self.geometry.set_from_point_cloud(cloud)
            if self.refine.save_initial_point_cloud and self._save_dir is not None:
                save_initial_point_cloud(self, cloud)

    def albedo_only(self, step: int) -> bool:
        return any(a <= step < b for a, b in self.albedo_windows)

    def substep_batch(self, batch, kind):
        sub = super().substep_batch(batch, kind)
        if kind == "novel" and self.albedo_only(self.true_global_step):
            sub["shading"] = "albedo"
        return sub

    def reference_losses(self, batch, out):
        losses = super().reference_losses(batch, out)
        if self.refining and self.wants("ref_l1"):
            losses.update(refine_reference_terms(batch, out, self.refine))
        return losses

    def _export_refine(self, video: bool) -> None:
        size = PointCloudConfig(**self.refine.point_cloud).resolution
        save_refine_exports(
            self, self.true_global_step, self.renderer, self.refine, size, size, video=video
        )

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        every = self.refine.export_every_n_steps if self.refine is not None else 0
        if every and self._save_dir is not None and self.true_global_step % every == 0:
            self._export_refine(video=False)

    def on_train_end(self) -> None:
        super().on_train_end()
        if self.refining and self._save_dir is not None:
            self._export_refine(video=True)

    def on_predict_epoch_end(self) -> None:
        # `launch.py --export` of a refine trial: the point cloud (PLY) and the renderer weights,
        # as at the end of training (there is no mesh to hand to threestudio's exporter)
        if self.refining:
            if self._save_dir is not None:
                self._export_refine(video=False)
            return
        super().on_predict_epoch_end()

    @classmethod
    def guidance_terms(cls) -> Tuple[str, ...]:
        return TERMS

    @classmethod
    def extra_terms(cls) -> Tuple[str, ...]:
        return ("opacity",)

    @staticmethod
    def reference_azimuth(full_batch: Dict[str, Any]) -> float:
        az = full_batch["azimuth"]
        return float(az.reshape(-1)[0]) if torch.is_tensor(az) else float(az)

    def guidance_losses(self, kind, batch, out, full_batch) -> Dict[str, torch.Tensor]:
        losses = self.prior_losses(kind, batch, out, full_batch)
        if self.refining and self.wants("contextual"):
            losses["loss_contextual"] = self.contextual_term(out["comp_rgb"])
        return losses

    def contextual_term(self, rgb: torch.Tensor) -> torch.Tensor:
        """-log CX of the render against the reference (core.point_refine.contextual_loss); the
        VGG19 and the reference's features are built once (per render size)."""
        from ...core.makeit3d.point_refine import contextual_loss
        from ...core.makeit3d.reference import reference_on_white
        from ...evaluation.models import load_vgg19_features

        r = self.refine
        if self._contextual is None:
            vgg = load_vgg19_features(
                r.contextual_model, "system.refine.contextual_model", r.contextual_layer, rgb.device
            )
            self._contextual = (vgg, {})
        vgg, refs = self._contextual
        size = tuple(rgb.shape[1:3])
        if size not in refs:
            ref = reference_on_white(
                r.reference_image_path, role="system.refine.reference_image_path"
            ).to(rgb.device)
            with torch.no_grad():
                refs[size] = vgg(
                    torch.nn.functional.interpolate(ref, size, mode="bilinear", align_corners=False)
                )
        return contextual_loss(rgb, refs[size], vgg, r.contextual_band_width)

    def prior_losses(self, kind, batch, out, full_batch) -> Dict[str, torch.Tensor]:
        active = [t for t in TERMS if self.wants(t)]
        if not active:
            return {}
        if self.guidance is None:
            return {}
        due = self.guidance_eval_due()
        # our guidance takes the render's background (the CLIP-D reference is composited on it),
        # the terms to compute and the reference azimuth; a stock guidance absorbs them in **kwargs
        g = self.call_guidance(
            self.guidance,
            out["comp_rgb"],
            batch,
            guidance_eval=due,
            terms=active,
            reference_azimuth_deg=self.reference_azimuth(full_batch),
            background=out.get("comp_rgb_bg"),
        )
        if "timesteps" in g and "use_clip_d" in g:
            self.log("train/timestep", g["timesteps"].float().mean())
            self.log("train/clip_d_fraction", g["use_clip_d"].float().mean())
        if "is_back" in g:
            self.log("train/back_view_fraction", g["is_back"].float().mean())
        if due:
            self.save_guidance_eval(out, g)
        return self.loss_terms_of(g)

    def regularizer_losses(self, kind, batch, out, full_batch) -> Dict[str, torch.Tensor]:
        losses = super().regularizer_losses(kind, batch, out, full_batch)
        if not self.refining and self.wants("opacity"):
            per_view = (out["opacity"] ** 2).flatten(1).mean(1)
            factor = torch.ones_like(per_view)
            if kind != "ref" and "azimuth" in batch and self.cfg.back_view_opacity_factor != 1.0:
                ref = self.reference_azimuth(full_batch)
                back = is_back_view(
                    batch["azimuth"].to(per_view.device).float(), ref, self.cfg.back_threshold_deg
                )
                factor = torch.where(
                    back, torch.full_like(per_view, self.cfg.back_view_opacity_factor), factor
                )
            losses["loss_opacity"] = (factor * per_view).mean()
        if self.refining:
            losses.update(refine_regularizer_terms(self.geometry, out, self.refine, self.wants))
        return losses
