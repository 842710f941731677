"""RGNV: reference-guided novel-view enhancement (HiFi-123 §3.2, Fig. 2; algorithms.md A).

Symmetric form (decision 1): the reference and each coarse novel view are DDIM-inverted S steps of
a T-step grid with the empty prompt and no CFG, each with its own (masked, normalised) depth as the
5th UNet channel; both are then denoised from level T - S, and in the selected decoder
self-attention layers the novel view's queries attend over the reference's keys and values
(mutual self-attention, Eq. 3). The target branch uses CFG on the target prompt; the reference
branch is unguided with the empty prompt.

The reference branch depends on the reference image alone, so it is computed once into a
`ReferenceCache` (its inverted latent, its denoising trajectory and its K/V at every step in the
selected layers) and reused for any number of target views: per view the cost is S inversion
evaluations plus S (CFG-batched) denoising evaluations.

Defaults (decisions 2, 4, 5): T = 50, S = 30, blocks 12-15 of SD2's 16, CFG 9 (textbook form),
depth masked for both images and min-max normalised to [-1, 1], reference composited on a
procedural texture, coarse view on the official constant grey, output composited on white.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Literal, Optional, Sequence, Tuple, get_args

import numpy as np
import torch

from ..diffusion import ddim
from ..diffusion.attention import InjectionState, mutual_self_attention, select_layers
from ..diffusion.sd import UNetNoisePredictor, VaeCodec, encode_prompts
from ..images import composite, depth_to_latent, normalize_depth, resize, to_tensor_image
from ..settings import check_declared, setting

GREY = (126 / 255.0, 129 / 255.0, 127 / 255.0)  # official coarse-view background (util_new.py)
Background = Literal["texture", "grey", "white"]
BACKGROUNDS = get_args(Background)


@dataclass
class RGNVConfig:
    """The RGNV sampler. Defaults: the official enhancement script (T = 50, S = 30, CFG 9)."""

    num_steps: int = setting(50, ge=1)
    """T, the DDIM grid (official run.sh / infer_rgnv.py)."""
    steps_offset: Optional[int] = setting(0, ge=0)
    """Grid offset: 0 gives 980..0 at T = 50 as the official code (decision 21); None: the
    model's own (SD2: 1)."""
    inject_steps: int = setting(30, ge=1)
    """S: inversion depth = number of injected denoising steps (run.sh --stop_step 30)."""
    guidance_scale: float = setting(9.0, ge=0.0)
    """CFG scale on the target prompt only (infer_rgnv.py)."""
    cfg_form: ddim.CFGForm = "textbook"
    """textbook: eps_u + s (eps_c - eps_u), as the official code; threestudio: eps_c + s (...)."""
    prompt: str = ""
    """Target prompt (e.g. the caption, "side view of ...")."""
    negative_prompt: str = ""
    """Unconditional prompt of the target branch."""
    reference_prompt: str = ""
    """Prompt of the reference branch, which runs unguided: must stay empty (decision 28)."""
    inject: bool = True
    """Mutual self-attention on; off = plain inversion and resampling of the view (ablation)."""
    inject_blocks: Tuple[int, ...] = (12, 13, 14, 15)
    """Execution-order transformer blocks whose self-attention reads the reference (decision 2)."""
    mask_reference_depth: bool = True
    """Depth masked to the object for the reference too: the paper (decision 4); the official
    code leaves it unmasked."""
    reference_background: Background = "texture"
    """Behind the reference object: a procedural texture, as SD2-depth dislikes flat
    backgrounds (decision 5)."""
    coarse_background: Background = "grey"
    """Behind the coarse view: the official constant grey (126, 129, 127)."""
    texture_seed: int = 0
    """Seed of the procedural background texture."""
    cache_device: Optional[str] = None
    """Where the reference keys/values live ("cpu" saves VRAM); None: with the UNet."""

    def validate(self) -> None:
        check_declared(self)
        if not 1 <= self.inject_steps <= self.num_steps:
            raise ValueError(
                f"inject_steps (S) must be in [1, num_steps={self.num_steps}], got "
                f"{self.inject_steps}"
            )
        if self.reference_prompt.strip() and self.inject:
            # both CFG halves of the target attend to ONE reference K/V (the unguided branch's);
            # with a prompt the reference's K/V would differ per half (MasaCtrl injects per half;
            # decision 28)
            raise ValueError(
                f"reference_prompt must be empty (got {self.reference_prompt!r}): the reference "
                "branch runs unguided and its self-attention keys/values are shared by both CFG "
                "halves of the target, which equals per-half injection only for the empty prompt"
            )


