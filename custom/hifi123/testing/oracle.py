"""Oracle noise predictors: models whose output is known in closed form, so DDIM code is exact.

Both follow the noise-prediction signature of `hifi123.core.diffusion.ddim`
(`eps_fn(z, t, **cond)`).

* `TrajectoryOracle(noise)`: the perfect denoiser for one forward trajectory
  z_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise. Every state on the trajectory has true noise `noise`,
  and a DDIM step (either direction) maps a state on it to another state on it, so DDIM inversion
  followed by DDIM sampling returns the input exactly, whatever the step count.
* `CleanLatentOracle(x0, alphas_cumprod)`: returns the true noise of any z relative to a known clean
  latent at the queried level, eps = (z - sqrt(a_t) x0) / sqrt(1 - a_t); its x0-prediction is x0
  exactly, for any z and t.
"""

from __future__ import annotations

import torch


class TrajectoryOracle:
    def __init__(self, noise: torch.Tensor):
        self.noise = noise
        self.calls = 0

    def __call__(self, z: torch.Tensor, t, **cond) -> torch.Tensor:
        self.calls += 1
        if z.shape[0] != self.noise.shape[0]:
            return self.noise[:1].expand_as(z).to(z)
        return self.noise.to(z).expand_as(z)


class CleanLatentOracle:
    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor):
        self.x0 = x0
        self.alphas_cumprod = alphas_cumprod.double()
        self.calls = 0

    def __call__(self, z: torch.Tensor, t, **cond) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t).long().reshape(-1).to(self.alphas_cumprod.device)
        a = self.alphas_cumprod[t].to(z.device)
        a = a.reshape(-1, *([1] * (z.dim() - 1)))
        x0 = self.x0.to(z.device).double()
        return ((z.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(z.dtype)
