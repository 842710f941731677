"""RGSD: reference-guided state distillation (HiFi-123 §3.3, Eq. 4-5, Sup. §2.2, Algorithm 1).

The authors never released this part; this is our reconstruction (algorithms.md B.3, decisions
7-11). Notation: g = the rendering, z = E(g) its SD latent (gradient flows through the VAE
encoder), ẑ = the DDIM inversion of sg(z) by S steps of a T-step grid, R = RGNV denoising with
the reference's self-attention K/V injected (the reference branch comes from a `ReferenceCache`
computed once per run).

Two kinds of iterations alternate (decision 9):

* t = 0, fixed view j: loss = mean ‖z − z̃0_j‖², where z̃0_j is the fully enhanced latent
  of fixed view j, computed ONCE at the start of refinement (`compute_fixed_targets`), stored in the
  checkpoint (`state_dict`) and restored on resume.
* t > 0, random view: t ~ U{1..S} counts the denoising steps still to go. R runs S − t steps from
  ẑ to the state z̃_t, and one more (injected, CFG) evaluation there gives ε̃ and the clean
  prediction x̂0 = (z̃_t − sqrt(1 − ā_t) ε̃) / sqrt(ā_t). The paper builds the rendering's
  state as z_t = sqrt(ā_t) z + sqrt(1 − ā_t) ε̃ (gradient only through z), and the noise cancels:

        z_t − z̃_t = sqrt(ā_t) (z − x̂0)            (decision 8)

  so the loss w(t) ‖z_t − sg(z̃_t)‖² is the ā_t-weighted latent MSE
  w(t) ā_t ‖z − sg(x̂0)‖², which is what `loss_random` computes (mean over latent elements).

Defaults (decision 7): T = 20, S = 12, CFG 7.5 (textbook form) on the target branch with the
caption as prompt and "" as negative; reference branch "". Depth condition of renders: the rendered
depth as disparity, masked, normalised (decision 11); DPT is a switch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple, get_args

import torch
import torch.nn.functional as F

from ..diffusion import ddim
from ..diffusion.sd import VaeCodec
from ..images import composite, depth_to_latent, normalize_depth, resize
from ..morphology import dilate
from ..settings import setting
from .render_guidance import (
    RGNVGuidanceConfig,
    check_render,
    load_pipeline_and_reference,
    render_disparity,
)
from .rgnv import RGNVPipeline

Weighting = Literal["uniform", "one_minus_alpha"]
WEIGHTINGS = get_args(Weighting)
DepthSource = Literal["render", "dpt"]


@dataclass
class RGSDConfig(RGNVGuidanceConfig):
    """RGSD settings: the shared RGNV-guidance settings (model, reference, sampler with T = 20,
    S = 12, CFG 7.5; render depth — `core/hifi123/render_guidance.py`) plus RGSD's own."""

    weighting: Weighting = "uniform"
    """w(t) of the random-view term: 1 (decision 8), or the SDS-style 1 - ā_t."""
    depth_source: DepthSource = "render"
    """Depth condition of a render: its own depth (decision 11), or "dpt" to estimate it."""
    fixed_views: Tuple[Tuple[float, float], ...] = ((0.0, 90.0), (0.0, -90.0))
    """(elevation, azimuth) in degrees RELATIVE to the reference view (decision 9)."""
    mask_background: bool = True
    """Both terms over the object only: the render's opacity, dilated, at latent size. RGNV
    paints its own background where the render has a fixed grey one; that residual can never
    shrink and its gradient leaks through the VAE encoder into the texture (the paper masks it
    away, §4.2). Off = the whole latent."""
    mask_dilation_px: int = setting(16, ge=0)
    """Dilation of that mask, at the model's input size (512 for SD2-depth: 2 latent pixels)."""

    def validate(self, check_files: bool = True) -> None:
        super().validate(check_files)
        if not self.fixed_views or any(len(v) != 2 for v in self.fixed_views):
            raise ValueError(
                f"fixed_views must list (elevation, azimuth) pairs, got {self.fixed_views!r}"
            )


#: RGSDConfig fields that do not shape the fixed-view targets; every other field is compared when
#: a checkpoint's targets are restored. Paths are left out because a trial moves between machines
#: (a different reference image is a different run: start it anew); precision, cache placement and
#: the t > 0 weighting do not change the t = 0 targets; DPT is only a fallback for missing depth.
TARGET_INDEPENDENT = frozenset(
    {
        "cond_image_path",
        "cond_depth_path",
        "use_caption_file",
        "half_precision_weights",
        "cache_device",
        "load_depth_estimator",
        "weighting",
        "mask_background",
        "mask_dilation_px",
    }
)


