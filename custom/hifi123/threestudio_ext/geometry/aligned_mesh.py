"""`hifi123-custom-mesh`: threestudio's `custom-mesh` (frozen triangles + a texture field) that
loads an aligned mesh as it is (decision 31).

threestudio's `custom-mesh` subtracts the vertex mean, rescales the largest coordinate to
`shape_init_params` and ignores a GLB's node transforms, which moves a mesh that
`hifi123 align-mesh` has put in the reference camera's world frame off the photo. This subclass
keeps everything else of `custom-mesh` (the texture field, `isosurface`, `forward`, `export`, the
state-dict keys `encoding`, `feature_network`, `v_buffer`, `t_buffer`) and

* reads `shape_init: mesh:PATH` through `hifi123.core.mesh_align.load_mesh` (scene transforms
  applied; a missing or unreadable file is an InputError naming it), in the world frame;
* refuses a mesh that leaves the texture field's box (`radius`);
* keeps the mesh's vertex colours so the system can fit the texture field to them before the
  RGSD fixed-view targets are computed (:meth:`fit_texture_to_colors`, `texture_init_steps`):
  the refine stage starts from the feed-forward texture, as the HiFi-123 refine starts from the
  coarse one;
* reads the reference camera the mesh was aligned for from the `alignment.json` next to it
  (:attr:`aligned_camera`), which the system compares with the datamodule's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import threestudio
import torch
from threestudio.models.geometry.base import BaseExplicitGeometry
from threestudio.models.geometry.custom_mesh import CustomMesh
from threestudio.models.mesh import Mesh
from threestudio.models.networks import get_encoding, get_mlp

from ...core.settings import setting
from ...errors import InputError
from ..registry import StrictConfig, register

ALIGN_FIX = (
    "align the mesh to the photo first: `hifi123 align-mesh MESH --ref <name>_rgba.png --out DIR`, "
    "then pass system.geometry.shape_init=mesh:DIR/aligned_mesh.ply"
)


@register("hifi123-custom-mesh")
class AlignedCustomMesh(StrictConfig, CustomMesh):
    config_path = "system.geometry"
    foreign_hint = False

    @dataclass
    class Config(CustomMesh.Config):
        texture_init_steps: int = setting(300, ge=0)  # fit to the vertex colours (0: off)
        texture_init_lr: float = setting(0.01, gt=0.0)
        texture_init_points: int = setting(65536, ge=1)  # surface samples per fitting step

    cfg: Config

    def configure(self) -> None:
        BaseExplicitGeometry.configure(self)  # the bbox; custom-mesh's own loading is replaced
        self.encoding = get_encoding(self.cfg.n_input_dims, self.cfg.pos_encoding_config)
        self.feature_network = get_mlp(
            self.encoding.n_output_dims, self.cfg.n_feature_dims, self.cfg.mlp_network_config
        )
        shape = str(self.cfg.shape_init or "")
        if not shape.startswith("mesh:"):
            raise InputError(
                f"system.geometry.shape_init={shape!r}",
                "mesh:PATH, the mesh aligned to the reference photo",
                ALIGN_FIX,
            )
        from ...core.mesh_align import ALIGNMENT_JSON, load_mesh

        path = shape[len("mesh:") :]
        mesh = load_mesh(path)
        v = np.asarray(mesh.vertices, dtype=np.float32)
        extent = float(np.abs(v).max())
        if extent > self.cfg.radius:
            raise InputError(
                f"mesh {path} reaches {extent:.3f} from the origin, outside the texture field's "
                f"box (system.geometry.radius={self.cfg.radius})",
                "a mesh aligned to the reference camera (inside the radius)",
                ALIGN_FIX + "; or raise system.geometry.radius",
            )
        colors = None
        visual = getattr(mesh, "visual", None)
        try:
            if getattr(visual, "kind", None) == "texture":
                visual = visual.to_color()
            if getattr(visual, "kind", None) == "vertex":
                colors = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        except Exception:  # noqa: BLE001 - a texture trimesh cannot sample: no colours
            colors = None
        self.vertex_colors: Optional[torch.Tensor] = (
            torch.as_tensor(colors) if colors is not None else None
        )
        record = os.path.join(os.path.dirname(os.path.abspath(path)), ALIGNMENT_JSON)
        self.aligned_camera: Optional[Dict[str, Any]] = None
        if os.path.isfile(record):
            with open(record, encoding="utf-8") as fh:
                self.aligned_camera = json.load(fh).get("reference_camera")
        else:
            threestudio.warn(
                f"hifi123-custom-mesh: no {ALIGNMENT_JSON} next to {path}: the mesh is used as it "
                "is, in threestudio's world frame (" + ALIGN_FIX + ")"
            )
        v_pos = torch.as_tensor(v, dtype=torch.float32)
        t_pos_idx = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
        self.mesh = Mesh(v_pos=v_pos, t_pos_idx=t_pos_idx)
        self.register_buffer("v_buffer", v_pos)
        self.register_buffer("t_buffer", t_pos_idx)
        threestudio.info(
            f"hifi123-custom-mesh: {path}: {len(v)} vertices, {len(t_pos_idx)} triangles, "
            f"{'vertex colours' if colors is not None else 'no colours'}"
        )

    def isosurface(self) -> Mesh:
        # the buffers follow the module's device (Lightning moves them); the cached mesh does not
        if self.mesh.v_pos.device != self.v_buffer.device:
            self.mesh = Mesh(v_pos=self.v_buffer, t_pos_idx=self.t_buffer)
        return self.mesh

    def _surface_samples(self, n: int, generator: torch.Generator):
        v, f = self.v_buffer, self.t_buffer
        c = self.vertex_colors.to(v.device)
        tri = v[f]
        normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        area = torch.linalg.norm(normal, dim=-1).cpu() + 1e-12
        face = torch.multinomial(area, n, replacement=True, generator=generator).to(v.device)
        r = torch.rand(n, 2, generator=generator).to(v.device)
        r1 = r[:, :1].sqrt()
        w = torch.cat([1 - r1, r1 * (1 - r[:, 1:]), r1 * r[:, 1:]], dim=-1)
        pts = (w[..., None] * tri[face]).sum(1)
        col = (w[..., None] * c[f[face]]).sum(1)
        return pts, col

    def fit_texture_to_colors(self, color_activation=torch.sigmoid) -> Optional[float]:
        """Fit the texture field so `color_activation(features)` gives the mesh's vertex colours
        (the material's albedo activation); returns the final MSE, or None without colours."""
        if self.vertex_colors is None or self.cfg.texture_init_steps == 0:
            return None
        gen = torch.Generator().manual_seed(0)
        params = list(self.encoding.parameters()) + list(self.feature_network.parameters())
        opt = torch.optim.Adam(params, lr=self.cfg.texture_init_lr)
        loss = None
        with torch.enable_grad():
            for _ in range(self.cfg.texture_init_steps):
                pts, col = self._surface_samples(self.cfg.texture_init_points, gen)
                feat = self(pts)["features"][..., :3]
                loss = torch.nn.functional.mse_loss(color_activation(feat), col)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return float(loss)
