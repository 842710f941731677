"""Make-It-3D refine stage, threestudio-free: the losses and the settings block of the stage.

Paper §3.3 ("the refine stage optimises the point descriptors and the deferred renderer with the
coarse-stage objective and a texture regulariser"); algorithms.md D.3, D.6; decision 17.

Losses (pure functions; the weights live in the config as `lambda_*`):

* :func:`reference_l1_loss`: mean over all pixels and channels of |I_hat * m - I_ref * m|, m the
  reference alpha eroded by a 5x5 kernel at 800 px (official utils.py:793-802, 875-877; weight
  1000).
* :func:`texture_regularizer`: MSE(colours, initial colours) separately over the reference-visible
  points and the novel points (official utils.py:887: 1e5 and 1e3), so the reference-visible
  colours are nearly frozen while their 16 learned features stay free.
* :func:`contextual_loss`: -log CX between VGG19 relu5_4 features of a novel-view render and of the
  reference (band width 0.5), the official refine stage's extra novel-view loss ("helps to sharpen
  the texture", official README; weight 1, `contextual_loss_pytorch` on ImageNet-normalised
  [0, 1] images); the same contextual distance as our evaluation (`evaluation.metrics`).
* :func:`background_loss`: sum over pixels and channels of (1 - I_hat) (1 - dilate(coverage)), the
  coverage (rasterised ones at full resolution) dilated by a 5x5 max-pool; pushes the U-Net output
  to white where no point lies (official utils.py:865-869, 886; weight 1e-3). The official
  expression sum(1 - I_hat (1 - m)) differs from this by a constant only.

:class:`RefineConfig` is the schema of the `system.refine` block of `configs/makeit3d-refine.yaml`
(read by `makeit3d-system` with `stage: refine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ..morphology import dilate, erode, scale_px

#: loss terms of the refine stage (system.loss.lambda_<term>)
REFINE_TERMS = ("ref_l1", "texture_novel", "texture_reference", "background", "contextual")
#: the refine terms computed on novel-view sub-steps (the others: reference or every sub-step)
NOVEL_REFINE_TERMS = ("contextual",)


@dataclass
class RefineConfig:
    """`system.refine` (makeit3d-refine.yaml)."""

    # the reference view the point cloud is built from (interpolated from the data section)
    reference_image_path: str = ""  # RGBA; colours of the reference-visible points
    elevation_deg: float = 0.0
    azimuth_deg: float = 0.0
    camera_distance: float = 3.8
    fovy_deg: float = 20.0
    # rendering the coarse model for the build (official: albedo shading, white background)
    coarse_renderer_type: Optional[str] = None  # None: the coarse run's own renderer
    coarse_renderer: Dict[str, Any] = field(default_factory=dict)  # merged into its config
    coarse_shading: str = "albedo"
    coarse_background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    # hifi123.core.makeit3d.pointcloud.PointCloudConfig fields
    point_cloud: Dict[str, Any] = field(default_factory=dict)
    # losses
    ref_l1_erosion_px: float = 2.0  # @800: 5x5 erosion of the reference alpha (official)
    background_dilation_px: float = 2.0  # @800: 5x5 max-pool dilation of the coverage (official)
    pixel_reference_resolution: int = 800
    # contextual loss on novel views (lambda_contextual): VGG19 features, hub id / timm folder /
    # "torchvision" (the evaluation's loader), layer and band width of the official refine stage
    contextual_model: str = "timm/vgg19.tv_in1k"
    contextual_layer: str = "relu5_4"
    contextual_band_width: float = 0.5
    # outputs under save/ (hifi123.core.makeit3d.point_export.SAVE_LAYOUT)
    save_initial_point_cloud: bool = True  # it0-point-cloud/{point_cloud.ply, point_cloud.npz}
    # PLY + renderer weights every N steps and at the end (official)
    export_every_n_steps: int = 1000
    video_frames: int = 64  # 360 deg orbit of the final renders (official: 64 views, 25 fps)
    video_fps: int = 25

    def scaled_px(self, value_at_800: float, size: int) -> int:
        return scale_px(value_at_800, size, self.pixel_reference_resolution)


# ------------------------------------------------------------------------------------ helpers
def _b1hw(x: torch.Tensor) -> torch.Tensor:
    """threestudio single-channel maps [B, H, W] or [B, H, W, 1] -> [B, 1, H, W] float."""
    if x.dim() == 3:
        return x[:, None].float()
    if x.dim() == 4 and x.shape[-1] == 1:
        return x.permute(0, 3, 1, 2).float()
    raise ValueError(f"expected a map [B, H, W] or [B, H, W, 1], got {tuple(x.shape)}")


# ------------------------------------------------------------------------------------- losses
def reference_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, erosion_px: int = 2
) -> torch.Tensor:
    """mean |pred * m - target * m| over all pixels and channels, m = mask eroded by `erosion_px`.
    `pred`, `target` [B, H, W, 3]; `mask` [B, H, W] or [B, H, W, 1] (bool or float, > 0.5)."""
    m = erode((_b1hw(mask) > 0.5).float(), int(erosion_px)).permute(0, 2, 3, 1)
    return (pred * m - target.to(pred) * m).abs().mean()


def texture_regularizer(
    colors: torch.Tensor, initial: torch.Tensor, reference_visible: torch.Tensor
) -> Dict[str, torch.Tensor]:
    """{"texture_novel": MSE over novel points, "texture_reference": MSE over reference-visible
    points} of `colors` [N, 3] against `initial` [N, 3]; an empty set gives 0 (with a graph)."""
    diff = (colors - initial.to(colors)) ** 2
    ref = reference_visible.bool()
    out = {}
    for name, sel in (("texture_novel", ~ref), ("texture_reference", ref)):
        n = int(sel.sum())
        out[name] = diff[sel].mean() if n else (colors.sum() * 0.0)
    return out


def contextual_loss(
    pred: torch.Tensor, reference_features: torch.Tensor, features, band_width: float = 0.5
) -> torch.Tensor:
    """Mean over the batch of -log CX(features(pred), reference_features); `pred` [B, H, W, 3] in
    [0, 1] (a render), `reference_features` [1, C, h, w] (no gradient), `features` the VGG19 cut
    at the configured layer ([B, 3, H, W] in [0, 1] -> [B, C, h, w]). Differentiable in `pred`."""
    from ...evaluation.metrics import contextual_distance

    x = features(pred.permute(0, 3, 1, 2).float())
    y = reference_features.to(x).expand(x.shape[0], -1, -1, -1)
    return contextual_distance(x.flatten(2), y.flatten(2), band_width).float().mean()


def background_loss(
    pred: torch.Tensor, coverage: torch.Tensor, dilation_px: int = 2
) -> torch.Tensor:
    """sum over pixels and channels of (1 - pred) (1 - dilate(coverage)), averaged over the batch.
    `pred` [B, H, W, 3] in [0, 1], `coverage` [B, H, W] or [B, H, W, 1] in [0, 1]."""
    cov = dilate(_b1hw(coverage).to(pred.dtype), int(dilation_px)).permute(0, 2, 3, 1)
    return ((1.0 - pred) * (1.0 - cov)).flatten(1).sum(1).mean()
