"""Make-It-3D's diffusion prior for novel views: SDS at large t, CLIP-D at small t (paper §3.2,
Eq. 3-4; algorithms.md C.4; decision 14).

Everything is written against four callables, so tests can drive the exact mechanism with oracles:

* ``eps_fn(z_t, t) -> eps``: the guided noise prediction (t is a [B] long tensor). Built from an SD
  UNet by the shared `core.diffusion.sd.UNetNoisePredictor`: CFG in the paper's form (1 + w)
  eps_c - w eps_u with w = 10, i.e. `cfg_combine(..., form="threestudio", scale=10)` (textbook CFG
  at 11). Always called under ``torch.no_grad`` (no gradient through the UNet).
* ``encode_fn(rgb) -> z``: the rendering ([B,3,S,S] in [0,1], S the model's image size) to scaled
  latents, WITH gradient. The official code uses a posterior sample (sd.py:212-220); `latent_mode
  = "mean"` uses the posterior mean instead (deterministic).
* ``decode_fn(z) -> rgb``: latents to [B,3,S,S] in [0,1], WITH gradient.
* ``clip.encode_image(rgb) -> e``: L2-normalised CLIP image embeddings, WITH gradient (see
  `hifi123.models.clip_encoder`).

Per novel view (every item draws its own t ~ U{min_step, ..., max_step}, t/1000 in [0.2, 0.6]):

    z_t  = sqrt(a_t) z + sqrt(1 - a_t) eps,            eps ~ N(0, I)
    e^   = eps_fn(z_t, t)                              no grad
    CLIP-D branch  (t <= 400 and not a back view):
        x0^ = (z_t - sqrt(1 - a_t) sg(e^)) / sqrt(a_t)  grad flows through z (d x0^ / d z = I)
        loss_clip_d     = -cos(CLIP(decode(x0^)), CLIP(reference))     paper Eq. 4
        loss_clip_d_txt = -cos(CLIP(decode(x0^)), CLIP_text(caption))  official code only
    SDS branch (otherwise):
        grad = w(t) (e^ - eps), w(t) = 1 - a_t ("sds"; the official sd.py:164-171) or 1 ("uniform",
               the paper's wording)
        loss_sds = 0.5 || z - sg(z - grad) ||^2 / B,  so d loss_sds / d z = grad / B (threestudio)
    Raw-render CLIP terms (official code, not in the paper; weight 0 by default in our configs):
        loss_clip_img = -cos(CLIP(render), CLIP(reference)),  loss_clip_txt = -cos(CLIP(render),
                                                              CLIP_text(caption))

The official code builds z_t and decodes under ``no_grad`` (and decodes z_{t-1}, not x0^), so its
CLIP-D sends no gradient to the NeRF; this implementation follows the paper (decision 14).

Batch reduction: each per-item term is summed over the items of its branch and divided by the
batch size B, so with B = 1 (Make-It-3D) every loss is the per-view value, and for B > 1 the
losses of the two branches add up to per-batch means.

Back views: |azimuth - reference azimuth| >= 135 deg (see `cameras.is_back_view`); they always use
SDS. Pass the relative azimuth per item; None means "no back views".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Literal, Optional, get_args

import torch
import torch.nn.functional as F

from ...models.clip_encoder import DEFAULT_OPEN_CLIP
from ...models.loader import DEFAULT_MODELS
from ..diffusion.ddim import CFGForm
from ..diffusion.sd import UNetNoisePredictor, VaeCodec, encode_prompts
from ..settings import check_declared, setting
from .cameras import is_back_view

TERMS = ("sds", "clip_d", "clip_d_txt", "clip_img", "clip_txt")
DIFFUSION_TERMS = ("sds", "clip_d", "clip_d_txt")
CLIP_D_TERMS = ("clip_d", "clip_d_txt")
RAW_CLIP_TERMS = ("clip_img", "clip_txt")
Weighting = Literal["sds", "uniform"]
WEIGHTINGS = get_args(Weighting)
LatentMode = Literal["sample", "mean"]
LATENT_MODES = get_args(LatentMode)
Attention = Literal["auto", "sdpa", "xformers"]
ClipBackend = Literal["open_clip", "transformers"]
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class MakeIt3DPriorConfig:
    """The prior's sampling and loss settings (official Make-It-3D code unless said otherwise)."""

    guidance_scale: float = setting(10.0, ge=0.0)
    """w in (1 + w) eps_c - w eps_u (official main.py, sd.py)."""
    cfg_form: CFGForm = "threestudio"
    """eps_c + w (eps_c - eps_u) == (1 + w) eps_c - w eps_u; "textbook" = eps_u + w (...)."""
    min_step_percent: float = setting(0.2, ge=0.0, le=1.0)
    """t ~ U[200, 600] (official --step_range 0.2 0.6)."""
    max_step_percent: float = setting(0.6, ge=0.0, le=1.0)
    """Upper end of the t range, as a fraction of 1000 training steps."""
    clip_d_max_step_percent: float = setting(0.4, ge=0.0, le=1.0)
    """CLIP-D when t <= 400 (official sd.py); 0 = never."""
    back_threshold_deg: float = setting(135.0, ge=0.0)
    """A back view: |relative azimuth| >= 180 - 45; back views always use SDS. Above 180: none."""
    weighting_strategy: Weighting = "sds"
    """SDS weight w(t): 1 - a_t (official, "sds") or 1 ("uniform", the paper's text)."""
    latent_mode: LatentMode = "sample"
    """The rendering's latent: a VAE posterior sample (official) or its "mean"."""
    grad_clip: Optional[float] = setting(None, gt=0.0)
    """Clamp of the SDS gradient; None: only nan -> 0 (official)."""

    def validate(self) -> None:
        check_declared(self)
        lo, hi = float(self.min_step_percent), float(self.max_step_percent)
        if not lo <= hi:
            raise ValueError(f"need min_step_percent <= max_step_percent, got {lo}, {hi}")


