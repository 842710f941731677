"""`makeit3d-deferred-renderer`: the multi-scale point rasteriser + gated U-Net of the Make-It-3D
refine stage as a threestudio renderer (thin shell around `hifi123.core.makeit3d.point_raster` and
`hifi123.core.makeit3d.deferred_unet`).

Called with a threestudio batch (`c2w` [B, 4, 4], `fovy` [B] radians, `height`, `width`), it
rasterises all scales and runs the U-Net. Returns `comp_rgb` [B, H, W, 3], `opacity` [B, H, W, 1]
(coverage at full
  resolution), `depth` [B, H, W, 1] (coverage-weighted camera z), `coverage_scales` (one
  [B, h, w, 1] per scale) and `comp_rgb_bg` (white, the target of the background loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from threestudio.models.renderers.base import Rasterizer

from ...core.makeit3d.deferred_unet import UNET_WIDTHS, DeferredUNet
from ...core.makeit3d.point_raster import PointRasterSettings, rasterize_points
from ...core.settings import setting
from ...errors import InputError
from ..registry import StrictConfig, register


def _as_int(x) -> int:
    """threestudio passes `height`/`width` as ints in training and 1-element tensors in eval."""
    return int(x.reshape(-1)[0]) if torch.is_tensor(x) else int(x)


# ------------------------------------------------------------------------------------ renderer
@register("makeit3d-deferred-renderer")
class MakeIt3DDeferredRenderer(StrictConfig, Rasterizer):
    config_path = "system.renderer"

    @dataclass
    class Config(Rasterizer.Config):
        # at full resolution (M3D: 2 px at 800, same NDC at every scale)
        point_radius_px: float = setting(2.0, gt=0.0)
        points_per_pixel: int = setting(8, ge=1)  # M3D: 8 nearest points composited per pixel
        n_scales: int = setting(3, ge=1)  # full, /2, /4 (M3D K = 3)
        # compositing stops below (exact zeros behind saturated pixels)
        min_transmittance: float = setting(1e-4, ge=0.0, lt=1.0)
        depth_slabs: int = setting(4, ge=1)  # occlusion culling granularity (speed only)
        # fewer slabs when they would hold fewer points (speed only)
        min_slab_points: int = setting(16384, ge=1)
        max_fragments_per_chunk: int = setting(4194304, ge=1)  # memory bound of the rasteriser
        # M3D [16, 32, 64]
        unet_widths: List[int] = field(default_factory=lambda: list(UNET_WIDTHS))
        # M3D keeps its U-Net in train mode (BatchNorm batch statistics)
        batch_stats_always: bool = True

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        widths = list(self.cfg.unet_widths)
        if len(widths) != int(self.cfg.n_scales):
            raise ValueError(
                f"renderer.unet_widths needs one width per scale ({self.cfg.n_scales}), got "
                f"{widths}"
            )
        try:  # the rasteriser settings are checked before anything is built
            self.settings = PointRasterSettings(
                radius_px=self.cfg.point_radius_px,
                points_per_pixel=self.cfg.points_per_pixel,
                n_scales=self.cfg.n_scales,
                min_transmittance=self.cfg.min_transmittance,
                depth_slabs=self.cfg.depth_slabs,
                max_fragments_per_chunk=self.cfg.max_fragments_per_chunk,
                min_slab_points=self.cfg.min_slab_points,
            )
        except ValueError as e:
            raise InputError(
                f"system.renderer: {e}",
                "the makeit3d-deferred-renderer settings of "
                "custom/hifi123/configs/makeit3d-refine.yaml",
                "correct that field in your refine config (or on the command line, e.g. "
                "system.renderer.depth_slabs=4)",
            ) from None
        in_ch = int(getattr(geometry, "descriptor_dim", 19))
        self.unet = DeferredUNet(in_ch, widths, 3, batch_stats_always=self.cfg.batch_stats_always)

    def rasterize(self, c2w: torch.Tensor, fovy, height: int, width: int):
        geo = self.geometry
        if geo.n_points == 0:
            raise InputError(
                "the point cloud is empty",
                "makeit3d-system (stage: refine) builds it from the coarse checkpoint before "
                "training, or geometry.point_cloud_path names one",
                "set system.geometry_convert_from to the coarse run's last.ckpt (or resume a "
                "refine run)",
            )
        dev = geo.positions.device
        fov = fovy.to(dev) if torch.is_tensor(fovy) else fovy
        return rasterize_points(
            geo.positions,
            geo.descriptors,
            c2w.to(dev),
            fov,
            height,
            width,
            self.settings,
            geo.background,
        )

    def forward(self, c2w: torch.Tensor, fovy, height, width, **kwargs) -> Dict[str, Any]:
        H, W = _as_int(height), _as_int(width)
        if c2w.dim() == 2:
            c2w = c2w[None]
        scales = self.rasterize(c2w, fovy, H, W)
        rgb = self.unet([s.features for s in scales]).permute(0, 2, 3, 1)
        return {
            "comp_rgb": rgb,
            "comp_rgb_bg": torch.ones_like(rgb),
            "opacity": scales[0].coverage.permute(0, 2, 3, 1),
            "depth": scales[0].depth.permute(0, 2, 3, 1),
            "coverage_scales": [s.coverage.permute(0, 2, 3, 1) for s in scales],
        }
