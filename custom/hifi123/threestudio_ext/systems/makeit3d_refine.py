"""The Make-It-3D refine stage's glue for `makeit3d-system` (`stage: refine`): the coarse run's
renderer rebuilt from its checkpoint and used as a render callable to build the point cloud, the
refine losses and regularisers on threestudio outputs, and the exports.

* :class:`ThreestudioRenderFn` (with `threestudio_ext.cameras.camera_batch`): a threestudio renderer
  (e.g. the coarse NeRF with its geometry/material/background) as the render callable of
  :func:`hifi123.core.makeit3d.pointcloud.build_point_cloud`; :func:`load_coarse_renderer` rebuilds
  the coarse run's renderer from its checkpoint (the `parsed.yaml` next to `ckpts/`, as
  threestudio's `geometry_convert_from`), and :func:`build_point_cloud_from_checkpoint` chains both.

The point cloud itself is built by `makeit3d-system` (`stage: refine`), which needs the whole
coarse model (geometry, material, background) and the reference image; the geometry's
`create_from` therefore refuses to convert a single coarse geometry.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import threestudio
import torch

from ...core.cameras import ViewCamera
from ...core.makeit3d.point_export import (
    SAVE_LAYOUT,
    save_renderer_weights,
    write_orbit_video,
    write_ply,
)
from ...core.makeit3d.point_refine import (
    RefineConfig,
    background_loss,
    reference_l1_loss,
    texture_regularizer,
)
from ...core.makeit3d.pointcloud import PointCloud, PointCloudConfig, build_point_cloud
from ...errors import InputError
from ..cameras import camera_batch
from ..geometry.point_cloud import MakeIt3DPointCloud


# --------------------------------------------------------------- threestudio renderers as callables
class ThreestudioRenderFn:
    """A threestudio renderer (`renderer(**batch)`) as the render callable of
    `build_point_cloud(..., depth_type="distance")`: rgb = comp_rgb_fg / opacity (un-premultiplied;
    `comp_rgb` when there is no fg), depth = threestudio's opacity-weighted ray distance divided by
    the opacity (so a distance along the unit ray), opacity. Renders with `shading` (albedo, as
    Make-It-3D), ambient ratio 1 and a solid `background` colour, without gradients."""

    depth_type = "distance"

    def __init__(
        self,
        renderer,
        shading: Optional[str] = "albedo",
        background: Sequence[float] = (1.0, 1.0, 1.0),
        device=None,
    ):
        self.renderer = renderer
        self.shading = shading
        self.background = tuple(float(c) for c in background)
        self.device = device

    @torch.no_grad()
    def __call__(self, camera: ViewCamera) -> Dict[str, torch.Tensor]:
        dev = self.device or next((b.device for b in self.renderer.buffers()), torch.device("cpu"))
        batch = camera_batch(camera, dev)
        extra: Dict[str, Any] = {
            "ambient_ratio": 1.0,
            "bg_color": torch.tensor([self.background], device=dev),
        }  # [B, 3]
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
        rgb = (
            out["comp_rgb_fg"][0] / safe[..., None] if "comp_rgb_fg" in out else out["comp_rgb"][0]
        )
        return {
            "rgb": rgb.clamp(0, 1),
            "depth": out["depth"][0, ..., 0].float() / safe,
            "opacity": op,
        }


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

    from ...trials import resolve_last

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
    # the user's own Lightning checkpoint
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    for name, module in modules.items():
        if name == "renderer" and renderer_type is not None:
            continue  # a swapped renderer has no state in the checkpoint
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
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
    :func:`build_point_cloud` with the reference RGBA [H, W, 4] in [0, 1] (its alpha is the
    mask)."""
    renderer, _ = load_coarse_renderer(
        checkpoint, renderer_type, renderer_override, geometry_override, device
    )
    rgba = torch.as_tensor(
        np.asarray(reference_rgba) if not torch.is_tensor(reference_rgba) else reference_rgba
    ).float()
    fn = ThreestudioRenderFn(renderer, shading, background, device)
    return build_point_cloud(
        fn,
        reference_camera,
        rgba[..., :3],
        rgba[..., 3] if rgba.shape[-1] > 3 else None,
        cfg,
        depth_type=fn.depth_type,
        device=device,
        log=log,
    )


# -------------------------------------------------- refine-stage helpers for makeit3d-system
def refine_config(block) -> RefineConfig:
    """`system.refine` (a dict / DictConfig) as :class:`RefineConfig`; unknown keys are an error."""
    from omegaconf import OmegaConf

    from ...errors import check_config_keys

    raw = (
        OmegaConf.to_container(block, resolve=True)
        if OmegaConf.is_config(block)
        else dict(block or {})
    )
    check_config_keys(raw, RefineConfig.__dataclass_fields__, "system.refine", "makeit3d-system")
    check_config_keys(
        raw.get("point_cloud") or {},
        PointCloudConfig.__dataclass_fields__,
        "system.refine.point_cloud",
        "makeit3d-system",
    )
    try:
        cfg = RefineConfig(**raw)
        PointCloudConfig(**cfg.point_cloud)
    except TypeError as err:
        raise InputError(
            f"system.refine: {err}",
            "the fields of hifi123.core.makeit3d.point_refine.RefineConfig (point_cloud: "
            "PointCloudConfig fields)",
            "fix the key names under system.refine (see configs/makeit3d-refine.yaml)",
        ) from err
    return cfg