@dataclass
class MakeIt3DGuidanceConfig(MakeIt3DPriorConfig):
    """Every setting of the Make-It-3D guidance: the prior's, plus its models and inputs. The
    threestudio `makeit3d-guidance` derives its `Config` from this class (`core/settings.py`)."""

    pretrained_model_name_or_path: str = DEFAULT_MODELS["sd2_base"]
    """SD2-base (official), hub id or local directory (decision 13)."""
    half_precision_weights: bool = True
    """fp16 UNet/VAE on CUDA; always fp32 on CPU."""
    vae_gradient_checkpointing: bool = False
    """Lower memory for the CLIP-D decode, at some speed."""
    attention: Attention = "auto"
    """Attention kernel of the UNet: auto, sdpa or xformers."""
    clip_backend: ClipBackend = "open_clip"
    """Which library loads the CLIP of CLIP-D (decision 14)."""
    clip_model: str = DEFAULT_OPEN_CLIP[0]
    """open_clip model name, hf-hub: id or directory; or a transformers CLIP id or directory."""
    clip_pretrained: Optional[str] = DEFAULT_OPEN_CLIP[1]
    """open_clip pretrained tag or checkpoint file (open_clip backend only)."""
    cond_image_path: str = ""
    """The reference RGBA (threestudio configs set it to ${data.image_path}). Required."""
    prompt: str = ""
    """The caption; with `use_caption_file`, an empty prompt reads the caption file."""
    use_caption_file: bool = True
    """With an empty `prompt`, read `<name>_caption.txt` next to the reference (decision 30)."""
    negative_prompt: str = ""
    """Unconditional prompt (official default "")."""
    reference_azimuth_deg: float = 0.0
    """The reference view's azimuth (set to ${data.default_azimuth_deg}); a call may pass it."""