@dataclass
class ReferenceCache:
    """Everything of the reference branch that target views reuse."""

    z0: torch.Tensor  # clean latent
    z_start: torch.Tensor  # inverted latent at grid level T - S
    z_final: torch.Tensor  # the reference's own reconstruction (end of its denoising)
    depth: torch.Tensor  # [1,1,h,w] condition in [-1,1]
    mask: torch.Tensor  # [1,1,H,W]
    image: torch.Tensor  # [1,3,H,W] in [0,1], as composited for the model
    kv: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]]  # step -> layer -> (K, V)
    layers: List[str]
    key: Tuple  # (grid timesteps, S, layers, reference_prompt): the cache is valid only for these
    unet_evals: int = 0

    def nbytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size()
            for d in self.kv.values()
            for k, v in d.values()
        )


@dataclass
class RGNVOutput:
    images: torch.Tensor  # [N,3,H,W] enhanced, composited on white with the coarse masks
    raw: torch.Tensor  # [N,3,H,W] decoded, not composited
    masks: torch.Tensor  # [N,1,H,W]
    latents: torch.Tensor  # [N,4,h,w] final latents
    inputs: torch.Tensor  # [N,3,H,W] coarse views as fed to the model (composited)
    records: List[List[ddim.StepRecord]] = field(default_factory=list)


