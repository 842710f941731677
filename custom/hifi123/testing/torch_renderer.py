"""A pure-torch NeRF volume renderer for CPU tests of threestudio systems.

threestudio's `nerf-volume-renderer` needs nerfacc's CUDA kernels. This renderer takes the same
config fields (the sampler settings are ignored), has the same call signature and output keys (`comp_rgb`, `comp_rgb_fg`, `comp_rgb_bg`, `opacity`, `depth`, and in
training `weights`, `t_points`, `t_intervals`, `t_dirs`, `ray_indices`, `points`, the geometry
outputs, `comp_normal`, `normal_perturb`), with uniform (optionally jittered) samples between the
near and far points of the sphere of radius `radius` around the origin. It is slow and simple, for
tests only: :func:`register_torch_volume_renderer` registers it (after `import threestudio`) under
`TEST_RENDERER_NAME`; it is never registered by the extension itself.
"""
from __future__ import annotations

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
            r = float(self.cfg.radius)
            # ray-sphere intersection (|o + t d| = r, d unit length)
            od = (o * d).sum(-1, keepdim=True)
            disc = (od**2 - ((o * o).sum(-1, keepdim=True) - r * r)).clamp_min(0.0).sqrt()
            near = (-od - disc).clamp_min(1e-2)
            far = (-od + disc).clamp_min(near + 1e-3)
            u = torch.linspace(0.0, 1.0, n + 1, device=o.device)
            edges = near + (far - near) * u
            if self.training and self.cfg.randomized:
                mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
                lo = torch.cat([edges[:, :1], mid], -1)
                hi = torch.cat([mid, edges[:, -1:]], -1)
                edges = lo + (hi - lo) * torch.rand_like(edges)
                edges = edges.sort(-1).values
            t0, t1 = edges[:, :-1], edges[:, 1:]
            tm = 0.5 * (t0 + t1)
            ray_indices = torch.arange(n_rays, device=o.device).repeat_interleave(n)
            t_dirs = d[ray_indices]
            positions = o[ray_indices] + t_dirs * tm.reshape(-1, 1)
            t_light = light_positions.reshape(-1, 3)
            t_light = t_light.repeat_interleave(h * w, 0) if t_light.shape[0] == b else t_light
            geo = self.geometry(positions, output_normal=self.material.requires_normal)
            mat_kwargs = kwargs if self.training else {}
            rgb = self.material(viewdirs=t_dirs, positions=positions, light_positions=t_light[ray_indices], **geo, **mat_kwargs)
            sigma = geo["density"].reshape(n_rays, n)
            alpha = 1.0 - torch.exp(-sigma * (t1 - t0))
            trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
            weights = alpha * trans
            opacity = weights.sum(-1, keepdim=True)
            depth = (weights * tm).sum(-1, keepdim=True)
            fg = (weights[..., None] * rgb.reshape(n_rays, n, -1)).sum(1)
            bg = self.background(dirs=rays_d)
            bgc = bg if bg_color is None else bg_color
            if bgc.shape[:-1] == (b,):
                bgc = bgc[:, None, None].expand(b, h, w, bgc.shape[-1])
            comp = fg + bgc.reshape(n_rays, -1) * (1.0 - opacity)
            out = {
                "comp_rgb": comp.view(b, h, w, -1),
                "comp_rgb_fg": fg.view(b, h, w, -1),
                "comp_rgb_bg": bg.view(b, h, w, -1),
                "opacity": opacity.view(b, h, w, 1),
                "depth": depth.view(b, h, w, 1),
            }
            if "normal" in geo and (self.cfg.return_comp_normal or not self.training):
                cn = F.normalize((weights[..., None] * geo["normal"].reshape(n_rays, n, 3)).sum(1), dim=-1)
                out["comp_normal"] = ((cn + 1.0) / 2.0 * opacity).view(b, h, w, 3)
            if self.training:
                out.update(
                    weights=weights.reshape(-1, 1), t_points=tm.reshape(-1, 1), t_intervals=(t1 - t0).reshape(-1, 1),
                    t_dirs=t_dirs, ray_indices=ray_indices, points=positions, **geo,
                )
                if "normal" in geo and self.cfg.return_normal_perturb:
                    out["normal_perturb"] = self.geometry(
                        positions + torch.randn_like(positions) * 1e-2, output_normal=True
                    )["normal"]
            return out

    return TorchVolumeRenderer