def step_from_percent(p: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> int:
    """threestudio's int(T * p), rounded so that 0.6 * 1000 is 600 whatever the float error."""
    return int(round(float(p) * num_train_timesteps))


def select_clip_d(
    t: torch.Tensor,
    relative_azimuth: Optional[torch.Tensor],
    clip_d_max_step: int,
    back_threshold_deg: float = 135.0,
) -> torch.Tensor:
    """[B] bool: True where the CLIP-D branch applies (t <= clip_d_max_step and not a back view)."""
    small_t = t <= clip_d_max_step
    if relative_azimuth is None:
        return small_t
    back = is_back_view(relative_azimuth.to(t.device).float(), 0.0, back_threshold_deg)
    return small_t & ~back


# ------------------------------------------------------------------------------------- models


def enable_vae_gradient_checkpointing(vae) -> None:
    """Recompute VAE activations in the backward pass (CLIP-D decodes a 512^2 image with grad).

    diffusers < 0.2x only checkpoints in training mode; the VAE has no dropout or batch norm, so
    putting its encoder/decoder in training mode changes nothing else.
    """
    vae.enable_gradient_checkpointing()
    vae.encoder.train()
    vae.decoder.train()


# -------------------------------------------------------------------------------------- prior


class MakeIt3DPrior:
    """SDS + CLIP-D (+ raw-render CLIP) on novel views. See the module docstring."""

    def __init__(
        self,
        cfg: MakeIt3DPriorConfig,
        alphas_cumprod: torch.Tensor,
        eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        encode_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        decode_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        clip=None,
        reference_embedding: Optional[torch.Tensor] = None,
        text_embedding: Optional[torch.Tensor] = None,
        image_size: int = 512,
        latent_size: int = 64,
        reference_rgba: Optional[torch.Tensor] = None,
    ):
        cfg.validate()
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod.detach().float()
        self.eps_fn = eps_fn
        self.encode_fn = encode_fn
        self.decode_fn = decode_fn
        self.clip = clip
        self.reference_embedding = reference_embedding
        self.text_embedding = text_embedding
        self.image_size = int(image_size)
        self.latent_size = int(latent_size)
        # with the RGBA, the reference is composited on each render's own background per call
        # (`background=` of __call__); `reference_embedding` is the white-background one
        self.reference_rgba = reference_rgba

    # -------------------------------------------------------------------- steps
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def min_step(self) -> int:
        return step_from_percent(self.cfg.min_step_percent, self.num_train_timesteps)

    @property
    def max_step(self) -> int:
        return step_from_percent(self.cfg.max_step_percent, self.num_train_timesteps)

    @property
    def clip_d_max_step(self) -> int:
        return step_from_percent(self.cfg.clip_d_max_step_percent, self.num_train_timesteps)

    def sample_timesteps(
        self, b: int, device, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """t ~ U{min_step, ..., max_step} (inclusive, as the official randint), one per item."""
        t = torch.randint(self.min_step, self.max_step + 1, (b,), generator=generator)
        return t.to(device)

    # ----------------------------------------------------------------- pieces
    def alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return (
            self.alphas_cumprod.to(like.device)[t.to(like.device).long()]
            .to(like.dtype)
            .view(-1, 1, 1, 1)
        )

    def noisy_latents(
        self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        a = self.alpha(t, latents)
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.eps_fn(z_t.detach(), t).to(z_t.dtype)

    def predict_x0(self, z_t: torch.Tensor, t: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
        """x0^ = (z_t - sqrt(1 - a_t) sg(eps^)) / sqrt(a_t), differentiable in z_t."""
        a = self.alpha(t, z_t)
        return (z_t - (1 - a).sqrt() * eps_hat.detach()) / a.sqrt()

    def sds_gradient(
        self, eps_hat: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        w = (
            1 - self.alpha(t, eps_hat)
            if self.cfg.weighting_strategy == "sds"
            else torch.ones_like(eps_hat[:, :1, :1, :1])
        )
        grad = torch.nan_to_num(w * (eps_hat - noise))
        if self.cfg.grad_clip is not None:
            grad = grad.clamp(-float(self.cfg.grad_clip), float(self.cfg.grad_clip))
        return grad

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.encode_fn is None:
            raise RuntimeError("this prior has no encoder: pass latents (as_latents=True)")
        x = images
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, (self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return self.encode_fn(x)

    def _clip_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.clip is None:
            raise RuntimeError("this prior has no CLIP encoder")
        return self.clip.encode_image(images).float()

    def _need(self, what: Optional[torch.Tensor], name: str) -> torch.Tensor:
        if what is None:
            raise RuntimeError(f"this prior has no {name} embedding")
        return what

    @torch.no_grad()
    def reference_embeddings(self, background: Optional[torch.Tensor] = None) -> torch.Tensor:
        """CLIP embedding of the reference on `background` (see `composite_reference`): [B,D],
        or the white-background embedding [1,D] when there is no background or no RGBA."""
        if background is None or self.reference_rgba is None:
            return self._need(self.reference_embedding, "reference")
        from .reference import composite_reference

        rgba = self.reference_rgba.to(background.device)
        return self._clip_image(composite_reference(rgba, background.detach().float()))

    # -------------------------------------------------------------------- call
    def __call__(
        self,
        images: torch.Tensor,
        relative_azimuth: Optional[torch.Tensor] = None,
        terms: Optional[Iterable[str]] = None,
        t: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        as_latents: bool = False,
        generator: Optional[torch.Generator] = None,
        return_eval: bool = False,
        background: Optional[torch.Tensor] = None,
    ) -> Dict[str, Any]:
        """Losses for a batch of novel views.

        images: [B,3,H,W] renderings in [0,1] (any size; resized to the model's), or with
          `as_latents` [B,4,h,w] latents (resized to the latent size).
        relative_azimuth: [B] degrees from the reference (None: no back views).
        terms: the subset of TERMS to compute (None: all). Terms not asked for are not computed
          and not returned; the diffusion model runs only if a diffusion term is asked for.
        t, noise: fix the timesteps ([B] long) and the noise (like the latents); drawn otherwise.
        background: the renders' own background ([B,3] colours or [B,3,H,W] / [B,H,W,3] images):
          the CLIP reference is composited on it (official); None: on white.
        Returns `loss_<term>` scalars plus `t`, `use_clip_d`, `is_back` ([B]), `grad_norm`,
        `latents`, `x0_pred` (detached) and, with `return_eval`, an `eval` dict of images.
        """
        want = self._wanted_terms(terms)
        b = images.shape[0]
        device = images.device
        out: Dict[str, Any] = {}
        relative_azimuth, out["is_back"] = self._back_views(relative_azimuth, b, device)
        if want & set(RAW_CLIP_TERMS):
            out.update(self._raw_clip_losses(images, want, as_latents, background))
        if not want & set(DIFFUSION_TERMS):
            return out

        latents = self._latents(images, as_latents)
        t, noise = self._timesteps_and_noise(latents, t, noise, b, device, generator)
        use_clip_d = select_clip_d(
            t, relative_azimuth, self.clip_d_max_step, self.cfg.back_threshold_deg
        )
        z_t = self.noisy_latents(latents, t, noise)
        eps_hat = self.predict_noise(z_t, t)
        x0 = self.predict_x0(z_t, t, eps_hat)
        if "sds" in want:
            out.update(self._sds_loss(latents, eps_hat, noise, t, use_clip_d, b))
        if want & set(CLIP_D_TERMS):
            out.update(self._clip_d_losses(latents, x0, use_clip_d, want, background, b))

        out.update(
            t=t, use_clip_d=use_clip_d, latents=latents.detach(), x0_pred=x0.detach(), noise=noise
        )
        if return_eval:
            out["eval"] = self._eval_images(z_t, t, eps_hat, x0)
        return out

    @staticmethod
    def _wanted_terms(terms: Optional[Iterable[str]]) -> set:
        """The set of terms to compute (None: all of TERMS); an unknown term is an error."""
        want = set(TERMS if terms is None else terms)
        unknown = want - set(TERMS)
        if unknown:
            raise ValueError(f"unknown Make-It-3D prior terms {sorted(unknown)}; known: {TERMS}")
        return want

    def _back_views(self, relative_azimuth, b: int, device):
        """(relative azimuth as [B] floats or None, [B] bool back-view flags: none without one)."""
        if relative_azimuth is None:
            return None, torch.zeros(b, dtype=torch.bool, device=device)
        relative_azimuth = torch.as_tensor(relative_azimuth, device=device).float()
        relative_azimuth = relative_azimuth.reshape(-1).expand(b)
        return relative_azimuth, is_back_view(relative_azimuth, 0.0, self.cfg.back_threshold_deg)

    def _raw_clip_losses(self, images, want: set, as_latents: bool, background) -> Dict[str, Any]:
        """The raw-render CLIP terms asked for: -cos(CLIP(render), reference / caption)."""
        if as_latents:
            raise ValueError("the raw-render CLIP terms need images, not latents")
        out: Dict[str, Any] = {}
        emb = self._clip_image(images)
        if "clip_img" in want:
            ref = self.reference_embeddings(background).to(emb)
            out["loss_clip_img"] = -(emb * ref).sum(-1).mean()
        if "clip_txt" in want:
            txt = self._need(self.text_embedding, "text").to(emb)
            out["loss_clip_txt"] = -(emb * txt).sum(-1).mean()
        return out

    def _latents(self, images: torch.Tensor, as_latents: bool) -> torch.Tensor:
        """The latents to noise: `images` themselves (resized) with `as_latents`, else encoded."""
        if not as_latents:
            return self.encode(images)
        latents = images.float()
        size = (self.latent_size, self.latent_size)
        if latents.shape[-2:] != size:
            latents = F.interpolate(latents, size, mode="bilinear", align_corners=False)
        return latents

    def _timesteps_and_noise(self, latents, t, noise, b: int, device, generator):
        """([B] long timesteps, noise like the latents): the given ones, or drawn (t first)."""
        if t is None:
            t = self.sample_timesteps(b, device, generator)
        t = torch.as_tensor(t, device=device).long().reshape(-1).expand(b)
        if noise is None:
            if generator is None:
                noise = torch.randn_like(latents)
            else:
                noise = torch.randn(latents.shape, generator=generator, device=generator.device)
                noise = noise.to(latents)
        return t, noise

    def _sds_loss(self, latents, eps_hat, noise, t, use_clip_d, b: int) -> Dict[str, Any]:
        """`loss_sds` over the items not on the CLIP-D branch, and the SDS gradient's norm."""
        keep = (~use_clip_d).to(latents.dtype).view(-1, 1, 1, 1)
        grad = self.sds_gradient(eps_hat, noise, t) * keep
        target = (latents - grad).detach()
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum") / b
        return {"loss_sds": loss, "grad_norm": grad.norm()}

    def _clip_d_losses(self, latents, x0, use_clip_d, want: set, background, b: int):
        """The CLIP-D terms asked for, over the items on the CLIP-D branch (x0^ decoded)."""
        idx = use_clip_d.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            zero = latents.sum() * 0.0  # a zero that keeps the graph (a step with no active item)
            return {f"loss_{k}": zero for k in CLIP_D_TERMS if k in want}
        if self.decode_fn is None:
            raise RuntimeError("CLIP-D needs a decoder")
        out: Dict[str, Any] = {}
        emb = self._clip_image(self.decode_fn(x0[idx]))
        if "clip_d" in want:
            bg = None if background is None else background[idx]
            ref = self.reference_embeddings(bg).to(emb)
            out["loss_clip_d"] = -(emb * ref).sum(-1).sum() / b
        if "clip_d_txt" in want:
            txt = self._need(self.text_embedding, "text").to(emb)
            out["loss_clip_d_txt"] = -(emb * txt).sum(-1).sum() / b
        return out

    @torch.no_grad()
    def _eval_images(self, z_t, t, eps_hat, x0) -> Dict[str, torch.Tensor]:
        """Decoded z_t, the one-step z_{t-1} of the official CLIP-D (1000-step grid) and x0^."""
        if self.decode_fn is None:
            return {}
        a_prev = self.alpha((t - 1).clamp_min(0), z_t)
        z_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_hat
        return {
            "imgs_noisy": self.decode_fn(z_t),
            "imgs_1step": self.decode_fn(z_prev),
            "imgs_1orig": self.decode_fn(x0),
        }


def build_prior_from_models(
    cfg: MakeIt3DPriorConfig,
    components,
    clip,
    prompt: str,
    negative_prompt: str,
    reference: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> MakeIt3DPrior:
    """A prior from loaded SD components (`hifi123.models.loader.DiffusionComponents`), a
    `ClipEncoder`, the prompt pair and the reference image: RGBA [1,4,H,W] (composited on each
    render's background per call) or RGB [1,3,H,W] already composited (fixed), in [0,1]."""
    from .reference import composite_reference

    rgba = reference if reference.shape[1] == 4 else None
    reference_rgb = composite_reference(reference) if rgba is not None else reference
    device = components.device
    cfg.validate()
    cond = encode_prompts(components.tokenizer, components.text_encoder, [prompt], device)
    uncond = encode_prompts(
        components.tokenizer, components.text_encoder, [negative_prompt], device
    )
    sched = components.scheduler
    ac = sched.alphas_cumprod.detach().float()
    eps_fn = UNetNoisePredictor(
        components.unet,
        ac,
        cond,
        text_uncond=uncond,
        guidance_scale=cfg.guidance_scale,
        cfg_form=cfg.cfg_form,
        prediction_type=getattr(sched.config, "prediction_type", "epsilon"),
    )
    codec = VaeCodec(components.vae, cfg.latent_mode, generator)
    with torch.no_grad():
        ref_emb = clip.encode_image(reference_rgb.to(clip.device)).float()
        txt_emb = clip.encode_text([prompt]).float()
    return MakeIt3DPrior(
        cfg,
        ac,
        eps_fn,
        codec.encode,
        codec.decode,
        clip,
        ref_emb,
        txt_emb,
        image_size=components.image_size,
        latent_size=int(components.unet.config.sample_size),
        reference_rgba=None if rgba is None else rgba.to(clip.device),
    )