def reference_camera_from(refine: RefineConfig) -> ViewCamera:
    """The reference camera of a refine block, at the point-cloud build resolution."""
    res = int(PointCloudConfig(**refine.point_cloud).resolution)
    return ViewCamera.orbit(
        refine.elevation_deg, refine.azimuth_deg, refine.camera_distance, refine.fovy_deg, res
    )


def build_refine_point_cloud(
    checkpoint: str, refine: RefineConfig, geometry_override=None, device=None, log=None
) -> PointCloud:
    """The refine stage's point cloud: the coarse checkpoint's model rendered all around
    (:func:`build_point_cloud_from_checkpoint`) with the reference image of the refine block."""
    from ...core.images import load_rgba

    if not checkpoint:
        raise InputError(
            "makeit3d refine stage: no coarse checkpoint",
            "system.geometry_convert_from = the coarse run's ckpts/last.ckpt",
            "pass system.geometry_convert_from=outputs/makeit3d-coarse/<tag>@LAST/ckpts/last.ckpt",
        )
    rgba = load_rgba(refine.reference_image_path, role="system.refine.reference_image_path")
    return build_point_cloud_from_checkpoint(
        checkpoint,
        rgba,
        reference_camera_from(refine),
        PointCloudConfig(**refine.point_cloud),
        refine.coarse_renderer_type,
        dict(refine.coarse_renderer),
        dict(geometry_override or {}),
        refine.coarse_shading,
        refine.coarse_background,
        device,
        log,
    )


def refine_reference_terms(
    batch: Dict[str, Any], out: Dict[str, Any], refine: RefineConfig
) -> Dict[str, torch.Tensor]:
    """`loss_ref_l1` of a reference sub-step: masked L1 with the alpha eroded 5x5 at 800 px."""
    size = out["comp_rgb"].shape[1]
    return {
        "loss_ref_l1": reference_l1_loss(
            out["comp_rgb"],
            batch["rgb"],
            batch["mask"],
            refine.scaled_px(refine.ref_l1_erosion_px, size),
        )
    }


def refine_regularizer_terms(
    geometry: "MakeIt3DPointCloud", out: Dict[str, Any], refine: RefineConfig, wants
) -> Dict[str, torch.Tensor]:
    """The every-iteration refine terms whose lambda `wants`: texture (novel / reference-visible
    colours vs their initial values) and background (white outside the dilated coverage)."""
    losses: Dict[str, torch.Tensor] = {}
    if wants("texture_novel") or wants("texture_reference"):
        tex = texture_regularizer(
            geometry.colors, geometry.initial_colors, geometry.reference_visible
        )
        losses.update({f"loss_{k}": v for k, v in tex.items() if wants(k)})
    if wants("background"):
        size = out["comp_rgb"].shape[1]
        losses["loss_background"] = background_loss(
            out["comp_rgb"], out["opacity"], refine.scaled_px(refine.background_dilation_px, size)
        )
    return losses


@torch.no_grad()
def render_orbit_view(
    renderer,
    refine: RefineConfig,
    elevation_deg: float,
    azimuth_deg: float,
    height: int,
    width: int,
) -> torch.Tensor:
    """One frame [H, W, 3] of the deferred renderer at the reference distance and FOV."""
    dev = renderer.geometry.positions.device
    cam = ViewCamera.orbit(
        elevation_deg, azimuth_deg, refine.camera_distance, refine.fovy_deg, height, width
    )
    return renderer(**camera_batch(cam, dev))["comp_rgb"][0]


def save_initial_point_cloud(saver, cloud: PointCloud) -> Dict[str, str]:
    """save/it0-point-cloud/point_cloud.{ply,npz} (saver: a threestudio SaverMixin, e.g. the
    system)."""
    return {
        "ply": write_ply(
            saver.get_save_path(SAVE_LAYOUT["initial_ply"]), cloud.positions, cloud.colors
        ),
        "npz": cloud.save_npz(saver.get_save_path(SAVE_LAYOUT["initial_npz"])),
    }


def save_refine_exports(
    saver, step: int, renderer, refine: RefineConfig, height: int, width: int, video: bool = False
) -> Dict[str, str]:
    """save/it<step>-export/{point_cloud.ply, deferred_renderer.pt} and, with `video`,
    save/it<step>-orbit.mp4 (hifi123.core.makeit3d.point_export.SAVE_LAYOUT)."""
    geo = renderer.geometry
    path = {
        k: saver.get_save_path(v.format(step=int(step)))
        for k, v in SAVE_LAYOUT.items()
        if k in ("ply", "renderer", "orbit_video")
    }
    out = {
        "ply": write_ply(path["ply"], geo.positions, geo.colors.detach().clamp(0, 1)),
        "weights": save_renderer_weights(
            path["renderer"],
            renderer.unet,
            geo.background,
            geo.descriptors,
            geo.positions,
            geo.reference_visible,
            extra={"step": int(step), "settings": dict(vars(renderer.settings))},
        ),
    }
    if video:
        out["video"] = write_orbit_video(
            path["orbit_video"],
            lambda e, a: render_orbit_view(renderer, refine, e, a, height, width),
            refine.video_frames,
            refine.video_fps,
            refine.elevation_deg,
            refine.azimuth_deg,
        )
    return out
