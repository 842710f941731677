"""Make-It-3D depth prior: 1 - Pearson correlation inside the eroded foreground mask.

Make-It-3D §3.2 Eq. 5 (which writes -Cov/(Var Var) for what is -Cov/(std std), a constant offset
away from what the official code minimises); algorithms.md C.1 (mask erosion) and C.4 (weight 1,
`PearsonCorrCoef` over the eroded foreground). Decision 15.

    rho(p, q) = sum (p - mean p)(q - mean q) / (sqrt(sum (p - mean p)^2 + N eps) sqrt(sum (q - mean
        q)^2 + N eps))
    loss      = 1 - rho            in [0, 2]: 0 at perfect correlation, 2 at perfect
              anti-correlation

`eps` (default 1e-8, in squared depth units, i.e. a standard deviation of 1e-4) only matters when a
depth is (nearly) constant over the mask: there the centred values are exactly 0, so rho = 0 and
the loss is 1, finite, with a finite gradient (at most ~1/sqrt(eps) per unit of the other centred
depth, divided by N). For depths whose standard deviation is well above 1e-4 the result is the
plain Pearson correlation, invariant to a positive scale and any shift of either depth.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

PEARSON_EPS = 1e-8


def pearson_correlation(p: torch.Tensor, q: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors of equal length (see the module docstring)."""
    if p.shape != q.shape or p.dim() != 1:
        raise ValueError(
            f"expected two 1-D tensors of equal length, got {tuple(p.shape)} and {tuple(q.shape)}"
        )
    n = p.numel()
    if n < 2:
        raise ValueError("the Pearson correlation needs at least 2 values (is the mask empty?)")
    p = p.double() if p.dtype == torch.float64 or q.dtype == torch.float64 else p.float()
    q = q.to(p.dtype)
    pc = p - p.mean()
    qc = q - q.mean()
    num = (pc * qc).sum()
    den = torch.sqrt((pc * pc).sum() + n * eps) * torch.sqrt((qc * qc).sum() + n * eps)
    return num / den


def _flat(x: torch.Tensor, b: int) -> torch.Tensor:
    # [B,H,W], [B,H,W,1], [B,1,H,W] -> [B, H*W]
    return x.reshape(b, -1)


def pearson_depth_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    eps: float = PEARSON_EPS,
) -> torch.Tensor:
    """1 - Pearson(pred, target) over the pixels of `mask`, averaged over the batch.

    `pred`, `target`, `mask` share a layout with one value per pixel ([B,H,W], [B,H,W,1] or
    [B,1,H,W]); `mask` is bool or float (> 0.5 = inside) and is used as given (erode it first with
    `core.morphology.erode`). Without a mask every pixel counts. Pixels where either depth is NaN or
    infinite are left out, with a warning. Gradients flow to `pred` (and to `target` if it
    requires grad).
    """
    b = pred.shape[0]
    if target.numel() != pred.numel():
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in size"
        )
    p, q = _flat(pred, b), _flat(target, b)
    if mask is None:
        m = torch.ones_like(p, dtype=torch.bool)
    else:
        if mask.numel() != pred.numel():
            raise ValueError(f"mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)}")
        m = _flat(mask, b)
        m = m if m.dtype == torch.bool else m > 0.5
    finite = torch.isfinite(p) & torch.isfinite(q)
    if not bool(finite[m].all()):
        # a NaN/inf depth carries no ordering: leave those pixels out (the official code zeroes
        # them, which would correlate a hole with the background) and say so
        warnings.warn(
            f"pearson_depth_loss: {int((~finite & m).sum())} masked pixel(s) with a non-finite "
            "depth left out of the correlation",
            RuntimeWarning,
            stacklevel=2,
        )
        m = m & finite
        p = torch.where(finite, p, torch.zeros_like(p))  # no NaN may reach the graph
    losses = [1.0 - pearson_correlation(p[i][m[i]], q[i][m[i]], eps) for i in range(b)]
    return torch.stack(losses).mean()