class RGNVPipeline:
    """RGNV on loaded SD2-depth components (`hifi123.models.loader.load_diffusion`)."""

    def __init__(
        self,
        components,
        config: Optional[RGNVConfig] = None,
        depth_estimator=None,
        depth_processor=None,
    ):
        self.c = components
        self.cfg = config or RGNVConfig()
        if not components.is_depth_model:
            raise ValueError(
                f"RGNV needs a depth-conditioned UNet (5 input channels); {components.ref} has "
                f"{components.unet.config.in_channels}. Use an SD2-depth model."
            )
        self.configure(self.cfg)
        self.depth_estimator = (
            depth_estimator if depth_estimator is not None else components.depth_estimator
        )
        self.depth_processor = (
            depth_processor if depth_processor is not None else components.feature_extractor
        )
        self.state = InjectionState(
            store_device=torch.device(self.cfg.cache_device) if self.cfg.cache_device else None
        )
        self._emb: Dict[str, torch.Tensor] = {}
        self._backgrounds: Dict[Tuple[str, int, int], torch.Tensor] = {}
        # called (phase, n_steps) per step
        self.progress: Optional[Callable[[str, int], None]] = None
        # tests plug an oracle here: noise_model(prompt, depth, guided) -> eps_fn (default: the
        # UNet)
        self.noise_model: Optional[Callable[[str, torch.Tensor, bool], Callable]] = None

    def configure(self, config: RGNVConfig) -> None:
        """Use `config` from now on: the DDIM grid and the injected layers follow it (a reference
        cache built under other settings is refused by its key). Only the sampler settings are
        checked here (a guidance's settings are checked where it is configured)."""
        RGNVConfig.validate(config)
        self.cfg = config
        self.grid = ddim.DDIMGrid.from_scheduler(
            self.c.scheduler, config.num_steps, config.steps_offset
        )
        self.layers = select_layers(self.c.unet, config.inject_blocks)

    # ------------------------------------------------------------------ building blocks
    @property
    def size(self) -> int:
        return self.c.image_size

    @property
    def latent_size(self) -> int:
        return int(self.c.unet.config.sample_size)

    @property
    def prediction_type(self) -> str:
        return getattr(self.c.scheduler.config, "prediction_type", "epsilon")

    def text_embedding(self, prompt: str) -> torch.Tensor:
        """The text encoder's states for `prompt`, cached (prompts do not change during a run)."""
        if prompt not in self._emb:
            self._emb[prompt] = encode_prompts(self.c.tokenizer, self.c.text_encoder, [prompt])
        return self._emb[prompt]

    def background(self, kind: str, size: int) -> torch.Tensor:
        """[1,3,size,size] in [0,1], made once per (kind, size, seed) and cached (read-only)."""
        key = (kind, int(size), int(self.cfg.texture_seed))
        cached = self._backgrounds.get(key)
        if cached is None:
            if kind == "white":
                cached = torch.ones(1, 3, size, size)
            elif kind == "grey":
                cached = torch.tensor(GREY).view(1, 3, 1, 1).expand(1, 3, size, size).clone()
            else:
                from ..images import procedural_background

                texture = procedural_background(size, seed=self.cfg.texture_seed)
                cached = to_tensor_image(np.asarray(texture, dtype=np.float32))
            self._backgrounds[key] = cached
        return cached

    def prepare(self, rgba, background: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """RGBA ([H,W,4] array or [1,4,H,W] tensor in [0,1]) -> image [1,3,R,R] in [0,1] composited
        on `background`, binary mask [1,1,R,R] (alpha > 0.5, nearest)."""
        x = rgba if torch.is_tensor(rgba) else to_tensor_image(np.asarray(rgba, dtype=np.float32))
        if x.dim() == 3:
            x = x[None]
        x = x.float()
        rgb = resize(x[:, :3], self.size, "bicubic").clamp(0, 1)
        mask = (resize(x[:, 3:4], self.size, "bilinear") > 0.5).float()
        return composite(rgb, mask, self.background(background, self.size).to(rgb)), mask

    @torch.no_grad()
    def estimate_depth(self, image: torch.Tensor) -> torch.Tensor:
        """DPT disparity (near = large) of image [B,3,R,R] in [0,1], resized to R."""
        if self.depth_estimator is None:
            raise ValueError(
                "no depth map given and no depth estimator loaded (SD2-depth ships one)"
            )
        proc = self.depth_processor
        size = proc.size
        hw = (
            (size["height"], size["width"])
            if isinstance(size, dict) and "height" in size
            else (384, 384)
        )
        x = torch.nn.functional.interpolate(
            image.float(), size=hw, mode="bicubic", align_corners=False
        )
        mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1).to(x)
        std = torch.tensor(proc.image_std).view(1, 3, 1, 1).to(x)
        dev = next(self.depth_estimator.parameters()).device
        dt = next(self.depth_estimator.parameters()).dtype
        x = ((x - mean) / std).to(dev, dt)
        pred = (
            self.depth_estimator(pixel_values=x).predicted_depth[:, None].float().to(image.device)
        )
        return torch.nn.functional.interpolate(
            pred, size=(self.size, self.size), mode="bicubic", align_corners=False
        )

    def depth_condition(self, image, mask, depth=None, apply_mask: bool = True) -> torch.Tensor:
        """Depth channel [B,1,h,w] in [-1,1]: given or DPT disparity, masked, min-max, resized."""
        if depth is None:
            d = self.estimate_depth(image)
        else:
            d = (
                depth
                if torch.is_tensor(depth)
                else torch.from_numpy(np.asarray(depth, dtype=np.float32))
            )
            d = d.float()
            while d.dim() < 4:
                d = d[None]
            d = resize(d, self.size, "bicubic")
        d = normalize_depth(d, mask if apply_mask else None)
        return depth_to_latent(d, self.latent_size)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """VAE posterior MEAN x scaling factor (A.1) of image [B,3,R,R] in [0,1], no gradient."""
        return VaeCodec(self.c.vae, "mean", grad=False).encode(image)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return VaeCodec(self.c.vae, "mean", grad=False).decode(z)

    def _eps(self, prompt: str, depth: torch.Tensor, guided: bool):
        if self.noise_model is not None:
            return self.noise_model(prompt, depth, guided)
        dev = self.c.device
        return UNetNoisePredictor(
            self.c.unet,
            self.grid.alphas_cumprod,
            self.text_embedding(prompt).to(dev),
            depth=depth.to(dev),
            text_uncond=self.text_embedding(self.cfg.negative_prompt).to(dev) if guided else None,
            guidance_scale=self.cfg.guidance_scale,
            cfg_form=self.cfg.cfg_form,
            prediction_type=self.prediction_type,
            before_call=self._set_step,
        )

    def _set_step(self, step_index: Optional[int]) -> None:
        self.state.step = step_index
        if self.progress is not None:
            self.progress(self.state.mode, 1)

    def cache_key(self) -> Tuple:
        return (
            tuple(self.grid.timesteps.tolist()),
            self.cfg.inject_steps,
            tuple(self.layers),
            self.cfg.reference_prompt,
        )

    # ------------------------------------------------------------------ the two branches
    @torch.no_grad()
    def build_reference(self, ref_rgba, ref_depth=None) -> ReferenceCache:
        """Run the reference branch once: invert S steps, denoise S steps recording K/V."""
        T, S = self.cfg.num_steps, self.cfg.inject_steps
        image, mask = self.prepare(ref_rgba, self.cfg.reference_background)
        depth = self.depth_condition(
            image, mask, ref_depth, apply_mask=self.cfg.mask_reference_depth
        )
        z0 = self.encode(image)
        eps_fn = self._eps(self.cfg.reference_prompt, depth, guided=False)
        self.state.mode = "off"
        z_start = ddim.invert(eps_fn, z0, self.grid, S)
        self.state.store = {}
        self.state.mode = "record"
        try:
            with mutual_self_attention(self.c.unet, self.layers, self.state):
                z_final = ddim.sample(eps_fn, z_start, self.grid, start=T - S)
        finally:
            self.state.mode = "off"
        kv, self.state.store = self.state.store, {}
        return ReferenceCache(
            z0, z_start, z_final, depth, mask, image, kv, list(self.layers), self.cache_key(), 2 * S
        )

    def _check_cache(self, cache: Optional[ReferenceCache]) -> None:
        """With injection on, `cache` must be the reference branch of these settings."""
        if not self.cfg.inject:
            return
        if cache is None:
            raise ValueError("injection is on but no reference cache was given (build_reference)")
        if cache.key != self.cache_key():
            raise ValueError(
                f"reference cache was built for (grid, S, layers, prompt) = {cache.key}, "
                f"not {self.cache_key()}"
            )

    @torch.no_grad()
    def enhance(
        self,
        cache: Optional[ReferenceCache],
        coarse: Sequence,
        depths: Optional[Sequence] = None,
        batch_size: int = 1,
        stop: Optional[int] = None,
        record: bool = False,
    ) -> RGNVOutput:
        """Enhance coarse views (RGBA arrays/tensors) with the reference branch in `cache`.

        `stop` (grid index) ends denoising early (RGSD's t > 0 states); `record` keeps every
        step's (z, eps, x0) per view.
        """
        self._check_cache(cache)
        T = self.cfg.num_steps
        depths = list(depths) if depths is not None else [None] * len(coarse)
        if len(depths) != len(coarse):
            raise ValueError(f"{len(coarse)} coarse views but {len(depths)} depth maps")
        prepared = [self.prepare(v, self.cfg.coarse_background) for v in coarse]
        outs, raws, lats, records = [], [], [], []
        for s in range(0, len(coarse), batch_size):
            chunk = prepared[s : s + batch_size]
            image = torch.cat([c[0] for c in chunk])
            mask = torch.cat([c[1] for c in chunk])
            depth = torch.cat(
                [
                    self.depth_condition(c[0], c[1], d)
                    for c, d in zip(chunk, depths[s : s + batch_size])
                ]
            )
            z0 = self.encode(image)
            rec: Optional[List[ddim.StepRecord]] = [] if record else None
            z = self.denoise_latents(cache, z0, depth, stop=stop, record=rec)
            # decoded on the model's device; composite with the mask on the inputs' device
            raw = (
                self.decode(z).to(image.device)
                if stop is None or stop == T
                else torch.zeros_like(image)
            )
            outs.append(composite(raw, mask, torch.ones_like(raw)))
            raws.append(raw)
            lats.append(z)
            if record:
                records.extend([[_slice_record(r, i) for r in rec] for i in range(z.shape[0])])
        return RGNVOutput(
            torch.cat(outs),
            torch.cat(raws),
            torch.cat([c[1] for c in prepared]),
            torch.cat(lats),
            torch.cat([c[0] for c in prepared]),
            records,
        )

    @torch.no_grad()
    def denoise_latents(
        self,
        cache: Optional[ReferenceCache],
        z0: torch.Tensor,
        depth: torch.Tensor,
        stop: Optional[int] = None,
        record: Optional[List[ddim.StepRecord]] = None,
    ) -> torch.Tensor:
        """The target branch on clean latents z0 [B,4,h,w] with depth [B,1,h,w]: invert S steps
        (empty prompt, no CFG), then denoise from level T - S (to grid index `stop`, default the
        end) with CFG on the target prompt and, when on, the reference's K/V injected."""
        self._check_cache(cache)
        T, S = self.cfg.num_steps, self.cfg.inject_steps
        self.state.mode = "off"
        z_start = ddim.invert(self._eps("", depth, guided=False), z0, self.grid, S)
        sampler = self._eps(self.cfg.prompt, depth, guided=True)
        if self.cfg.inject:
            self.state.store = cache.kv
            self.state.mode = "inject"
        try:
            with mutual_self_attention(self.c.unet, self.layers, self.state):
                return ddim.sample(
                    sampler, z_start, self.grid, start=T - S, stop=stop, record=record
                )
        finally:
            self.state.mode = "off"
            self.state.store = {}

    def __call__(
        self, ref_rgba, coarse: Sequence, ref_depth=None, depths=None, batch_size: int = 1
    ) -> RGNVOutput:
        cache = self.build_reference(ref_rgba, ref_depth) if self.cfg.inject else None
        return self.enhance(cache, coarse, depths, batch_size=batch_size)

    def reference_reconstruction(self, cache: ReferenceCache) -> torch.Tensor:
        """The reference branch's own output, decoded and composited on white with its mask."""
        raw = self.decode(cache.z_final).to(cache.mask.device)
        return composite(raw, cache.mask, torch.ones_like(raw))


