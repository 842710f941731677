"""The shared image-conditioned system: what Make-It-3D and HiFi-123 have in common.

:class:`ImageConditionedSystem` (NOT registered) extends threestudio's `BaseLift3DSystem` with

* the reference-view losses: `rgb` (MSE or L1 against the reference composited on the rendered
  background), `mask` (MSE or BCE), `depth` (1 - Pearson inside the eroded mask, Make-It-3D Eq. 5)
  and `normal` (threestudio's convention);
* the reference / novel alternation (`reference_schedule`, see
  `hifi123.core.makeit3d.cameras.ReferenceSchedule`: Make-It-3D's exactly-25% "shuffled", zero123's
  "every_n", "random", or "both" every step);
* the geometry regularisers of threestudio's image systems (`orient`, `sparsity`, `opaque`,
  `normal_smooth`, `3d_normal_smooth`; in a mesh refine stage: `normal_consistency`,
  `laplacian_smoothness`);
* :meth:`weigh_losses`: every `loss_<x>` is multiplied by `C(system.loss.lambda_<x>)`; a missing
  lambda is an error that names the key. A term whose lambda is 0 at the current step is not even
  computed (:meth:`wants`), and every lambda the system reads is checked in `configure`;
* saving: `all_training_images.png` in `on_fit_start`, validation/test grids and videos as
  threestudio's zero123 system (mp4 when imageio-ffmpeg is installed, else gif), guidance-eval
  sheets.

Subclasses implement :meth:`guidance_terms` and :meth:`guidance_losses`, and may override
:meth:`build_guidance` (e.g. a second guidance), :meth:`substeps` / :meth:`substep_batch` (e.g.
HiFi-123's refine stage alternating fixed and random views as extra sub-step kinds) and
:meth:`regularizer_losses` / :meth:`extra_terms` (extra regularisers). Losses of sub-step `kind`
are logged as `train/<kind>/loss_<x>` (and `..._w` weighted).

Devices come from the batch and the modules; nothing here calls threestudio's `get_device`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Tuple

import threestudio
import torch
import torch.nn.functional as F
from threestudio.systems.base import BaseLift3DSystem

from ...core.makeit3d.cameras import ReferenceSchedule
from ...core.makeit3d.depth import pearson_depth_loss
from ...core.morphology import erode, scale_px
from ...core.normals import reference_normal_loss
from ...core.settings import setting
from ...errors import InputError, check_config_keys
from ...trials import plain_containers

REFERENCE_TERMS = ("rgb", "mask", "depth", "normal")
COARSE_REGULARIZERS = ("orient", "sparsity", "opaque", "normal_smooth", "3d_normal_smooth")
REFINE_REGULARIZERS = ("normal_consistency", "laplacian_smoothness")
RGB_LOSSES = ("mse", "l1")
MASK_LOSSES = ("mse", "bce")
DEPTH_KINDS = ("disparity", "depth")
STAGES = ("coarse", "refine")


#: the threestudio components a system block names with `<part>_type` and configures in `<part>`
COMPONENT_PARTS = (
    "geometry",
    "material",
    "background",
    "renderer",
    "guidance",
    "prompt_processor",
    "guidance_3d",
    "prompt_processor_3d",
    "exporter",
)


def check_component_blocks(cfg, config_cls) -> None:
    """The keys of every component block against the Config of the component its `<part>_type`
    names (threestudio's own components too), before any of them is built: a misspelt key is one
    error naming `system.<part>.<key>`, not a TypeError from deep inside the build."""
    for part in COMPONENT_PARTS:
        kind = cfg.get(f"{part}_type", getattr(config_cls, f"{part}_type", None))
        block = cfg.get(part)
        if not kind or not hasattr(block, "keys") or kind not in threestudio.__modules__:
            continue
        config = getattr(threestudio.__modules__[kind], "Config", None)
        if config is not None and hasattr(config, "__dataclass_fields__"):
            check_config_keys(
                block,
                config.__dataclass_fields__,
                f"system.{part}",
                kind,
                foreign_hint=part.startswith(("guidance", "prompt_processor")),
            )


class ImageConditionedSystem(BaseLift3DSystem):
    @dataclass
    class Config(BaseLift3DSystem.Config):
        freq: dict = field(default_factory=dict)  # guidance_eval: every N steps (0 = off)
        reference_schedule: dict = field(default_factory=dict)  # ReferenceSchedule fields
        # the stage switch, one for every system: `refinement: true` (threestudio's name, used by
        # the HiFi-123 YAMLs) or `stage: refine` (the Make-It-3D YAMLs) select the refine stage
        refinement: bool = False
        stage: Optional[str] = None  # coarse | refine; None: as `refinement` says
        reference_shading: Optional[str] = "albedo"  # shading of the reference render
        # novel views: ambient ~ U[min, max]; None: material's own
        ambient_ratio_min: Optional[float] = setting(0.5, ge=0.0, le=1.0)
        ambient_ratio_max: float = setting(1.0, ge=0.0, le=1.0)
        rgb_loss: str = "mse"  # mse | l1
        mask_loss: str = "mse"  # mse | bce
        depth_kind: str = "disparity"  # the reference depth map: disparity (near = bright) | depth
        # mask erosion kernel for the depth loss, at depth_erosion_resolution (<= 1: none)
        depth_erosion: int = setting(5, ge=0)
        # the kernel is scaled to the render size (M3D erodes at 512)
        depth_erosion_resolution: int = setting(512, ge=1)
        # rendered depth clamp before 1/depth (disparity maps)
        depth_min: float = setting(1e-3, gt=0.0)
        video_format: str = "mp4"  # mp4 (needs imageio-ffmpeg; falls back to gif) | gif
        save_train_images: bool = True

    cfg: Config
    #: the refine stage's geometry: "mesh" (DMTet: the mesh regularisers replace the NeRF ones)
    refine_geometry = "mesh"

    def __init__(self, cfg, resumed: bool = False) -> None:
        from ...errors import check_config_keys, check_config_numbers, check_config_types
        from ..registry import check_declared_ranges

        if hasattr(cfg, "keys"):  # before threestudio's parse: one clear error, not a TypeError
            owner = getattr(type(self), "_hifi123_name", type(self).__name__)
            check_config_keys(cfg, self.Config.__dataclass_fields__, "system", owner)
            check_config_numbers(cfg, "system", owner)
            check_config_types(self.Config, cfg, "system", owner)
            check_declared_ranges(cfg, self.Config, "system")
            check_component_blocks(cfg, self.Config)
        super().__init__(cfg, resumed=resumed)

    # ----------------------------------------------------------------- configure
    @property
    def stage(self) -> str:
        """ "coarse" or "refine", from `system.stage` or `system.refinement` (a contradiction of the
        two is an error)."""
        stage, refinement = self.cfg.stage, bool(self.cfg.refinement)
        if stage is None:
            return "refine" if refinement else "coarse"
        if stage not in STAGES:
            raise InputError(
                f"system.stage={stage!r}",
                f"one of {list(STAGES)}",
                "set system.stage=coarse or system.stage=refine",
            )
        if stage == "coarse" and refinement:
            raise InputError(
                "system.stage=coarse contradicts system.refinement=true",
                "one stage switch",
                "drop one of the two keys",
            )
        return stage

    @property
    def refining(self) -> bool:
        return self.stage == "refine"

    def configure(self) -> None:
        assert self.stage  # the switch is checked before anything else
        self.resolve_chained_paths()
        self.preflight_assets()
        super().configure()
        c = self.cfg
        for name, value, allowed in (
            ("rgb_loss", c.rgb_loss, RGB_LOSSES),
            ("mask_loss", c.mask_loss, MASK_LOSSES),
            ("depth_kind", c.depth_kind, DEPTH_KINDS),
            ("video_format", c.video_format, ("mp4", "gif")),
        ):
            if value not in allowed:
                raise InputError(
                    f"system.{name}={value!r}",
                    f"one of {list(allowed)}",
                    f"set system.{name} to one of them",
                )
        try:
            self.reference_schedule = ReferenceSchedule(**dict(c.reference_schedule))
        except ValueError as err:
            raise InputError(
                f"system.reference_schedule: {err}",
                "mode shuffled | every_n | random | both, ref_fraction in [0, 1], "
                "block and n_ref >= 1",
                "fix that key under system.reference_schedule",
            ) from None
        except TypeError as err:
            raise InputError(
                f"system.reference_schedule: {err}",
                "fields mode, ref_fraction, block, n_ref, ref_only_steps, seed",
                "fix the key names under system.reference_schedule",
            ) from err
        self.check_loss_weights()
        self.guidance = None

    # ------------------------------------------------------------------ chaining
    def resolve_chained_paths(self) -> None:
        """Expand `@LAST` in `geometry_convert_from` / `weights` to the newest FINISHED trial
        (`hifi123.trials`), with our own error when there is none, before threestudio's lookup
        (which takes the newest folder, finished or not). A resumed run (`resume=`, `--test`,
        `--export`) restores everything from its checkpoint and never reads the earlier stage."""
        from ...trials import LAST, resolve_last

        c = self.cfg
        if self.resumed:
            if c.geometry_convert_from and LAST in str(c.geometry_convert_from):
                c.geometry_convert_from = None
            return
        for key in ("weights", "geometry_convert_from"):
            before = c[key]
            c[key] = resolve_last(before, f"system.{key}")
            if c[key] != before:
                threestudio.info(f"system.{key}: {before} -> {c[key]} (newest finished trial)")
            if key == "weights" and c.weights:
                return  # threestudio converts nothing when weights are given

    def preflight_assets(self) -> None:
        """Files the geometry needs, checked before anything is built (`hifi123.preflight`)."""
        from ...preflight import check_chained_checkpoint, check_tets

        c = self.cfg
        if c.geometry_type == "tetrahedra-sdf-grid":
            check_tets(
                c.geometry.get("isosurface_resolution", 128),
                "system.geometry.isosurface_resolution",
            )
        if not self.resumed and not c.weights and c.geometry_convert_from:
            check_chained_checkpoint(c.geometry_convert_from, "system.geometry_convert_from")

    def on_predict_start(self) -> None:
        from ...preflight import check_tets

        c = self.cfg
        if (
            c.exporter_type == "mesh-exporter"
            and c.geometry_type.startswith("implicit-")
            and c.geometry.get("isosurface_method", "mt") == "mt"
        ):
            check_tets(
                c.geometry.get("isosurface_resolution", 128),
                "system.geometry.isosurface_resolution",
            )
        super().on_predict_start()

    def on_train_end(self) -> None:
        super().on_train_end()
        max_steps = int(getattr(self.trainer, "max_steps", -1) or -1)
        if self._save_dir is None or max_steps < 0 or self.true_global_step < max_steps:
            return
        if self.trainer.is_global_zero:
            from ...trials import write_finished_marker

            write_finished_marker(
                os.path.dirname(self.get_save_dir()),
                self.true_global_step,
                max_steps,
                system=type(self).__name__,
            )

    # ------------------------------------------------------------------ lambdas
    @classmethod
    def guidance_terms(cls) -> Tuple[str, ...]:
        """The `loss_*` names (without the prefix) the guidance sub-steps produce."""
        return ()

    @classmethod
    def extra_terms(cls) -> Tuple[str, ...]:
        """Extra regulariser names a subclass computes in `regularizer_losses`."""
        return ()

    @classmethod
    def loss_terms_for(cls, refinement: bool = False) -> Tuple[str, ...]:
        """Every term whose `lambda_*` the system reads (for configs and tests, no instance)."""
        regs = (
            REFINE_REGULARIZERS
            if refinement and cls.refine_geometry == "mesh"
            else COARSE_REGULARIZERS
        )
        return REFERENCE_TERMS + tuple(cls.guidance_terms()) + regs + tuple(cls.extra_terms())

    def loss_terms(self) -> Tuple[str, ...]:
        return self.loss_terms_for(self.refining)

    def check_loss_weights(self) -> None:
        read = [f"lambda_{t}" for t in self.loss_terms()]
        guidances = [self.cfg.get(f"{part}_type") for part in ("guidance", "guidance_3d")]
        if all(not kind or kind.startswith(("hifi123-", "makeit3d-")) for kind in guidances):
            # our guidances' loss_* terms are all known here (a stock one may add its own): a
            # lambda nobody reads is a misspelt one
            owner = getattr(type(self), "_hifi123_name", "this system")
            check_config_keys(self.cfg.loss, read, "system.loss", owner)
        missing = [key for key in read if key not in self.cfg.loss]
        if missing:
            raise InputError(
                f"system.loss lacks {', '.join(missing)}",
                f"a weight for every loss term this system reads: "
                f"{', '.join('lambda_' + t for t in self.loss_terms())}",
                "add the missing keys under system.loss (0 disables a term)",
            )

    def lambda_value(self, term: str) -> float:
        key = f"lambda_{term}"
        if key not in self.cfg.loss:
            raise InputError(
                f"loss term `loss_{term}` has no weight: system.loss.{key} is missing",
                "a lambda_<x> for every loss_<x> (threestudio convention)",
                f"add `{key}: <weight>` under system.loss (0 disables it)",
            )
        return float(self.C(self.cfg.loss[key]))

    def wants(self, term: str) -> bool:
        return self.lambda_value(term) > 0

    def weigh_losses(self, terms: Dict[str, torch.Tensor], kind: str = "") -> Any:
        """sum_x C(lambda_x) * loss_x over `terms` ({"loss_x": value}); logs raw and weighted."""
        total: Any = 0.0
        tag = f"train/{kind}/" if kind else "train/"
        for name, value in terms.items():
            if not name.startswith("loss_"):
                raise ValueError(f"loss terms must be named loss_<x>, got {name!r}")
            w = self.lambda_value(name[len("loss_") :])
            self.log(tag + name, value)
            if w != 0:
                weighted = value * w
                self.log(tag + name + "_w", weighted)
                total = total + weighted
        return total

    # ------------------------------------------------------------------ guidance
    def build_guidance(self) -> None:
        """Build the guidance (and the prompt processor, when one is configured). Called in
        `on_fit_start`, so test/export runs never load diffusion models. An empty `guidance_type`
        means no guidance. With a prompt processor, its output (`prompt_utils`) is passed to the
        guidance as the second positional argument, as threestudio's text-guided systems do."""
        from ...preflight import building, check_component

        c = self.cfg
        for part in ("prompt_processor", "guidance", "guidance_3d"):
            if f"{part}_type" in c and c[f"{part}_type"]:
                check_component(c[f"{part}_type"], c[part], f"system.{part}")
        self.guidance = None
        if c.guidance_type:
            with building(c.guidance_type, "system.guidance"):
                self.guidance = threestudio.find(c.guidance_type)(c.guidance)
        self.prompt_utils = None
        if c.prompt_processor_type:
            with building(c.prompt_processor_type, "system.prompt_processor"):
                self.prompt_processor = threestudio.find(c.prompt_processor_type)(
                    c.prompt_processor
                )
                self.prompt_utils = self.prompt_processor()

    def call_guidance(
        self, guidance, rgb: torch.Tensor, batch: Dict[str, Any], **kwargs
    ) -> Dict[str, Any]:
        """`guidance(rgb, [prompt_utils,] **batch, rgb_as_latents=False, **kwargs)`."""
        args = (self.prompt_utils,) if self.prompt_utils is not None else ()
        return guidance(rgb, *args, **batch, rgb_as_latents=False, **kwargs)

    @staticmethod
    def loss_terms_of(out: Dict[str, Any], prefix: str = "") -> Dict[str, torch.Tensor]:
        """Every `loss_<x>` a guidance returned, renamed `loss_<prefix><x>` (weighted later by
        `lambda_<prefix><x>`, as threestudio weights them)."""
        return {
            f"loss_{prefix}{k[len('loss_') :]}": v for k, v in out.items() if k.startswith("loss_")
        }

    def guidance_losses(
        self, kind: str, batch: Dict[str, Any], out: Dict[str, Any], full_batch: Dict[str, Any]
    ) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} must implement guidance_losses for sub-step {kind!r}"
        )

    def guidance_eval_due(self) -> bool:
        every = int(self.cfg.freq.get("guidance_eval", 0) or 0)
        return every > 0 and self.true_global_step % every == 0

    def save_guidance_eval(self, out: Dict[str, Any], guidance_out: Dict[str, Any]) -> None:
        ev = guidance_out.get("eval")
        if ev and self._save_dir is not None:
            self.guidance_evaluation_save(out["comp_rgb"].detach()[: ev["bs"]], ev)

    # ------------------------------------------------------------------ fit start
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.build_guidance()
        if not self.cfg.save_train_images or self._save_dir is None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        dataset = getattr(dm, "train_dataset", None) if dm is not None else None
        if dataset is None or not hasattr(dataset, "get_all_images"):
            return
        self.save_image_grid(
            "all_training_images.png",
            [
                {"type": "rgb", "img": img, "kwargs": {"data_format": "HWC"}}
                for img in dataset.get_all_images()
            ],
            name="on_fit_start",
            step=self.true_global_step,
        )

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        return self.renderer(**batch)

    def substeps(self, step: int) -> Tuple[str, ...]:
        """The sub-step kinds of iteration `step` ("ref", "novel", or a subclass's own kinds)."""
        return self.reference_schedule.substeps(step)

    def reference_batch(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        sub = {k: v for k, v in batch.items() if k != "random_camera"}
        if self.cfg.reference_shading is not None:
            sub["shading"] = self.cfg.reference_shading
        sub["ambient_ratio"] = 1.0
        sub["bg_color"] = None
        return sub

    def novel_batch(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        if "random_camera" not in batch:
            raise KeyError(
                "the training batch has no random_camera views (data.use_random_camera must be "
                "true)"
            )
        sub = dict(batch["random_camera"])
        if self.cfg.ambient_ratio_min is not None:
            lo = float(self.cfg.ambient_ratio_min)
            sub["ambient_ratio"] = lo + (float(self.cfg.ambient_ratio_max) - lo) * random.random()
        sub["bg_color"] = None
        return sub

    def substep_batch(self, batch: Dict[str, Any], kind: str) -> Dict[str, Any]:
        if kind == "ref":
            return self.reference_batch(batch)
        if kind == "novel":
            return self.novel_batch(batch)
        raise NotImplementedError(
            f"{type(self).__name__} has no batch for sub-step {kind!r}; override substep_batch"
        )

    def training_substep(self, batch: Dict[str, Any], batch_idx: int, kind: str) -> Any:
        sub = self.substep_batch(batch, kind)
        out = self(sub)
        terms: Dict[str, torch.Tensor] = {}
        if kind == "ref":
            terms.update(self.reference_losses(sub, out))
        else:
            terms.update(self.guidance_losses(kind, sub, out, batch))
        terms.update(self.regularizer_losses(kind, sub, out, batch))
        loss = self.weigh_losses(terms, kind)
        self.log(f"train/{kind}/loss", loss)
        return loss

    def training_step(self, batch, batch_idx):
        total: Any = 0.0
        for kind in self.substeps(self.true_global_step):
            total = total + self.training_substep(batch, batch_idx, kind)
        for name, value in self.cfg.loss.items():
            self.log(f"train_params/{name}", self.C(value))
        if not (torch.is_tensor(total) and total.requires_grad):
            # every weight of this step's terms is 0 (e.g. a lambda schedule not started yet):
            # nothing to optimise, and Lightning skips the step when training_step returns None
            return None
        self.log("train/loss", total, prog_bar=True)
        return {"loss": total}

    # ------------------------------------------------------------- ref losses
    def reference_losses(
        self, batch: Dict[str, Any], out: Dict[str, Any]
    ) -> Dict[str, torch.Tensor]:
        losses: Dict[str, torch.Tensor] = {}
        mask = batch["mask"]
        fmask = mask.float()
        if self.wants("rgb"):
            gt = batch["rgb"] * fmask + out["comp_rgb_bg"] * (1.0 - fmask)
            fn = F.l1_loss if self.cfg.rgb_loss == "l1" else F.mse_loss
            losses["loss_rgb"] = fn(out["comp_rgb"], gt)
        if self.wants("mask"):
            if self.cfg.mask_loss == "bce":
                op = out["opacity"].clamp(1e-5, 1.0 - 1e-5)
                losses["loss_mask"] = F.binary_cross_entropy(op, fmask)
            else:
                losses["loss_mask"] = F.mse_loss(out["opacity"], fmask)
        if self.wants("depth"):
            losses["loss_depth"] = self.reference_depth_loss(batch, out)
        if self.wants("normal"):
            losses["loss_normal"] = self.reference_normal_loss(batch, out)
        return losses

    @staticmethod
    def _reference_pair(
        batch: Dict[str, Any],
        out: Dict[str, Any],
        term: str,
        ref_key: str,
        what: str,
        needs_data: str,
        data_fix: str,
        out_key: str,
        needs_renderer: str,
        renderer_fix: str,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(reference map from the batch, render output) for a reference loss, or one error that
        says which of the two is missing and how to get it."""
        ref = batch.get(ref_key)
        if ref is None:
            raise InputError(f"lambda_{term} > 0 but the batch has no {what}", needs_data, data_fix)
        if out_key not in out:
            raise InputError(
                f"lambda_{term} > 0 but {needs_renderer[0]}", needs_renderer[1], renderer_fix
            )
        return ref, out[out_key]

    def reference_depth_loss(self, batch: Dict[str, Any], out: Dict[str, Any]) -> torch.Tensor:
        ref, depth = self._reference_pair(
            batch,
            out,
            "depth",
            "ref_depth",
            "reference depth",
            "data.requires_depth: true and a <name>_depth.png next to the image",
            "set data.requires_depth=true (or lambda_depth=0); `hifi123 preprocess` writes the "
            "depth map",
            "depth",
            (
                f"the renderer {self.cfg.renderer_type} returns no depth",
                "a renderer with a `depth` output (threestudio's nvdiff-rasterizer has none)",
            ),
            "set system.loss.lambda_depth=0 for this stage",
        )
        pred = depth.reshape(ref.shape[0], *ref.shape[1:3])
        ref = ref.reshape(pred.shape).to(pred)
        mask = batch["mask"].reshape(pred.shape)
        # depth_erosion is an OpenCV kernel size at depth_erosion_resolution: radius k // 2
        radius = scale_px(
            max(int(self.cfg.depth_erosion), 1) // 2,
            pred.shape[-2],
            self.cfg.depth_erosion_resolution,
        )
        eroded = erode(mask, radius)
        # an object thinner than the kernel would vanish: keep the plain mask for such views
        thin = eroded.flatten(1).sum(1) < 2
        if bool(thin.any()):
            eroded = torch.where(thin.view(-1, 1, 1), mask, eroded)
        mask = eroded
        if self.cfg.depth_kind == "disparity":
            # affine-invariant disparity (threestudio/_depth.png, MiDaS): compare with 1/depth
            pred = 1.0 / pred.clamp_min(self.cfg.depth_min)
        return pearson_depth_loss(pred, ref, mask)

    def reference_normal_loss(self, batch: Dict[str, Any], out: Dict[str, Any]) -> torch.Tensor:
        ref, normal = self._reference_pair(
            batch,
            out,
            "normal",
            "ref_normal",
            "reference normal map",
            "data.requires_normal: true and a <name>_normal.png next to the image",
            "set data.requires_normal=true (or lambda_normal=0)",
            "comp_normal",
            (
                "the render has no comp_normal",
                "renderer.return_comp_normal: true and a material that needs normals",
            ),
            "enable return_comp_normal (or set lambda_normal=0)",
        )
        return reference_normal_loss(ref, normal, batch["mask"][..., 0])

    # ---------------------------------------------------------------- regularisers
    def _require(self, out: Dict[str, Any], key: str, term: str) -> Any:
        if key not in out:
            raise InputError(
                f"lambda_{term} > 0 but the render has no `{key}`",
                f"a geometry/renderer that outputs `{key}`",
                f"set system.loss.lambda_{term}=0 or enable the output in the renderer config",
            )
        return out[key]

    def regularizer_losses(
        self, kind: str, batch: Dict[str, Any], out: Dict[str, Any], full_batch: Dict[str, Any]
    ) -> Dict[str, torch.Tensor]:
        losses: Dict[str, torch.Tensor] = {}
        if self.refining and self.refine_geometry == "mesh":
            if self.wants("normal_consistency"):
                losses["loss_normal_consistency"] = self._require(
                    out, "mesh", "normal_consistency"
                ).normal_consistency()
            if self.wants("laplacian_smoothness"):
                losses["loss_laplacian_smoothness"] = self._require(
                    out, "mesh", "laplacian_smoothness"
                ).laplacian()
            return losses
        if self.wants("orient"):
            normal = self._require(out, "normal", "orient")
            dots = (normal * self._require(out, "t_dirs", "orient")).sum(-1, keepdim=True)
            w = self._require(out, "weights", "orient").detach()
            losses["loss_orient"] = (w * dots.clamp_min(0.0) ** 2).sum() / (
                out["opacity"] > 0
            ).sum().clamp_min(1)
        if kind != "ref" and self.wants("sparsity"):
            losses["loss_sparsity"] = (out["opacity"] ** 2 + 0.01).sqrt().mean()
        if self.wants("opaque"):
            op = out["opacity"].clamp(1e-3, 1.0 - 1e-3)
            losses["loss_opaque"] = -(op * op.log() + (1 - op) * (1 - op).log()).mean()
        if self.wants("normal_smooth"):
            n = self._require(out, "comp_normal", "normal_smooth")
            losses["loss_normal_smooth"] = (n[:, 1:] - n[:, :-1]).square().mean() + (
                n[:, :, 1:] - n[:, :, :-1]
            ).square().mean()
        if self.wants("3d_normal_smooth"):
            n = self._require(out, "normal", "3d_normal_smooth")
            losses["loss_3d_normal_smooth"] = (
                (n - self._require(out, "normal_perturb", "3d_normal_smooth")).abs().mean()
            )
        return losses

    # ---------------------------------------------------------------- eval / save
    def _eval_grid(self, batch: Dict[str, Any], out: Dict[str, Any]):
        grid = []
        if "rgb" in batch:
            grid.append({"type": "rgb", "img": batch["rgb"][0], "kwargs": {"data_format": "HWC"}})
        grid.append({"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}})
        if "comp_normal" in out:
            grid.append(
                {
                    "type": "rgb",
                    "img": out["comp_normal"][0],
                    "kwargs": {"data_format": "HWC", "data_range": (0, 1)},
                }
            )
        if "depth" in out:
            grid.append({"type": "grayscale", "img": out["depth"][0], "kwargs": {}})
        grid.append(
            {
                "type": "grayscale",
                "img": out["opacity"][0, :, :, 0],
                "kwargs": {"cmap": None, "data_range": (0, 1)},
            }
        )
        return grid

    @staticmethod
    def _index(batch: Dict[str, Any]) -> int:
        idx = batch["index"]
        return int(idx[0]) if torch.is_tensor(idx) or isinstance(idx, (list, tuple)) else int(idx)

    def _eval_step(self, batch, split: str) -> None:
        out = self(batch)
        self.save_image_grid(
            f"it{self.true_global_step}-{split}/{self._index(batch)}.png",
            self._eval_grid(batch, out),
            name=f"{split}_step",
            step=self.true_global_step,
        )

    def _save_video(self, split: str) -> None:
        stem = f"it{self.true_global_step}-{split}"
        fmt = self.cfg.video_format
        if fmt == "mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
            threestudio.warn(
                "imageio-ffmpeg is not installed: saving the video as gif (pip install "
                "imageio[ffmpeg])"
            )
            fmt = "gif"
        self.save_img_sequence(
            stem,
            stem,
            r"(\d+)\.png",
            save_format=fmt,
            fps=30,
            name=f"{split}_epoch_end",
            step=self.true_global_step,
        )
        shutil.rmtree(os.path.join(self.get_save_dir(), stem), ignore_errors=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._save_video("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._save_video("test")

    # ---------------------------------------------------------------- checkpoints
    #: state-dict prefixes of frozen pretrained modules, kept out of checkpoints (a guidance that
    #: is an nn.Module, e.g. threestudio's unified guidances, would otherwise be saved)
    NON_CHECKPOINT_PREFIXES: Iterable[str] = ("guidance.", "guidance_3d.", "prompt_processor.")

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict", {})
        for k in [k for k in sd if k.startswith(tuple(self.NON_CHECKPOINT_PREFIXES))]:
            del sd[k]
        # optimizer and scheduler settings arrive as OmegaConf lists (Adam/Adan betas, milestones):
        # torch >= 2.6 loads checkpoints with weights_only=True, which refuses those classes
        plain_containers(checkpoint)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict")
        if sd is None:
            return
        for k, v in self.state_dict().items():
            if k.startswith(tuple(self.NON_CHECKPOINT_PREFIXES)) and k not in sd:
                sd[k] = v
