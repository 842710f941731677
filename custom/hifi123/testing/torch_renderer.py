"""A pure-torch NeRF volume renderer for CPU tests of threestudio systems.

threestudio's `nerf-volume-renderer` needs nerfacc's CUDA kernels. This renderer takes the same
config fields (the sampler settings are ignored), has the same call signature and output keys
(`comp_rgb`, `comp_rgb_fg`, `comp_rgb_bg`, `opacity`, `depth`, and in training `weights`,
`t_points`, `t_intervals`, `t_dirs`, `ray_indices`, `points`, the geometry outputs, `comp_normal`,
`normal_perturb`), with uniform (optionally jittered) samples between the near and far points of the
sphere of radius `radius` around the origin. It is slow and simple, for tests only:
:func:`register_torch_volume_renderer` registers it (after `import threestudio`) under
`TEST_RENDERER_NAME`; it is never registered by the extension itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

TEST_RENDERER_NAME = "hifi123-testing-torch-volume-renderer"


def register_torch_volume_renderer() -> str:
    import threestudio

    if TEST_RENDERER_NAME not in threestudio.__modules__:
        threestudio.register(TEST_RENDERER_NAME)(_renderer_class())
    return TEST_RENDERER_NAME


def _renderer_class():
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from threestudio.models.renderers.base import VolumeRenderer
    from threestudio.models.renderers.nerf_volume_renderer import NeRFVolumeRenderer

    class TorchVolumeRenderer(VolumeRenderer):
        @dataclass
        class Config(NeRFVolumeRenderer.Config):
            # every field of nerf-volume-renderer is accepted (a config written for it runs here);
            # the sampler fields (estimator, grid_prune, proposal, ...) are ignored
            num_samples_per_ray: int = 16
            randomized: bool = True
            return_comp_normal: bool = True
            return_normal_perturb: bool = False

        cfg: Config

        def forward(self, rays_o, rays_d, light_positions, bg_color=None, **kwargs):
            b, h, w, _ = rays_o.shape
            o = rays_o.reshape(-1, 3)
            d = rays_d.reshape(-1, 3)
            n_rays, n = o.shape[0], int(self.cfg.num_samples_per_ray)
            jitter = self.training and self.cfg.randomized
            s = _ray_samples(o, d, float(self.cfg.radius), n, jitter)
            t_light = light_positions.reshape(-1, 3)
            t_light = t_light.repeat_interleave(h * w, 0) if t_light.shape[0] == b else t_light
            geo = self.geometry(s.positions, output_normal=self.material.requires_normal)
            mat_kwargs = kwargs if self.training else {}
            rgb = self.material(
                viewdirs=s.t_dirs,
                positions=s.positions,
                light_positions=t_light[s.ray_indices],
                **geo,
                **mat_kwargs,
            )
            weights, opacity, depth, fg = _composite(geo["density"], rgb, s)
            bg = self.background(dirs=rays_d)
            bgc = _background_colour(bg, bg_color, b, h, w)
            comp = fg + bgc.reshape(n_rays, -1) * (1.0 - opacity)
            out = {
                "comp_rgb": comp.view(b, h, w, -1),
                "comp_rgb_fg": fg.view(b, h, w, -1),
                "comp_rgb_bg": bg.view(b, h, w, -1),
                "opacity": opacity.view(b, h, w, 1),
                "depth": depth.view(b, h, w, 1),
            }
            if "normal" in geo and (self.cfg.return_comp_normal or not self.training):
                cn = F.normalize(
                    (weights[..., None] * geo["normal"].reshape(n_rays, n, 3)).sum(1), dim=-1
                )
                out["comp_normal"] = ((cn + 1.0) / 2.0 * opacity).view(b, h, w, 3)
            if self.training:
                out.update(**s.training_outputs(weights), **geo)
                if "normal" in geo and self.cfg.return_normal_perturb:
                    out["normal_perturb"] = self.geometry(
                        s.positions + torch.randn_like(s.positions) * 1e-2, output_normal=True
                    )["normal"]
            return out

    return TorchVolumeRenderer


class _Samples(NamedTuple):
    """The samples along the rays: per interval [n_rays, n], per sample [n_rays * n] (ray-major)."""

    t0: torch.Tensor  # the intervals' near ends
    t1: torch.Tensor  # their far ends
    tm: torch.Tensor  # their midpoints, where the samples are
    ray_indices: torch.Tensor  # the ray of each sample
    t_dirs: torch.Tensor  # [n_rays * n, 3] its direction
    positions: torch.Tensor  # [n_rays * n, 3] its position

    def training_outputs(self, weights: torch.Tensor) -> dict:
        """The per-sample outputs of a training forward (threestudio's keys)."""
        return dict(
            weights=weights.reshape(-1, 1),
            t_points=self.tm.reshape(-1, 1),
            t_intervals=(self.t1 - self.t0).reshape(-1, 1),
            t_dirs=self.t_dirs,
            ray_indices=self.ray_indices,
            points=self.positions,
        )


def _ray_samples(o: torch.Tensor, d: torch.Tensor, radius: float, n: int, jitter: bool) -> _Samples:
    """`n` samples per ray (o + t d) at the midpoints of `n` intervals between the near and far
    points of the sphere of `radius` around the origin: uniform, or stratified at random with
    `jitter`."""
    import torch

    r = radius
    # ray-sphere intersection (|o + t d| = r, d unit length)
    od = (o * d).sum(-1, keepdim=True)
    disc = (od**2 - ((o * o).sum(-1, keepdim=True) - r * r)).clamp_min(0.0).sqrt()
    near = (-od - disc).clamp_min(1e-2)
    far = (-od + disc).clamp_min(near + 1e-3)
    u = torch.linspace(0.0, 1.0, n + 1, device=o.device)
    edges = near + (far - near) * u
    if jitter:
        mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        lo = torch.cat([edges[:, :1], mid], -1)
        hi = torch.cat([mid, edges[:, -1:]], -1)
        edges = lo + (hi - lo) * torch.rand_like(edges)
        edges = edges.sort(-1).values
    t0, t1 = edges[:, :-1], edges[:, 1:]
    tm = 0.5 * (t0 + t1)
    ray_indices = torch.arange(o.shape[0], device=o.device).repeat_interleave(n)
    t_dirs = d[ray_indices]
    positions = o[ray_indices] + t_dirs * tm.reshape(-1, 1)
    return _Samples(t0, t1, tm, ray_indices, t_dirs, positions)


def _composite(density: torch.Tensor, rgb: torch.Tensor, s: _Samples):
    """Volume rendering of the samples: (weights [n_rays, n], opacity and depth [n_rays, 1], the
    foreground colour [n_rays, C])."""
    import torch

    n_rays, n = s.tm.shape
    sigma = density.reshape(n_rays, n)
    alpha = 1.0 - torch.exp(-sigma * (s.t1 - s.t0))
    ones = torch.ones_like(alpha[:, :1])
    trans = torch.cumprod(torch.cat([ones, 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans
    opacity = weights.sum(-1, keepdim=True)
    depth = (weights * s.tm).sum(-1, keepdim=True)
    fg = (weights[..., None] * rgb.reshape(n_rays, n, -1)).sum(1)
    return weights, opacity, depth, fg


def _background_colour(bg: torch.Tensor, bg_color, b: int, h: int, w: int) -> torch.Tensor:
    """The colour behind each pixel: `bg_color` when given (one [B, C] colour per image spread
    over its pixels), else the background module's `bg`."""
    bgc = bg if bg_color is None else bg_color
    if bgc.shape[:-1] == (b,):
        bgc = bgc[:, None, None].expand(b, h, w, bgc.shape[-1])
    return bgc
