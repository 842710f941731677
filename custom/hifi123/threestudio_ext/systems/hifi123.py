"""`hifi123-system`: HiFi-123's image-to-3D pipeline (paper §3.3, §4.1; Sup. §2) on the shared
image-conditioned base.

Coarse stage (`refinement: false`; decision 12): a NeRF with the reference-view losses of the base
(rgb, mask, depth as 1 - Pearson, normal) and hybrid SDS on random views: the 2D guidance
(`guidance_type`, DeepFloyd IF by default, with its prompt processor and the caption) gives
`loss_sds` (weighted by `lambda_sds`), the 3D guidance (`guidance_3d_type`, Zero-1-to-3 or Stable
Zero123) gives its `loss_sds`, logged and weighted as `loss_3d_sds` / `lambda_3d_sds`. Either
guidance is skipped when its type is empty or its lambda is 0.

Refine stage (`refinement: true`; decisions 9-11): DMTet with frozen geometry (texture only), the
reference rgb loss every iteration and RGSD (`hifi123-rgsd-guidance`), alternating

* a t = 0 iteration on one of the fixed views (`fixed_view_every`: every 2nd iteration), whose
  enhanced targets are computed ONCE in `on_fit_start` from the initial refine model, saved in the
  checkpoint (`hifi123_rgsd`) and restored on resume (never recomputed silently), and
* a t > 0 iteration on the datamodule's random view.

Both RGSD sub-steps pass the renderer's `opacity` and `depth` (use `hifi123-nvdiff-rasterizer`,
which adds depth to threestudio's mesh rasterizer). Devices come from the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import threestudio
import torch

from ...core.cameras import ViewCamera
from ...core.hifi123.rgsd import FixedViewSchedule
from ...core.settings import setting
from ..cameras import camera_batch
from ..registry import register
from .base import ImageConditionedSystem

COARSE_TERMS = ("sds", "3d_sds")
REFINE_TERMS = ("rgsd",)
CHECKPOINT_KEY = "hifi123_rgsd"


def fixed_view_batch(
    elevation_deg: float, azimuth_deg: float, like: Dict[str, Any], height: int, width: int
) -> Dict[str, Any]:
    """The threestudio batch of a fixed view at the given pose, with the distance and field of view
    of batch `like` (the reference view)."""
    dist = float(like["camera_distances"].reshape(-1)[0])
    fovy_deg = math.degrees(float(like["fovy"].reshape(-1)[0]))  # threestudio keeps radians
    camera = ViewCamera.orbit(elevation_deg, azimuth_deg, dist, fovy_deg, height, width)
    return camera_batch(camera, like["camera_distances"].device)


@register("hifi123-system")
class HiFi123System(ImageConditionedSystem):
    @dataclass
    class Config(ImageConditionedSystem.Config):
        guidance_3d_type: str = ""  # coarse: zero123-guidance | stable-zero123-guidance ("" = none)
        guidance_3d: dict = field(default_factory=dict)
        # refine: a t = 0 fixed-view iteration every N iterations (decision 9)
        fixed_view_every: int = setting(2, ge=1)
        # fixed-view render size (default: the random views')
        fixed_view_resolution: Optional[int] = setting(None, ge=8)
        # the reference (${data.image_path}): an empty 2D prompt reads its caption file
        image_path: str = ""

    cfg: Config

    @classmethod
    def loss_terms_for(cls, refinement: bool = False) -> Tuple[str, ...]:
        base = super().loss_terms_for(refinement)
        # the base adds guidance_terms(); ours depend on the stage
        return base + (REFINE_TERMS if refinement else COARSE_TERMS)

    def configure(self) -> None:
        super().configure()
        if self.cfg.fixed_view_every < 1:
            raise ValueError(
                f"system.fixed_view_every must be >= 1, got {self.cfg.fixed_view_every}"
            )
        self.guidance_3d = None
        self._rgsd_state: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ guidance
    def build_guidance(self) -> None:
        pp = self.cfg.prompt_processor
        if self.cfg.prompt_processor_type and not str(pp.get("prompt", "") or "").strip():
            from ...core.prompts import read_caption

            caption = read_caption(self.cfg.image_path)
            if not caption:
                from ...errors import InputError

                raise InputError(
                    "system.prompt_processor.prompt is empty and there is no caption file next to "
                    f"system.image_path ({self.cfg.image_path or 'not set'})",
                    "a prompt for the 2D guidance (HiFi-123 uses the image caption)",
                    "run `hifi123 preprocess <image>` (writes <name>_caption.txt) or set "
                    'system.prompt_processor.prompt="a photo of ..."',
                )
            pp["prompt"] = caption
            threestudio.info(
                f"hifi123-system: 2D guidance prompt from the caption file: {caption!r}"
            )
        super().build_guidance()
        if not self.refining and self.cfg.guidance_3d_type:
            from ...preflight import building

            with building(self.cfg.guidance_3d_type, "system.guidance_3d"):
                self.guidance_3d = threestudio.find(self.cfg.guidance_3d_type)(self.cfg.guidance_3d)
        if self.refining:
            if not hasattr(self.guidance, "compute_fixed_targets"):
                raise ValueError(
                    f"system.refinement is true but guidance_type {self.cfg.guidance_type!r} is "
                    "not RGSD; set system.guidance_type=hifi123-rgsd-guidance"
                )
            if self._rgsd_state is not None:  # resumed: restore, never recompute
                self.guidance.load_state_dict(self._rgsd_state)
                self._rgsd_state = None

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.refining and hasattr(self.geometry, "fit_texture_to_colors"):
            self.check_aligned_camera()
        if self.refining and not self.guidance.has_fixed_targets:
            self.init_texture_from_mesh()
            self.compute_fixed_targets()

    def check_aligned_camera(self, like: Optional[Dict[str, Any]] = None) -> None:
        """A mesh aligned by `hifi123 align-mesh` (its alignment.json) fits one reference camera;
        the datamodule's must be that one (decision 31)."""
        aligned = getattr(self.geometry, "aligned_camera", None)
        if not aligned:
            return
        like = like if like is not None else self._reference_camera()
        have = {
            "elevation_deg": float(like["elevation"].reshape(-1)[0]),
            "azimuth_deg": float(like["azimuth"].reshape(-1)[0]),
            "distance": float(like["camera_distances"].reshape(-1)[0]),
            "fovy_deg": math.degrees(float(like["fovy"].reshape(-1)[0])),
        }
        keys = {
            "elevation_deg": "default_elevation_deg",
            "azimuth_deg": "default_azimuth_deg",
            "distance": "default_camera_distance",
            "fovy_deg": "default_fovy_deg",
        }
        off = [
            k
            for k in keys
            if abs(have[k] - float(aligned[k])) > 0.01 * max(1.0, abs(float(aligned[k])))
        ]
        if off:
            from ...errors import InputError

            raise InputError(
                "the mesh was aligned for another reference camera than data's: "
                + ", ".join(
                    f"data.{keys[k]}={have[k]:.4g} but the alignment used {aligned[k]:.4g}"
                    for k in off
                ),
                "the reference camera of the mesh's alignment.json",
                "pass "
                + " ".join(f"data.{keys[k]}={float(aligned[k]):.4g}" for k in off)
                + " (hifi123 run --method refine-mesh does this)",
            )
        threestudio.info(
            f"hifi123-system: the reference camera is the mesh's alignment's "
            f"(elevation {have['elevation_deg']:.4g} deg)"
        )

    def init_texture_from_mesh(self) -> None:
        """A custom mesh with colours (`hifi123-custom-mesh`): fit the texture field to them first,
        so the fixed-view targets enhance the mesh's own texture (decision 31)."""
        fit = getattr(self.geometry, "fit_texture_to_colors", None)
        if fit is None:
            return
        from threestudio.utils.ops import get_activation

        act = get_activation(getattr(self.material.cfg, "color_activation", "sigmoid"))
        mse = fit(act)
        if mse is None:
            threestudio.info("hifi123-system: the mesh has no colours; the texture starts blank")
        else:
            threestudio.info(
                f"hifi123-system: texture fitted to the mesh's colours (MSE {mse:.4f})"
            )

    def fixed_batches(self, like: Dict[str, Any]):
        ref_e = float(like["elevation"].reshape(-1)[0])
        ref_a = float(like["azimuth"].reshape(-1)[0])
        rnd = like.get("random_camera", like)
        size = self.cfg.fixed_view_resolution or int(rnd["height"])
        return [
            fixed_view_batch(e, a, like, size, size)
            for e, a in self.guidance.fixed_cameras(ref_e, ref_a)
        ]

    @torch.no_grad()
    def compute_fixed_targets(self, like: Optional[Dict[str, Any]] = None) -> None:
        """Render the fixed views with the initial refine model and enhance them once (RGSD t = 0).
        `like`: a training batch (default: one from the trainer's datamodule) for the reference
        pose."""
        like = like if like is not None else self._reference_camera()
        outs = [self.renderer(**b) for b in self.fixed_batches(like)]
        rgb = torch.cat([o["comp_rgb"] for o in outs])
        opacity = torch.cat([o["opacity"] for o in outs])
        depth = torch.cat([o["depth"] for o in outs]) if all("depth" in o for o in outs) else None
        self.guidance.compute_fixed_targets(rgb, opacity, depth)
        threestudio.info(f"hifi123-system: computed {rgb.shape[0]} fixed-view RGSD targets")

    def _reference_camera(self) -> Dict[str, Any]:
        dm = getattr(self.trainer, "datamodule", None)
        ds = getattr(dm, "train_dataset", None)
        if ds is None:
            raise RuntimeError(
                "hifi123-system needs the training datamodule to place the fixed views"
            )
        return ds.collate(None) if hasattr(ds, "collate") else next(iter(dm.train_dataloader()))

    # ------------------------------------------------------------------ training
    def substeps(self, step: int) -> Tuple[str, ...]:
        if not self.refining:
            return super().substeps(step)
        novel = "fixed" if self.fixed_schedule().is_fixed(step) else "novel"
        return ("ref", novel) if self.reference_schedule.is_reference(step) else (novel,)

    def fixed_schedule(self, n_fixed: int = 1) -> FixedViewSchedule:
        return FixedViewSchedule(n_fixed=n_fixed, every=self.cfg.fixed_view_every)

    def substep_batch(self, batch: Dict[str, Any], kind: str) -> Dict[str, Any]:
        """The fixed sub-step renders fixed view `fixed_view_index` (it travels in the sub-batch to
        the guidance call), the one the core schedule gives for this step."""
        if kind != "fixed":
            return super().substep_batch(batch, kind)
        views = self.fixed_batches(batch)
        j = self.fixed_schedule(len(views)).fixed_index(self.true_global_step)
        sub = views[j]
        sub.update(bg_color=None, fixed_view_index=j)
        return sub

    def guidance_losses(self, kind, batch, out, full_batch) -> Dict[str, torch.Tensor]:
        if self.refining:
            if not self.wants("rgsd"):
                return {}
            g = self.guidance(
                out["comp_rgb"],
                **batch,
                opacity=out["opacity"],
                depth=out.get("depth"),
                rgb_as_latents=False,
            )
            if "rgsd_t" in g:
                self.log(f"train/{kind}/rgsd_t", g["rgsd_t"])
            return {"loss_rgsd": g[f"loss_{self.guidance.cfg.loss_name}"]}
        # every loss_<x> a guidance returns is weighted by lambda_<x> (lambda_3d_<x> for the 3D
        # one), as threestudio does: stock guidances return loss_sds, loss_sd, loss_vsd, ...
        terms: Dict[str, torch.Tensor] = {}
        due = self.guidance_eval_due()
        if self.guidance is not None:
            g = self.call_guidance(self.guidance, out["comp_rgb"], batch, guidance_eval=due)
            terms.update(self.loss_terms_of(g))
            if due:
                self.save_guidance_eval(out, g)
        if self.guidance_3d is not None:
            g3 = self.guidance_3d(out["comp_rgb"], **batch, rgb_as_latents=False)
            terms.update(self.loss_terms_of(g3, "3d_"))
        return terms

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.refining and self.guidance is not None and self.guidance.has_fixed_targets:
            checkpoint[CHECKPOINT_KEY] = self.guidance.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        if self.guidance is not None:
            self.guidance.load_state_dict(state)
        else:
            self._rgsd_state = state