@torch.no_grad()
def upscale_x4(
    upscaler,
    raw: torch.Tensor,
    masks: torch.Tensor,
    prompt: str = "",
    noise_level: int = 50,
    steps: int = 75,
    guidance_scale: float = 9.0,
    seed: int = 42,
) -> torch.Tensor:
    """Decision 6 / algorithms.md A.8 (optional): bilinear-resize the UNMASKED RGNV output to half
    size, run the SD x4 upscaler (noise level 50, 75 steps, CFG 9, seed 42 by default), then
    composite on white with the nearest-upsampled mask. raw [N,3,H,W], masks [N,1,H,W] in [0,1];
    returns [N,3,2H,2W]."""
    n, _, h, w = raw.shape
    low = torch.nn.functional.interpolate(
        raw.float(), size=(h // 2, w // 2), mode="bilinear", align_corners=False, antialias=True
    )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    up = upscaler(
        prompt=[prompt] * n,
        image=low * 2 - 1,
        noise_level=noise_level,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=gen,
        output_type="np",
    ).images
    up = torch.from_numpy(up).permute(0, 3, 1, 2).float().clamp(0, 1)
    m = torch.nn.functional.interpolate(masks.float(), size=up.shape[-2:], mode="nearest")
    return up * m + (1 - m)


def _slice_record(r: ddim.StepRecord, i: int) -> ddim.StepRecord:
    return ddim.StepRecord(
        r.index, r.t, r.z_in[i : i + 1], r.eps[i : i + 1], r.x0[i : i + 1], r.z_out[i : i + 1]
    )
