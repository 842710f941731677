"""Make-It-3D refine stage adapters: the textured point cloud as a threestudio geometry and the
multi-scale point rasteriser + gated U-Net as a threestudio renderer (thin shells around
`hifi123.core.makeit3d.point_raster`, `hifi123.core.makeit3d.deferred_unet`, `hifi123.core.makeit3d.pointcloud`).

* `makeit3d-point-cloud` (:class:`MakeIt3DPointCloud`, a `BaseGeometry`): buffers `positions`
  [N, 3], `initial_colors` [N, 3], `reference_visible` [N] and `source_view` [N]; parameters
  `descriptors` [N, 3 + n_feature_dims] (RGB initialised with the build colours, features with
  N(0, 1); official utils.py:808-849) and `background` [3 + n_feature_dims] (ones). N is not known
  when threestudio builds the geometry: :meth:`set_point_cloud` / :meth:`from_arrays` fill it, and
  loading a state dict (Lightning resume, `system.weights`, `--test`) resizes every tensor to the
  checkpoint's shape in place (the Parameter objects stay the same, so an optimiser built before
  keeps them). `point_cloud_path` loads a cloud saved by :meth:`PointCloud.save_npz` or a PLY.
* `makeit3d-deferred-renderer` (:class:`MakeIt3DDeferredRenderer`, a `Rasterizer`): called with a
  threestudio batch (`c2w` [B, 4, 4], `fovy` [B] radians, `height`, `width`), rasterises all scales
  and runs the U-Net. Returns `comp_rgb` [B, H, W, 3], `opacity` [B, H, W, 1] (coverage at full
  resolution), `depth` [B, H, W, 1] (coverage-weighted camera z), `coverage_scales` (one
  [B, h, w, 1] per scale) and `comp_rgb_bg` (white, the target of the background loss).
* :class:`ThreestudioRenderFn` + :func:`camera_batch`: a threestudio renderer (e.g. the coarse
  NeRF with its geometry/material/background) as the render callable of
  :func:`hifi123.core.makeit3d.pointcloud.build_point_cloud`; :func:`load_coarse_renderer` rebuilds the
  coarse run's renderer from its checkpoint (the `parsed.yaml` next to `ckpts/`, as threestudio's
  `geometry_convert_from`), and :func:`build_point_cloud_from_checkpoint` chains both.

The point cloud itself is built by `makeit3d-system` (`stage: refine`), which needs the whole
coarse model (geometry, material, background) and the reference image; the geometry's
`create_from` therefore refuses to convert a single coarse geometry.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import threestudio
import torch
import torch.nn as nn
from threestudio.models.geometry.base import BaseGeometry
from threestudio.models.renderers.base import Rasterizer

from ..core.makeit3d.deferred_unet import UNET_WIDTHS, DeferredUNet
from ..core.makeit3d.point_export import (
    SAVE_LAYOUT,
    read_ply,
    save_renderer_weights,
    write_orbit_video,
    write_ply,
)
from ..core.makeit3d.point_raster import PointRasterSettings, rasterize_points
from ..core.makeit3d.point_refine import (
    RefineConfig,
    background_loss,
    reference_l1_loss,
    texture_regularizer,
)
from ..core.makeit3d.pointcloud import PointCloud, PointCloudConfig, ViewCamera, build_point_cloud
from ..errors import InputError
from .registry import register

POINT_TENSORS = ("positions", "initial_colors", "reference_visible", "source_view", "descriptors")


def _as_int(x) -> int:
    """threestudio passes `height`/`width` as ints in training and 1-element tensors in eval."""
    return int(x.reshape(-1)[0]) if torch.is_tensor(x) else int(x)


# ------------------------------------------------------------------------------------ geometry
@register("makeit3d-point-cloud")
class MakeIt3DPointCloud(BaseGeometry):
    @dataclass
    class Config(BaseGeometry.Config):
        n_feature_dims: int = 16  # learned features besides RGB: a 19-d descriptor (M3D utils.py:808)
        feature_init_std: float = 1.0  # features ~ N(0, 1) (M3D utils.py:816-820)
        background_init: float = 1.0  # background descriptor initialised to ones (M3D)
        point_cloud_path: Optional[str] = None  # optional .npz (PointCloud.save_npz) or .ply to start from
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
    def set_point_cloud(self, positions, colors, reference_visible=None, source_view=None) -> "MakeIt3DPointCloud":
        """Replace the cloud: descriptors = [colours, N(0, std) features]; in place, so existing
        optimisers keep tracking `descriptors` (their state for it must be empty)."""
        pos = torch.as_tensor(np.asarray(positions) if not torch.is_tensor(positions) else positions).float()
        col = torch.as_tensor(np.asarray(colors) if not torch.is_tensor(colors) else colors).float()
        if col.numel() and col.max() > 1.0 + 1e-6:  # uint8 colours
            col = col / 255.0
        n = pos.shape[0]
        if pos.shape != (n, 3) or col.shape != (n, 3):
            raise ValueError(f"positions and colours must be [N, 3], got {tuple(pos.shape)} and {tuple(col.shape)}")
        ref = torch.zeros(n, dtype=torch.bool) if reference_visible is None else torch.as_tensor(reference_visible).bool().reshape(n)
        src = torch.zeros(n, dtype=torch.long) if source_view is None else torch.as_tensor(source_view).long().reshape(n)
        dev = self.positions.device
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        feats = torch.randn(n, int(self.cfg.n_feature_dims), generator=gen) * float(self.cfg.feature_init_std)
        self.positions.data = pos.to(dev)
        self.initial_colors.data = col.to(dev)
        self.reference_visible.data = ref.to(dev)
        self.source_view.data = src.to(dev)
        self.descriptors.data = torch.cat([col, feats], 1).to(self.descriptors.device, self.descriptors.dtype)
        return self

    def set_from_point_cloud(self, cloud: PointCloud) -> "MakeIt3DPointCloud":
        return self.set_point_cloud(cloud.positions, cloud.colors, cloud.reference_visible, cloud.source_view)

    @classmethod
    def from_arrays(cls, positions, colors, reference_visible=None, source_view=None, cfg: Optional[dict] = None) -> "MakeIt3DPointCloud":
        """A geometry holding the given cloud (positions [N, 3], colours [N, 3] in [0, 1] or uint8)."""
        geo = cls(cfg or {})
        return geo.set_point_cloud(positions, colors, reference_visible, source_view)

    def load_point_cloud_file(self, path: str) -> None:
        if not os.path.isfile(path):
            raise InputError(
                f"geometry.point_cloud_path {path!r} does not exist",
                "a .npz written by PointCloud.save_npz or a coloured .ply",
                "fix the path, or leave point_cloud_path empty to let makeit3d-system build the cloud",
            )
        if path.endswith(".npz"):
            d = np.load(path)
            self.set_point_cloud(d["positions"], d["colors"], d.get("reference_visible"), d.get("source_view"))
        else:
            pos, col = read_ply(path)
            self.set_point_cloud(pos, col if col is not None else np.full((len(pos), 3), 0.5, np.float32))

    @staticmethod
    def create_from(other: BaseGeometry, cfg=None, **kwargs) -> "MakeIt3DPointCloud":
        raise TypeError(
            f"makeit3d-point-cloud is not converted from a single {type(other).__name__}: the point "
            "cloud is built from the whole coarse model (geometry, material, background) and the "
            "reference image by makeit3d-system with `system.stage: refine` (configs/makeit3d-refine.yaml)"
        )

    # ---------------------------------------------------------------- checkpoints (resize)
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name in POINT_TENSORS:
            key = prefix + name
            if key in state_dict:
                t = getattr(self, name)
                src = state_dict[key]
                if t.shape != src.shape:
                    t.data = torch.empty(src.shape, dtype=t.dtype, device=t.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def export(self, *args, **kwargs) -> Dict[str, Any]:
        return {"positions": self.positions, "colors": self.colors.detach().clamp(0, 1)}


# ------------------------------------------------------------------------------------ renderer
@register("makeit3d-deferred-renderer")
class MakeIt3DDeferredRenderer(Rasterizer):
    @dataclass
    class Config(Rasterizer.Config):
        point_radius_px: float = 2.0  # at full resolution (M3D: 2 px at 800, same NDC at every scale)
        points_per_pixel: int = 8  # M3D: 8 nearest points composited per pixel
        n_scales: int = 3  # full, /2, /4 (M3D K = 3)
        min_transmittance: float = 1e-4  # compositing stops below (exact zeros behind saturated pixels)
        depth_slabs: int = 4  # occlusion culling granularity (speed only)
        min_slab_points: int = 16384  # fewer slabs when they would hold fewer points (speed only)
        max_fragments_per_chunk: int = 4194304  # memory bound of the rasteriser
        unet_widths: List[int] = field(default_factory=lambda: list(UNET_WIDTHS))  # M3D [16, 32, 64]
        batch_stats_always: bool = True  # M3D keeps its U-Net in train mode (BatchNorm batch statistics)

    cfg: Config

    def configure(self, geometry, material, background) -> None:
        super().configure(geometry, material, background)
        widths = list(self.cfg.unet_widths)
        if len(widths) != int(self.cfg.n_scales):
            raise ValueError(f"renderer.unet_widths needs one width per scale ({self.cfg.n_scales}), got {widths}")
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
                "the makeit3d-deferred-renderer settings of custom/hifi123/configs/makeit3d-refine.yaml",
                "correct that field in your refine config (or on the command line, e.g. system.renderer.depth_slabs=4)",
            ) from None
        in_ch = int(getattr(geometry, "descriptor_dim", 19))
        self.unet = DeferredUNet(in_ch, widths, 3, batch_stats_always=self.cfg.batch_stats_always)

    def rasterize(self, c2w: torch.Tensor, fovy, height: int, width: int):
        geo = self.geometry
        if geo.n_points == 0:
            raise InputError(
                "the point cloud is empty",
                "makeit3d-system (stage: refine) builds it from the coarse checkpoint before training, "
                "or geometry.point_cloud_path names one",
                "set system.geometry_convert_from to the coarse run's last.ckpt (or resume a refine run)",
            )
        dev = geo.positions.device
        fov = fovy.to(dev) if torch.is_tensor(fovy) else fovy
        return rasterize_points(geo.positions, geo.descriptors, c2w.to(dev), fov, height, width, self.settings, geo.background)

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


# --------------------------------------------------------------- threestudio renderers as callables
def camera_batch(camera: ViewCamera, device=None, near: float = 0.01, far: float = 100.0) -> Dict[str, Any]:
    """A threestudio eval batch for one camera: `rays_o`, `rays_d` (unit), `mvp_mtx`, `c2w`,
    `camera_positions`, `light_positions` (= camera), `elevation`, `azimuth`, `camera_distances`,
    `fovy`, `height`, `width` (threestudio's `RandomCameraDataset` layout)."""
    from threestudio.utils.ops import (
        get_mvp_matrix,
        get_projection_matrix,
        get_ray_directions,
        get_rays,
    )

    c2w = camera.c2w_tensor(device)[None]
    fovy = torch.tensor([camera.fovy], dtype=torch.float32, device=device)
    dirs = get_ray_directions(camera.height, camera.width, float(camera.focal)).to(device)[None]
    rays_o, rays_d = get_rays(dirs, c2w, keepdim=True, normalize=True)
    proj = get_projection_matrix(fovy.cpu(), camera.width / camera.height, near, far).to(device)
    pos = c2w[:, :3, 3]
    return {
        "rays_o": rays_o, "rays_d": rays_d, "mvp_mtx": get_mvp_matrix(c2w, proj), "c2w": c2w,
        "camera_positions": pos, "light_positions": pos,
        "elevation": torch.tensor([camera.elevation_deg], device=device),
        "azimuth": torch.tensor([camera.azimuth_deg], device=device),
        "camera_distances": pos.norm(dim=-1),
        "fovy": fovy, "height": camera.height, "width": camera.width,
    }


class ThreestudioRenderFn:
    """A threestudio renderer (`renderer(**batch)`) as the render callable of
    `build_point_cloud(..., depth_type="distance")`: rgb = comp_rgb_fg / opacity (un-premultiplied;
    `comp_rgb` when there is no fg), depth = threestudio's opacity-weighted ray distance divided by
    the opacity (so a distance along the unit ray), opacity. Renders with `shading` (albedo, as
    Make-It-3D), ambient ratio 1 and a solid `background` colour, without gradients."""

    depth_type = "distance"

    def __init__(self, renderer, shading: Optional[str] = "albedo", background: Sequence[float] = (1.0, 1.0, 1.0), device=None):
        self.renderer = renderer
        self.shading = shading
        self.background = tuple(float(c) for c in background)
        self.device = device

    @torch.no_grad()
    def __call__(self, camera: ViewCamera) -> Dict[str, torch.Tensor]:
        dev = self.device or next((b.device for b in self.renderer.buffers()), torch.device("cpu"))
        batch = camera_batch(camera, dev)
        extra: Dict[str, Any] = {"ambient_ratio": 1.0, "bg_color": torch.tensor([self.background], device=dev)}  # [B, 3]
        if self.shading is not None:
            extra["shading"] = self.shading
        was_training = self.renderer.training
        self.renderer.eval()
        try:
            out = self.renderer(**batch, **extra)
        finally:
            self.renderer.train(was_training)
        op = out["opacity"][0, ..., 0].float()
        safe = op.clamp_min(1e-6)
        rgb = out["comp_rgb_fg"][0] / safe[..., None] if "comp_rgb_fg" in out else out["comp_rgb"][0]
        return {"rgb": rgb.clamp(0, 1), "depth": out["depth"][0, ..., 0].float() / safe, "opacity": op}


def load_coarse_renderer(
    checkpoint: str,
    renderer_type: Optional[str] = None,
    renderer_override: Optional[dict] = None,
    geometry_override: Optional[dict] = None,
    device=None,
):
    """Rebuild the coarse run's geometry, material, background and renderer from its checkpoint
    (`<trial>/ckpts/<name>.ckpt`, config from `<trial>/configs/parsed.yaml`, as threestudio's
    `geometry_convert_from`; `@LAST` paths are expanded). `renderer_type` swaps the renderer (e.g.
    a CPU renderer in tests). Returns (renderer, coarse system config)."""
    from threestudio.utils.config import load_config

    from ..trials import resolve_last

    checkpoint = resolve_last(checkpoint)
    cfg_path = os.path.join(os.path.dirname(checkpoint), "..", "configs", "parsed.yaml")
    if not os.path.isfile(checkpoint) or not os.path.isfile(cfg_path):
        raise InputError(
            f"coarse checkpoint {checkpoint!r} (or its {cfg_path}) not found",
            "the last.ckpt of a finished makeit3d-coarse run, inside its intact trial folder",
            "pass system.geometry_convert_from=outputs/makeit3d-coarse/<tag>@LAST/ckpts/last.ckpt",
        )
    prev = load_config(cfg_path).system
    geo_cfg = dict(prev.geometry)
    geo_cfg.update(geometry_override or {})
    modules = {
        "geometry": threestudio.find(prev.geometry_type)(geo_cfg),
        "material": threestudio.find(prev.material_type)(prev.material),
        "background": threestudio.find(prev.background_type)(prev.background),
    }
    r_cfg = dict(prev.renderer) if renderer_type is None else {}
    r_cfg.update(renderer_override or {})
    renderer = threestudio.find(renderer_type or prev.renderer_type)(r_cfg, **modules)
    modules["renderer"] = renderer
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # the user's own Lightning checkpoint
    state = ckpt["state_dict"]
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    for name, module in modules.items():
        if name == "renderer" and renderer_type is not None:
            continue  # a swapped renderer has no state in the checkpoint
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        module.load_state_dict(sub, strict=False)
    for module in modules.values():
        if device is not None:
            module.to(device)
        module.do_update_step(epoch, step, on_load_weights=True)
    return renderer, prev


def build_point_cloud_from_checkpoint(
    checkpoint: str,
    reference_rgba,
    reference_camera: ViewCamera,
    cfg: Optional[PointCloudConfig] = None,
    renderer_type: Optional[str] = None,
    renderer_override: Optional[dict] = None,
    geometry_override: Optional[dict] = None,
    shading: Optional[str] = "albedo",
    background: Sequence[float] = (1.0, 1.0, 1.0),
    device=None,
    log=None,
) -> PointCloud:
    """The refine stage's point cloud from a coarse checkpoint: :func:`load_coarse_renderer`, then
    :func:`build_point_cloud` with the reference RGBA [H, W, 4] in [0, 1] (its alpha is the mask)."""
    renderer, _ = load_coarse_renderer(checkpoint, renderer_type, renderer_override, geometry_override, device)
    rgba = torch.as_tensor(np.asarray(reference_rgba) if not torch.is_tensor(reference_rgba) else reference_rgba).float()
    fn = ThreestudioRenderFn(renderer, shading, background, device)
    return build_point_cloud(
        fn, reference_camera, rgba[..., :3], rgba[..., 3] if rgba.shape[-1] > 3 else None,
        cfg, depth_type=fn.depth_type, device=device, log=log,
    )


# -------------------------------------------------- refine-stage helpers for makeit3d-system
def refine_config(block) -> RefineConfig:
    """`system.refine` (a dict / DictConfig) as :class:`RefineConfig`; unknown keys are an error."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else dict(block or {})
    try:
        cfg = RefineConfig(**raw)
        PointCloudConfig(**cfg.point_cloud)
    except TypeError as err:
        raise InputError(
            f"system.refine: {err}",
            "the fields of hifi123.core.makeit3d.point_refine.RefineConfig (point_cloud: PointCloudConfig fields)",
            "fix the key names under system.refine (see configs/makeit3d-refine.yaml)",
        ) from err
    return cfg


def reference_camera_from(refine: RefineConfig) -> ViewCamera:
    """The reference camera of a refine block, at the point-cloud build resolution."""
    res = int(PointCloudConfig(**refine.point_cloud).resolution)
    return ViewCamera.orbit(refine.elevation_deg, refine.azimuth_deg, refine.camera_distance, refine.fovy_deg, res)


def build_refine_point_cloud(checkpoint: str, refine: RefineConfig, geometry_override=None, device=None, log=None) -> PointCloud:
    """The refine stage's point cloud: the coarse checkpoint's model rendered all around
    (:func:`build_point_cloud_from_checkpoint`) with the reference image of the refine block."""
    from ..core.images import load_rgba

    if not checkpoint:
        raise InputError(
            "makeit3d refine stage: no coarse checkpoint",
            "system.geometry_convert_from = the coarse run's ckpts/last.ckpt",
            "pass system.geometry_convert_from=outputs/makeit3d-coarse/<tag>@LAST/ckpts/last.ckpt",
        )
    rgba = load_rgba(refine.reference_image_path, role="system.refine.reference_image_path")
    return build_point_cloud_from_checkpoint(
        checkpoint, rgba, reference_camera_from(refine), PointCloudConfig(**refine.point_cloud),
        refine.coarse_renderer_type, dict(refine.coarse_renderer), dict(geometry_override or {}),
        refine.coarse_shading, refine.coarse_background, device, log,
    )


def refine_reference_terms(batch: Dict[str, Any], out: Dict[str, Any], refine: RefineConfig) -> Dict[str, torch.Tensor]:
    """`loss_ref_l1` of a reference sub-step: masked L1 with the alpha eroded 5x5 at 800 px."""
    size = out["comp_rgb"].shape[1]
    return {"loss_ref_l1": reference_l1_loss(out["comp_rgb"], batch["rgb"], batch["mask"], refine.scaled_px(refine.ref_l1_erosion_px, size))}


def refine_regularizer_terms(geometry: "MakeIt3DPointCloud", out: Dict[str, Any], refine: RefineConfig, wants) -> Dict[str, torch.Tensor]:
    """The every-iteration refine terms whose lambda `wants`: texture (novel / reference-visible
    colours vs their initial values) and background (white outside the dilated coverage)."""
    losses: Dict[str, torch.Tensor] = {}
    if wants("texture_novel") or wants("texture_reference"):
        tex = texture_regularizer(geometry.colors, geometry.initial_colors, geometry.reference_visible)
        losses.update({f"loss_{k}": v for k, v in tex.items() if wants(k)})
    if wants("background"):
        size = out["comp_rgb"].shape[1]
        losses["loss_background"] = background_loss(
            out["comp_rgb"], out["opacity"], refine.scaled_px(refine.background_dilation_px, size)
        )
    return losses


@torch.no_grad()
def render_orbit_view(renderer, refine: RefineConfig, elevation_deg: float, azimuth_deg: float, height: int, width: int) -> torch.Tensor:
    """One frame [H, W, 3] of the deferred renderer at the reference distance and FOV."""
    dev = renderer.geometry.positions.device
    cam = ViewCamera.orbit(elevation_deg, azimuth_deg, refine.camera_distance, refine.fovy_deg, height, width)
    return renderer(**camera_batch(cam, dev))["comp_rgb"][0]


def save_initial_point_cloud(saver, cloud: PointCloud) -> Dict[str, str]:
    """save/it0-point-cloud/point_cloud.{ply,npz} (saver: a threestudio SaverMixin, e.g. the system)."""
    return {
        "ply": write_ply(saver.get_save_path(SAVE_LAYOUT["initial_ply"]), cloud.positions, cloud.colors),
        "npz": cloud.save_npz(saver.get_save_path(SAVE_LAYOUT["initial_npz"])),
    }


def save_refine_exports(saver, step: int, renderer, refine: RefineConfig, height: int, width: int, video: bool = False) -> Dict[str, str]:
    """save/it<step>-export/{point_cloud.ply, deferred_renderer.pt} and, with `video`,
    save/it<step>-orbit.mp4 (hifi123.core.makeit3d.point_export.SAVE_LAYOUT)."""
    geo = renderer.geometry
    path = {k: saver.get_save_path(v.format(step=int(step))) for k, v in SAVE_LAYOUT.items() if k in ("ply", "renderer", "orbit_video")}
    out = {
        "ply": write_ply(path["ply"], geo.positions, geo.colors.detach().clamp(0, 1)),
        "weights": save_renderer_weights(
            path["renderer"], renderer.unet, geo.background, geo.descriptors,
            geo.positions, geo.reference_visible, extra={"step": int(step), "settings": dict(vars(renderer.settings))},
        ),
    }
    if video:
        out["video"] = write_orbit_video(
            path["orbit_video"],
            lambda e, a: render_orbit_view(renderer, refine, e, a, height, width),
            refine.video_frames, refine.video_fps, refine.elevation_deg, refine.azimuth_deg,
        )
    return out


__all__ = [
    "MakeIt3DPointCloud",
    "MakeIt3DDeferredRenderer",
    "ThreestudioRenderFn",
    "camera_batch",
    "load_coarse_renderer",
    "build_point_cloud_from_checkpoint",
    "refine_config",
    "reference_camera_from",
    "build_refine_point_cloud",
    "refine_reference_terms",
    "refine_regularizer_terms",
    "render_orbit_view",
    "save_initial_point_cloud",
    "save_refine_exports",
]
