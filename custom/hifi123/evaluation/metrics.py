"""Metrics as pure functions (no file I/O, no model loading).

Image metrics take float tensors [B,3,H,W] in [0,1] that are already composited on the evaluation
background (white, decisions.md 19). Point/mesh metrics take numpy arrays.

* PSNR: torchmetrics' functional implementation, one value per image (data_range 1.0).
* SSIM: our own, as the GSO protocol computed it (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03,
  border cropped; see `ssim`): recent torchmetrics average over a padded border instead, which
  reads 0.005-0.017 higher. The SyncDreamer protocol averages per-view values, so do we.
* LPIPS: the `lpips` package's model (v0.1 linear heads), fed [0,1] images with normalize=True,
  i.e. mapped to [-1,1] as the package expects.
* CLIP similarity: cosine similarity of L2-normalised image embeddings.
* Contextual distance: Mechrez et al., "The Contextual Loss for Image Transformation with
  Non-Aligned Data" (ECCV 2018), written from the paper's definition:

      d_ij   = 1 - cos(x_i - mu_y, y_j - mu_y)         (cosine distance; both centred on the
                                                          mean of the target features y)
      d~_ij  = d_ij / (min_k d_ik + eps)                (eps = 1e-5)
      w_ij   = exp((1 - d~_ij) / h)                     (band width h = 0.5)
      CX_ij  = w_ij / sum_k w_ik
      CX     = 1/N * sum_j max_i CX_ij
      distance = -log(CX)                               (>= 0; 0 iff every target feature has a
                                                          distinct exact match)

  x are the features of the evaluated image (a novel view), y those of the reference. The
  features come from VGG19 relu5_4 (see `models.py`); computed in float64.
* Chamfer distance: 0.5 * (mean NN distance a->b + mean NN distance b->a) (SyncDreamer), after an
  optional voxel down-sampling that replaces the points of each occupied voxel by their centroid,
  on Open3D's grid (`voxel_downsample`); nearest neighbours with scipy's cKDTree.
* Volume IoU: |A and B| / |A or B| of two boolean occupancy grids.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

CX_BAND_WIDTH = 0.5
CX_EPS = 1e-5


# ------------------------------------------------------------------------------------ images


def _check_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 4:
        raise ValueError(
            f"expected two [B,C,H,W] tensors of one shape, got {tuple(pred.shape)} and "
            f"{tuple(gt.shape)}"
        )


def psnr(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, [B] (MSE over all pixels and channels of each image)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(pred, gt)
    return torch.stack(
        [
            peak_signal_noise_ratio(p[None].double(), g[None].double(), data_range=data_range)
            for p, g in zip(pred, gt)
        ]
    ).float()


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM, [B]: Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, population
    (co)variances, the SSIM map over the positions where the whole window lies inside the image
    (the border of (11 - 1) / 2 pixels is cropped, not padded), averaged over pixels and channels.

    This is what the GSO protocol's numbers were computed with (skimage's Gaussian SSIM, and
    torchmetrics before it started averaging over a padded border); it is computed here so the
    value does not depend on the installed torchmetrics version."""
    _check_pair(pred, gt)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got "
            f"{tuple(pred.shape[-2:])}"
        )
    x, y = pred.double(), gt.double()
    c = x.shape[1]
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, kernel, groups=c)  # no padding: valid positions only

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return s_map.flatten(1).mean(1).float()


@torch.no_grad()
def lpips_distance(
    model: torch.nn.Module, pred: torch.Tensor, gt: torch.Tensor, batch_size: int = 8
) -> torch.Tensor:
    """Per-image LPIPS, [B]; `model` is an `lpips.LPIPS`; images in [0,1]."""
    _check_pair(pred, gt)
    dev = next(model.parameters()).device
    out = []
    for i in range(0, pred.shape[0], batch_size):
        p = pred[i : i + batch_size].to(dev, torch.float32)
        g = gt[i : i + batch_size].to(dev, torch.float32)
        out.append(model(p, g, normalize=True).reshape(-1).cpu())
    return torch.cat(out)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of embeddings a [B,D] and b [B,D] or [1,D] -> [B]."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return (a * b).sum(-1).float()


