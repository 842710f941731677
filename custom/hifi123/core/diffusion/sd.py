"""Stable Diffusion plumbing shared by RGNV, RGSD and the Make-It-3D prior.

* :class:`UNetNoisePredictor`: a noise-prediction function ``eps_fn(z, t)`` from a diffusers
  UNet, with the depth map as the 5th input channel (SD2-depth), classifier-free guidance as one
  batched call [uncond; cond] combined in a named form (`ddim.cfg_combine`), and v-prediction
  models converted to epsilon. ``t`` is one integer timestep for the whole batch (DDIM) or one per
  item (SDS draws a t per view).
* :class:`VaeCodec`: images in [0, 1] <-> scaled latents, with the posterior mean or a sample,
  and a switch for the gradient (RGSD and the prior differentiate through the encoder; RGNV
  does not).
* :func:`encode_prompts`: the text encoder's states for a list of prompts.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence, Union, get_args

import torch

from .ddim import CFG_FORMS, cfg_combine

PredictionType = Literal["epsilon", "v_prediction"]
LatentMode = Literal["mean", "sample"]


class UNetNoisePredictor:
    """eps_fn backed by a diffusers UNet.

    * `depth`: [B or 1, 1, h, w] condition concatenated as the 5th input channel (SD2-depth).
    * `text_cond` [B or 1, L, D]; with `text_uncond`, CFG runs as one batched call [uncond; cond]
      combined in `cfg_form` with `guidance_scale`.
    * v-prediction models are converted to epsilon with the scheduler's alphas.
    * `before_call(step_index)` runs before every UNet call (RGNV selects the injected keys and
      values of that step there).
    """

    def __init__(
        self,
        unet,
        alphas_cumprod: torch.Tensor,
        text_cond: torch.Tensor,
        depth: Optional[torch.Tensor] = None,
        text_uncond: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        cfg_form: str = "textbook",
        prediction_type: str = "epsilon",
        before_call: Optional[Callable[[Optional[int]], None]] = None,
    ) -> None:
        if cfg_form not in CFG_FORMS:
            raise ValueError(f"cfg_form must be one of {CFG_FORMS}, got {cfg_form!r}")
        if prediction_type not in get_args(PredictionType):
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod.detach().double()
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.depth = depth
        self.guidance_scale = float(guidance_scale)
        self.cfg_form = cfg_form
        self.prediction_type = prediction_type
        self.before_call = before_call
        self.needs_depth = int(unet.config.in_channels) == 5
        if self.needs_depth and depth is None:
            raise ValueError(
                "this UNet takes a depth channel (5 input channels) but no depth was given"
            )
        if not self.needs_depth and depth is not None:
            raise ValueError("a depth condition was given but the UNet has no depth channel")

    @property
    def uses_cfg(self) -> bool:
        return self.text_uncond is not None

    @staticmethod
    def _rows(x: torch.Tensor, b: int, like: torch.Tensor) -> torch.Tensor:
        x = x.to(like.device, like.dtype)
        return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x

    def __call__(
        self, z: torch.Tensor, t: Union[int, torch.Tensor], step_index: Optional[int] = None, **_
    ) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        b = z.shape[0]
        inp = z.to(dtype)
        if self.needs_depth:
            inp = torch.cat([inp, self._rows(self.depth, b, inp)], dim=1)
        cond = self._rows(self.text_cond, b, inp)
        steps = torch.as_tensor(t, device=z.device).long().reshape(-1)
        steps = steps.expand(b) if steps.numel() == 1 else steps
        if self.uses_cfg:
            inp = torch.cat([inp, inp], 0)
            cond = torch.cat([self._rows(self.text_uncond, b, inp), cond], 0)
            steps = torch.cat([steps, steps], 0)
        if self.before_call is not None:
            self.before_call(step_index)
        out = self.unet(inp, steps, encoder_hidden_states=cond).sample.to(z.dtype)
        if self.prediction_type == "v_prediction":
            a = self.alphas_cumprod.to(z.device)[steps].view(-1, 1, 1, 1)
            zz = torch.cat([z, z], 0) if self.uses_cfg else z
            out = a.sqrt().to(z.dtype) * out + (1 - a).sqrt().to(z.dtype) * zz
        if self.uses_cfg:
            eps_uncond, eps_cond = out.chunk(2)
            return cfg_combine(eps_uncond, eps_cond, self.guidance_scale, self.cfg_form)
        return out


class VaeCodec:
    """A diffusers AutoencoderKL as images [B,3,H,W] in [0,1] <-> scaled latents.

    `latent_mode`: the posterior "mean" (deterministic) or a "sample" (with `generator`).
    `grad`: False runs both directions without a graph (a call inside `torch.no_grad` never has
    one anyway). Inputs are moved to the VAE's device and dtype; outputs are float32.
    """

    def __init__(
        self,
        vae,
        latent_mode: str = "mean",
        generator: Optional[torch.Generator] = None,
        grad: bool = True,
    ) -> None:
        if latent_mode not in get_args(LatentMode):
            raise ValueError(
                f"latent_mode must be one of {get_args(LatentMode)}, got {latent_mode!r}"
            )
        self.vae = vae
        self.latent_mode = latent_mode
        self.generator = generator
        self.grad = grad
        self.scale = float(getattr(vae.config, "scaling_factor", 0.18215))

    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        p = self._param()
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            posterior = self.vae.encode((image * 2.0 - 1.0).to(p.device, p.dtype)).latent_dist
            z = (
                posterior.mean
                if self.latent_mode == "mean"
                else posterior.sample(generator=self.generator)
            )
            return z.float() * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = self._param()
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            image = self.vae.decode((z / self.scale).to(p.device, p.dtype)).sample.float()
            return (image * 0.5 + 0.5).clamp(0.0, 1.0)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, texts: Sequence[str], device=None) -> torch.Tensor:
    """Text-encoder states [N, L, D] for `texts` (padded to the tokenizer's max length), on the
    text encoder's device unless `device` is given."""
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device if device is not None else text_encoder.device)
    return text_encoder(ids)[0]
