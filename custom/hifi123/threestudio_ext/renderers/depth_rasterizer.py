"""`hifi123-nvdiff-rasterizer`: threestudio's `nvdiff-rasterizer` plus a `depth` output.

threestudio's mesh rasterizer returns no depth (docs/threestudio.md §6.2), but RGSD conditions
SD2-depth on the rendered depth of the current geometry (decision 11). This subclass rasterises the
extracted mesh once more and adds

    depth [B,H,W,1] = distance from the camera centre to the surface point seen by the pixel
                      (0 where no surface is hit)

the same quantity the NeRF renderer's `depth` is at opacity 1 (so `depth_weighted_by_opacity`
in our guidances is harmless: opacity is 1 on the surface). Everything else is the parent's output.
The extra rasterisation costs one `rasterize` + one `interpolate` of positions per call; we do not
copy the parent's forward to share its rasterisation.
"""

from __future__ import annotations

import torch
from threestudio.models.renderers.nvdiff_rasterizer import NVDiffRasterizer

from ...core.hifi123.render_guidance import surface_distance
from ..registry import StrictConfig, register


@register("hifi123-nvdiff-rasterizer")
class DepthNVDiffRasterizer(StrictConfig, NVDiffRasterizer):
    config_path = "system.renderer"

    def forward(
        self,
        mvp_mtx,
        camera_positions,
        light_positions,
        height,
        width,
        render_rgb: bool = True,
        **kwargs,
    ):
        height, width = int(height), int(width)  # eval batches carry 1-element tensors
        out = super().forward(
            mvp_mtx,
            camera_positions,
            light_positions,
            height,
            width,
            render_rgb=render_rgb,
            **kwargs,
        )
        mesh = out["mesh"]
        v_pos_clip = self.ctx.vertex_transform(mesh.v_pos, mvp_mtx)
        rast, _ = self.ctx.rasterize(v_pos_clip, mesh.t_pos_idx, (height, width))
        gb_pos, _ = self.ctx.interpolate_one(mesh.v_pos, rast, mesh.t_pos_idx)
        with torch.no_grad():
            out["depth"] = surface_distance(gb_pos, camera_positions, rast[..., 3:] > 0)
        return out
