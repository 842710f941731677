"""`makeit3d-point-cloud`: the Make-It-3D refine stage's textured point cloud as a threestudio
geometry (a thin shell around `hifi123.core.makeit3d.pointcloud`).

Buffers `positions` [N, 3], `initial_colors` [N, 3], `reference_visible` [N] and `source_view`
[N]; parameters `descriptors` [N, 3 + n_feature_dims] (RGB initialised with the build colours,
features with N(0, 1); official utils.py:808-849) and `background` [3 + n_feature_dims] (ones). N is
not known when threestudio builds the geometry: :meth:`set_point_cloud` / :meth:`from_arrays` fill
it, and loading a state dict (Lightning resume, `system.weights`, `--test`) resizes every tensor to
the checkpoint's shape in place (the Parameter objects stay the same, so an optimiser built before
keeps them). `point_cloud_path` loads a cloud saved by :meth:`PointCloud.save_npz` or a PLY.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from threestudio.models.geometry.base import BaseGeometry

from ...core.makeit3d.point_export import (
    read_ply,
)
from ...core.makeit3d.pointcloud import PointCloud
from ...core.settings import setting
from ...errors import InputError
from ..registry import StrictConfig, register

POINT_TENSORS = ("positions", "initial_colors", "reference_visible", "source_view", "descriptors")


# ------------------------------------------------------------------------------------ geometry
@register("makeit3d-point-cloud")
class MakeIt3DPointCloud(StrictConfig, BaseGeometry):
    config_path = "system.geometry"

    @dataclass
    class Config(BaseGeometry.Config):
        # learned features besides RGB: a 19-d descriptor (M3D utils.py:808)
        n_feature_dims: int = setting(16, ge=0)
        feature_init_std: float = setting(1.0, ge=0.0)  # features ~ N(0, 1) (M3D utils.py:816-820)
        background_init: float = 1.0  # background descriptor initialised to ones (M3D)
        # optional .npz (PointCloud.save_npz) or .ply to start from
        point_cloud_path: Optional[str] = None
        seed: int = 0  # feature initialisation

    cfg: Config

    def configure(self) -> None:
        super().configure()
        d = self.descriptor_dim
        self.register_buffer("positions", torch.zeros(0, 3))
        self.register_buffer("initial_colors", torch.zeros(0, 3))
        self.register_buffer("reference_visible", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("source_view", torch.zeros(0, dtype=torch.long))
        self.descriptors = nn.Parameter(torch.zeros(0, d))
        self.background = nn.Parameter(torch.full((d,), float(self.cfg.background_init)))
        if self.cfg.point_cloud_path:
            self.load_point_cloud_file(self.cfg.point_cloud_path)

    @property
    def descriptor_dim(self) -> int:
        return 3 + int(self.cfg.n_feature_dims)

    @property
    def n_points(self) -> int:
        return int(self.positions.shape[0])

    @property
    def colors(self) -> torch.Tensor:
        """The RGB part of the descriptors (what the texture regulariser compares)."""
        return self.descriptors[:, :3]

    # -------------------------------------------------------------------------- filling
    @torch.no_grad()
    def set_point_cloud(
        self, positions, colors, reference_visible=None, source_view=None
    ) -> "MakeIt3DPointCloud":
        """Replace the cloud: descriptors = [colours, N(0, std) features]; in place, so existing
        optimisers keep tracking `descriptors` (their state for it must be empty)."""
        pos = torch.as_tensor(
            np.asarray(positions) if not torch.is_tensor(positions) else positions
        ).float()
        col = torch.as_tensor(np.asarray(colors) if not torch.is_tensor(colors) else colors).float()
        if col.numel() and col.max() > 1.0 + 1e-6:  # uint8 colours
            col = col / 255.0
        n = pos.shape[0]
        if pos.shape != (n, 3) or col.shape != (n, 3):
            raise ValueError(
                f"positions and colours must be [N, 3], got {tuple(pos.shape)} and "
                f"{tuple(col.shape)}"
            )
        ref = (
            torch.zeros(n, dtype=torch.bool)
            if reference_visible is None
            else torch.as_tensor(reference_visible).bool().reshape(n)
        )
        src = (
            torch.zeros(n, dtype=torch.long)
            if source_view is None
            else torch.as_tensor(source_view).long().reshape(n)
        )
        dev = self.positions.device
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        feats = torch.randn(n, int(self.cfg.n_feature_dims), generator=gen) * float(
            self.cfg.feature_init_std
        )
        self.positions.data = pos.to(dev)
        self.initial_colors.data = col.to(dev)
        self.reference_visible.data = ref.to(dev)
        self.source_view.data = src.to(dev)
        self.descriptors.data = torch.cat([col, feats], 1).to(
            self.descriptors.device, self.descriptors.dtype
        )
        return self

    def set_from_point_cloud(self, cloud: PointCloud) -> "MakeIt3DPointCloud":
        return self.set_point_cloud(
            cloud.positions, cloud.colors, cloud.reference_visible, cloud.source_view
        )

    @classmethod
    def from_arrays(
        cls, positions, colors, reference_visible=None, source_view=None, cfg: Optional[dict] = None
    ) -> "MakeIt3DPointCloud":
        """A geometry holding the given cloud (positions [N, 3], colours [N, 3] in [0, 1] or
        uint8)."""
        geo = cls(cfg or {})
        return geo.set_point_cloud(positions, colors, reference_visible, source_view)

    def load_point_cloud_file(self, path: str) -> None:
        if not os.path.isfile(path):
            raise InputError(
                f"geometry.point_cloud_path {path!r} does not exist",
                "a .npz written by PointCloud.save_npz or a coloured .ply",
                "fix the path, or leave point_cloud_path empty to let makeit3d-system build the "
                "cloud",
            )
        if path.endswith(".npz"):
            d = np.load(path)
            self.set_point_cloud(
                d["positions"], d["colors"], d.get("reference_visible"), d.get("source_view")
            )
        else:
            pos, col = read_ply(path)
            self.set_point_cloud(
                pos, col if col is not None else np.full((len(pos), 3), 0.5, np.float32)
            )

    @staticmethod
    def create_from(other: BaseGeometry, cfg=None, **kwargs) -> "MakeIt3DPointCloud":
        raise TypeError(
            f"makeit3d-point-cloud is not converted from a single {type(other).__name__}: the "
            "point cloud is built from the whole coarse model (geometry, material, background) "
            "and the reference image by makeit3d-system with `system.stage: refine` "
            "(configs/makeit3d-refine.yaml)"
        )

    # ---------------------------------------------------------------- checkpoints (resize)
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for name in POINT_TENSORS:
            key = prefix + name
            if key in state_dict:
                t = getattr(self, name)
                src = state_dict[key]
                if t.shape != src.shape:
                    t.data = torch.empty(src.shape, dtype=t.dtype, device=t.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {"positions": self.positions, "colors": self.colors.detach().clamp(0, 1)}
