"""Deterministic DDIM inversion and sampling, written against a noise-prediction function.

HiFi-123 §3.1-3.2 (depth-conditioned DDIM inversion); algorithms.md A.4-A.5.

A noise-prediction function is any callable `eps_fn(z, t, **kw) -> eps` with `z` a latent batch
and `t` an integer timestep. `sd.UNetNoisePredictor` builds one from a diffusers UNet (depth as the
5th input channel, classifier-free guidance in a named form, v-prediction converted to epsilon).
Tests drive the same code with the oracles of `hifi123.testing.oracle`.

Notation: a(t) = alphas_cumprod[t]. The DDIM grid has T timesteps t_0 > t_1 > ... > t_{T-1} taken
from a diffusers scheduler. A latent "at level i" has noise level a(t_i); the clean end is the
scheduler's final level a_final (= a(0) for SD, whose `set_alpha_to_one` is False).

  sampling step i (level i -> i+1, or -> a_final after the last):
      x0 = (z - sqrt(1 - a_i) eps) / sqrt(a_i),  z <- sqrt(a_{i+1}) x0 + sqrt(1 - a_{i+1}) eps
      with eps = eps_fn(z, t_i)
  inversion step (level i+1 -> i, starting from a_final): the same update in reverse, with eps
      evaluated on the SOURCE latent at the DESTINATION timestep t_i (the standard approximation,
      as the official HiFi-123 code and diffusers' DDIMInverseScheduler from 0.26 on; 0.19's
      evaluates at the source timestep instead, so we do not use the scheduler's step here).

`invert(S)` runs S inversion steps, ending at level T - S; `sample(start=T - S)` runs the last S
sampling steps. Both are deterministic (eta = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Literal, Optional, Tuple, get_args

import torch

NoiseFn = Callable[..., torch.Tensor]

CFGForm = Literal["textbook", "threestudio"]
CFG_FORMS = get_args(CFGForm)


def cfg_combine(
    eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float, form: str
) -> torch.Tensor:
    """Classifier-free guidance.

    * "textbook": eps_u + s (eps_c - eps_u)   (Ho & Salimans; HiFi-123's RGNV code, Zero123)
    * "threestudio": eps_c + s (eps_c - eps_u) (threestudio's SD/IF guidances; equals textbook at
      s + 1; Make-It-3D's (1 + w) eps_c - w eps_u is this form with s = w)
    """
    if form == "textbook":
        return eps_uncond + scale * (eps_cond - eps_uncond)
    if form == "threestudio":
        return eps_cond + scale * (eps_cond - eps_uncond)
    raise ValueError(f"cfg_form must be one of {CFG_FORMS}, got {form!r}")


@dataclass
class DDIMGrid:
    """Timesteps (sampling order, descending) and the cumulative alphas of a diffusers scheduler."""

    timesteps: torch.Tensor  # long [T]
    alphas_cumprod: torch.Tensor  # float64 [num_train_timesteps]
    final_alpha_cumprod: float

    @classmethod
    def from_scheduler(
        cls, scheduler, num_steps: int, steps_offset: Optional[int] = None
    ) -> "DDIMGrid":
        """The scheduler's grid for `num_steps`; `steps_offset` (None: the scheduler's own) shifts
        it, as diffusers' `steps_offset` does: 0 gives 980, 960, ..., 0 at T = 50, SD2's 1 gives
        981, ..., 1. The scheduler passed in is not changed."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if steps_offset is not None and getattr(scheduler.config, "steps_offset", 0) != int(
            steps_offset
        ):
            scheduler = type(scheduler).from_config(
                scheduler.config, steps_offset=int(steps_offset)
            )
        scheduler.set_timesteps(num_steps)
        ts = scheduler.timesteps.detach().clone().long().cpu()
        ac = scheduler.alphas_cumprod.detach().clone().double().cpu()
        final = getattr(scheduler, "final_alpha_cumprod", None)
        final = float(final) if final is not None else float(ac[0])
        return cls(ts, ac, final)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())

    def alpha(self, index: int) -> float:
        """Level of a latent at grid index `index` (index == T means the clean end)."""
        if index >= self.num_steps:
            return self.final_alpha_cumprod
        return float(self.alphas_cumprod[int(self.timesteps[index])])

    def t(self, index: int) -> int:
        return int(self.timesteps[index])


def ddim_update(
    z: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM move of `z` from level a_from to level a_to. Returns (z_new, x0)."""
    x0 = (z - (1.0 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0 + (1.0 - a_to) ** 0.5 * eps, x0


@dataclass
class StepRecord:
    """What one DDIM step saw: grid index, timestep, the latent it started from, its eps and x0."""

    index: int
    t: int
    z_in: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor
    z_out: torch.Tensor


def invert(
    eps_fn: NoiseFn,
    z: torch.Tensor,
    grid: DDIMGrid,
    num_steps: Optional[int] = None,
    record: Optional[List[StepRecord]] = None,
    **kw,
) -> torch.Tensor:
    """DDIM inversion of a clean latent `z` by `num_steps` (default: all T) steps.

    Returns the latent at grid level T - num_steps, the level `sample(start=T - num_steps)` starts
    from. Latents are computed in float32 (or float64 if given) whatever the model dtype.
    """
    T = grid.num_steps
    S = T if num_steps is None else int(num_steps)
    if not 0 <= S <= T:
        raise ValueError(f"inversion steps must be in [0, {T}], got {S}")
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    for k in range(S):
        i = T - 1 - k  # destination grid index
        eps = eps_fn(z, grid.t(i), step_index=i, **kw).to(z.dtype)
        z_new, x0 = ddim_update(z, eps, grid.alpha(i + 1), grid.alpha(i))
        if record is not None:
            record.append(StepRecord(i, grid.t(i), z, eps, x0, z_new))
        z = z_new
    return z


def sample(
    eps_fn: NoiseFn,
    z: torch.Tensor,
    grid: DDIMGrid,
    start: int = 0,
    stop: Optional[int] = None,
    record: Optional[List[StepRecord]] = None,
    **kw,
) -> torch.Tensor:
    """DDIM sampling from grid level `start` through steps start..stop-1 (default: to the end)."""
    T = grid.num_steps
    stop = T if stop is None else int(stop)
    if not 0 <= start <= stop <= T:
        raise ValueError(f"need 0 <= start <= stop <= {T}, got start={start}, stop={stop}")
    z = z.float() if z.dtype not in (torch.float32, torch.float64) else z
    for i in range(start, stop):
        eps = eps_fn(z, grid.t(i), step_index=i, **kw).to(z.dtype)
        z_new, x0 = ddim_update(z, eps, grid.alpha(i), grid.alpha(i + 1))
        if record is not None:
            record.append(StepRecord(i, grid.t(i), z, eps, x0, z_new))
        z = z_new
    return z