def contextual_similarity(
    x: torch.Tensor, y: torch.Tensor, band_width: float = CX_BAND_WIDTH, eps: float = CX_EPS
) -> torch.Tensor:
    """CX(X, Y) of feature maps x, y [B,C,H,W] (or [B,C,N]) -> [B] in (0, 1].

    x: features of the evaluated image; y: features of the target (the reference)."""
    if x.dim() == 4:
        x = x.flatten(2)
    if y.dim() == 4:
        y = y.flatten(2)
    if x.shape[:2] != y.shape[:2]:
        raise ValueError(f"feature shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    x = x.double()
    y = y.double()
    mu_y = y.mean(dim=2, keepdim=True)
    xc = torch.nn.functional.normalize(x - mu_y, dim=1, eps=1e-12)
    yc = torch.nn.functional.normalize(y - mu_y, dim=1, eps=1e-12)
    d = 1.0 - torch.einsum("bci,bcj->bij", xc, yc)  # [B, N_x, N_y], i: x index, j: y index
    d = d.clamp_min(0.0)
    d_rel = d / (d.min(dim=2, keepdim=True).values + eps)
    # softmax over j of (1 - d~_ij)/h == w_ij / sum_k w_ik, computed stably
    cx_ij = torch.softmax((1.0 - d_rel) / band_width, dim=2)
    return cx_ij.max(dim=1).values.mean(dim=1)


def contextual_distance(
    x: torch.Tensor, y: torch.Tensor, band_width: float = CX_BAND_WIDTH, eps: float = CX_EPS
) -> torch.Tensor:
    """-log CX(X, Y), [B]; 0 at best (see the module docstring)."""
    return -torch.log(contextual_similarity(x, y, band_width, eps))


# ------------------------------------------------------------------------------------ points


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Centroid of the points in each occupied voxel (voxel_size <= 0: the points unchanged).
    [N,3] -> [M,3], M <= N, sorted by voxel. The grid is anchored as Open3D's
    `voxel_down_sample` anchors it (which the GSO protocol calls): at the points' minimum corner
    minus half a voxel, so voxel (i, j, k) = floor((p - (min - voxel / 2)) / voxel)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if voxel_size is None or voxel_size <= 0 or len(pts) == 0:
        return pts
    anchor = pts.min(axis=0) - 0.5 * voxel_size
    keys = np.floor((pts - anchor) / voxel_size).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, pts)
    return sums / counts[:, None]


def nearest_distances(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Euclidean distance from each point of src [N,3] to its nearest neighbour in dst [M,3]."""
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(np.asarray(dst, dtype=np.float64)).query(
        np.asarray(src, dtype=np.float64), k=1
    )
    return dist


def chamfer_distance(
    a: np.ndarray, b: np.ndarray, voxel_size: Optional[float] = None
) -> Dict[str, float]:
    """Chamfer distance between point sets a (prediction) and b (ground truth).

    Returns {"chamfer": 0.5*(a_to_b + b_to_a), "a_to_b": mean NN distance a->b, "b_to_a": ...,
    "n_a", "n_b" (point counts after down-sampling)}."""
    a = voxel_downsample(a, voxel_size) if voxel_size else np.asarray(a, dtype=np.float64)
    b = voxel_downsample(b, voxel_size) if voxel_size else np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("Chamfer distance of an empty point set")
    ab = float(nearest_distances(a, b).mean())
    ba = float(nearest_distances(b, a).mean())
    return {
        "chamfer": 0.5 * (ab + ba),
        "a_to_b": ab,
        "b_to_a": ba,
        "n_a": int(len(a)),
        "n_b": int(len(b)),
    }


def volume_iou(occ_a: np.ndarray, occ_b: np.ndarray) -> float:
    """Intersection over union of two boolean occupancy grids of one shape."""
    a = np.asarray(occ_a, dtype=bool)
    b = np.asarray(occ_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"occupancy grids differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    if union == 0:
        raise ValueError("volume IoU of two empty occupancy grids")
    return float(np.logical_and(a, b).sum() / union)