def broadcast_from_rank0(t: torch.Tensor) -> torch.Tensor:
    """Make `t` identical on every rank (no-op without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src=0)
    return t


class RGSD:
    """The RGSD loss on a loaded SD2-depth (`RGNVPipeline`)."""

    def __init__(self, pipe_or_components, config: Optional[RGSDConfig] = None):
        self.cfg = config or RGSDConfig()
        self.cfg.validate(check_files=False)
        if isinstance(pipe_or_components, RGNVPipeline):
            self.pipe = pipe_or_components
            self.pipe.configure(self.cfg)  # grid and layers follow OUR settings
        else:
            self.pipe = RGNVPipeline(pipe_or_components, self.cfg)
        self.codec = VaeCodec(self.pipe.c.vae, "mean", grad=True)
        self.cache = None
        self.fixed_targets: Optional[torch.Tensor] = None  # [N,4,h,w] enhanced clean latents z̃0
        self.reference_builds = 0

    @classmethod
    def from_config(cls, cfg: RGSDConfig, device=None) -> "RGSD":
        """Validate (files included), read the reference, load SD2-depth on `device`, build the
        reference branch."""
        cfg.validate()
        pipe, ref, ref_depth = load_pipeline_and_reference(cfg, device)
        m = cls(pipe, cfg)
        m.set_reference(ref, ref_depth)
        return m

    # ------------------------------------------------------------------ setup (once per run)
    def set_reference(self, ref_rgba, ref_depth=None) -> None:
        """Build the reference branch once (decision 10). Calling again is a no-op."""
        if self.cache is None:
            self.cache = self.pipe.build_reference(ref_rgba, ref_depth)
            self.reference_builds += 1

    def _require_reference(self):
        if self.cache is None:
            raise RuntimeError("RGSD: call set_reference(reference_rgba) before computing losses")
        return self.cache

    # ------------------------------------------------------------------ renders -> model inputs
    def prepare_render(
        self,
        rgb: torch.Tensor,
        opacity: Optional[torch.Tensor] = None,
        depth: Optional[torch.Tensor] = None,
        condition: bool = True,
    ):
        """threestudio render tensors -> (image [B,3,R,R] with grad, mask [B,1,R,R], depth cond;
        None without `condition`: the t = 0 branch needs no UNet and so no depth, estimated or
        rendered).

        rgb [B,H,W,3] in [0,1]; opacity [B,H,W,1] (None: the whole frame is the object); depth
        [B,H,W,1] in `depth_type` (None, or `depth_source="dpt"`: DPT). See render_guidance.
        """
        check_render(rgb, opacity, depth)
        if opacity is not None and opacity.dim() == 3:
            opacity = opacity[..., None]
        size = self.pipe.size
        x = F.interpolate(
            rgb.permute(0, 3, 1, 2),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        if opacity is None:
            mask = torch.ones_like(x[:, :1])
        else:
            m = F.interpolate(
                opacity.detach().permute(0, 3, 1, 2).float(),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
            )
            mask = (m > 0.5).to(x.dtype)
        image = composite(x, mask, self.pipe.background(self.cfg.coarse_background, size).to(x))
        if not condition:
            return image, mask, None
        with torch.no_grad():
            if self.cfg.depth_source == "dpt" or depth is None:
                cond = self.pipe.depth_condition(image.detach().float(), mask.float())
            else:
                disp = render_disparity(
                    depth, opacity, self.cfg.depth_type, self.cfg.depth_weighted_by_opacity
                )
                disp = resize(disp.to(x.device), size, "bilinear")
                cond = depth_to_latent(normalize_depth(disp, mask.float()), self.pipe.latent_size)
        return image, mask, cond

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """VAE posterior mean x scaling factor, WITH gradient to the image ([0,1] input)."""
        return self.codec.encode(image)

    # ------------------------------------------------------------------ t = 0 branch
    @torch.no_grad()
    def compute_fixed_targets(self, rgb: torch.Tensor, opacity=None, depth=None) -> torch.Tensor:
        """Full RGNV enhancement (invert S, denoise S) of the fixed views' renders -> z̃0
        [N,4,h,w].

        Computed once at the start of refinement; identical on every rank (broadcast from rank 0).
        """
        cache = self._require_reference()
        image, mask, cond = self.prepare_render(rgb, opacity, depth)
        z = self.encode(image)
        targets = torch.cat(
            [
                self.pipe.denoise_latents(cache, z[i : i + 1], cond[i : i + 1])
                for i in range(z.shape[0])
            ]
        )
        self.fixed_targets = broadcast_from_rank0(targets.contiguous())
        return self.fixed_targets

    def loss_fixed(
        self, rgb: torch.Tensor, view_index, opacity=None, depth=None
    ) -> Dict[str, torch.Tensor]:
        """t = 0: mean ‖E(g) − z̃0_j‖² for renders of fixed views `view_index` (int or [B]
        ints)."""
        if self.fixed_targets is None:
            raise RuntimeError(
                "RGSD: fixed-view targets are missing: compute_fixed_targets() at refine start, "
                "or restore them from the checkpoint (load_state_dict)"
            )
        image, mask, _ = self.prepare_render(rgb, opacity, depth, condition=False)
        z = self.encode(image)
        idx = torch.as_tensor(view_index, device=self.fixed_targets.device).long().reshape(-1)
        target = self.fixed_targets[idx].to(z)
        loss = self.masked_mse(z, target.expand_as(z), mask if opacity is not None else None)
        return {"loss_rgsd": loss, "rgsd_t": torch.zeros(()), "rgsd_target_latent": target}

    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Object mask [B,1,R,R] at the model's input size -> [B,1,h,w] latent weights: dilated by
        `mask_dilation_px`, then a latent pixel counts when any of its input pixels does."""
        k = int(self.cfg.mask_dilation_px)
        m = dilate(mask.float(), k)
        return (F.adaptive_max_pool2d(m, self.pipe.latent_size) > 0.5).float()

    def masked_mse(
        self, z: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Mean squared latent difference over the object (`mask_background`), else everywhere."""
        if mask is None or not self.cfg.mask_background:
            return F.mse_loss(z, target, reduction="mean")
        w = self.latent_mask(mask).to(z)
        return ((z - target) ** 2 * w).sum() / (w.sum() * z.shape[1]).clamp_min(1.0)

    # ------------------------------------------------------------------ t > 0 branch
    def weight(self, a_t: float) -> float:
        return 1.0 if self.cfg.weighting == "uniform" else 1.0 - a_t

    def sample_t(self, generator: Optional[torch.Generator] = None) -> int:
        return int(torch.randint(1, self.cfg.inject_steps + 1, (1,), generator=generator))

    def random_state(self, z: torch.Tensor, cond: torch.Tensor, t: int) -> ddim.StepRecord:
        """No-grad RGNV of sg(z) stopped with t steps to go: the record of the evaluation at z̃_t
        (z_in = z̃_t, eps = ε̃, x0 = x̂0, level ā_t = alpha(index))."""
        T, S = self.cfg.num_steps, self.cfg.inject_steps
        if not 1 <= t <= S:
            raise ValueError(f"t must be in 1..S={S}, got {t}")
        rec: List[ddim.StepRecord] = []
        k = S - t + 1  # denoising evaluations: S - t steps to reach z̃_t, one more at z̃_t
        self.pipe.denoise_latents(
            self._require_reference(), z.detach(), cond, stop=T - S + k, record=rec
        )
        return rec[-1]

    def loss_random(
        self,
        rgb: torch.Tensor,
        opacity=None,
        depth=None,
        t: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """t > 0 on a random view: w(t) ā_t mean ‖z − sg(x̂0)‖² (= w(t) mean
        ‖z_t − sg(z̃_t)‖²)."""
        image, mask, cond = self.prepare_render(rgb, opacity, depth)
        z = self.encode(image)
        t = self.sample_t(generator) if t is None else int(t)
        r = self.random_state(z, cond, t)
        a_t = self.pipe.grid.alpha(r.index)
        x0 = r.x0.to(z)
        loss = (
            self.weight(a_t) * a_t * self.masked_mse(z, x0, mask if opacity is not None else None)
        )
        return {
            "loss_rgsd": loss,
            "rgsd_t": torch.tensor(float(t)),
            "rgsd_alpha_t": torch.tensor(a_t),
            "rgsd_target_latent": x0,
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, object]:
        return {
            "fixed_targets": None
            if self.fixed_targets is None
            else self.fixed_targets.detach().cpu().clone(),
            "config": asdict(self.cfg),
        }

    @staticmethod
    def check_state(state: Dict[str, object], cfg: RGSDConfig) -> None:
        """Refuse targets computed with other sampler settings (never recompute them silently)."""
        saved = state.get("config", {}) or {}
        mine = asdict(cfg)
        keys = [k for k in mine if k not in TARGET_INDEPENDENT]
        diff = {
            k: (saved.get(k), mine[k])
            for k in keys
            if k in saved and _norm(saved[k]) != _norm(mine[k])
        }
        if diff:
            raise ValueError(
                f"RGSD checkpoint targets were computed with other settings {diff} (saved, now); "
                "resume with the saved settings or start the refine stage again"
            )

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.check_state(state, self.cfg)
        t = state.get("fixed_targets")
        self.fixed_targets = None if t is None else torch.as_tensor(t).clone()


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class FixedViewSchedule:
    """Alternation of t = 0 fixed-view and t > 0 random-view iterations (decision 9)."""

    n_fixed: int = 2
    every: int = 2  # one fixed-view iteration every `every` iterations

    def is_fixed(self, step: int) -> bool:
        return step % self.every == 0

    def fixed_index(self, step: int) -> int:
        return (step // self.every) % self.n_fixed


def relative_fixed_cameras(
    fixed_views: Sequence[Tuple[float, float]], ref_elevation: float, ref_azimuth: float
):
    """Absolute (elevation, azimuth) in degrees of fixed views given relative to the reference."""
    return [
        (ref_elevation + e, ((ref_azimuth + a + 180.0) % 360.0) - 180.0) for e, a in fixed_views
    ]
