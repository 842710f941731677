"""A differentiable multi-scale point rasteriser in pure PyTorch (Make-It-3D refine stage).

Make-It-3D §3.3 renders its textured point cloud with PyTorch3D's `rasterize_points` at K = 3
scales and feeds the three descriptor images to a U-Net (algorithms.md D.4; decision 17). This
module does the same without custom kernels, on CPU and GPU.

* **Cameras** follow threestudio: `c2w` columns are [right, up, back | position] (the camera looks
  along its own -z), `fovy` in radians, focal length f = H / (2 tan(fovy / 2)) for both axes,
  pixel (i, j) has its centre at (i + 0.5, j + 0.5). A point with camera coordinates (x, y, z_c)
  projects to u = f x / z + W/2, v = -f y / z + H/2 with z = -z_c > 0 (camera z-depth).
* **Scales**: scale s renders at (H / 2^s) x (W / 2^s) with the focal length scaled alike. The point
  radius is given in pixels at full resolution (`radius_px`, Make-It-3D: 2 px at 800) and is the
  same in NDC at every scale, i.e. radius_px / 2^s pixels at scale s.
* **Per pixel**: the `points_per_pixel` (8) nearest points (camera z of the point) whose projection
  lies within the radius of the pixel centre, composited front to back with
  alpha_k = 1 - sqrt(clamp(0.1 d_k^2 / r^2, 1e-3, 1)) (d_k the distance from the pixel centre to the
  projected point; algorithms.md D.4):

      F = sum_k alpha_k T_k f_k + T_res b,   T_k = prod_{j<k} (1 - alpha_j),

  with b the learnable background descriptor composited with the residual transmittance T_res
  (Make-It-3D passes its background to the rasteriser but never uses it; decision 17 uses it).
  Compositing stops once the transmittance falls below `min_transmittance` (1e-4, the early
  termination threshold of Make-It-3D's coarse ray marcher): later points get weight exactly 0 and
  T_res = 0, so a saturated pixel sends no gradient to the background or to the points behind.
  With the default alpha range (>= 0.684 inside the radius) 8 points always saturate a pixel, so
  this changes nothing but the exact zeros.

How it is computed (vectorised; the only Python loops run over cameras, scales and a few depth
slabs, never over points):

1. Project once per camera; split the points into `depth_slabs` slabs of equal count by camera z
   (quantiles), processed front to back. Per pixel we keep the transmittance T and the number of
   points composited so far.
2. Occlusion culling (exact): before a slab, a dilation of the "still open" pixel map (T above the
   threshold and fewer than `points_per_pixel` points) over the footprint window tells which points
   can still reach an open pixel; the others are dropped without generating fragments. In a 360°
   cloud this removes most of the far side. Used for footprints of 4x4 pixels or more (the full
   scale); the smaller scales run one slab, where culling costs more than it saves.
3. Splatting: each remaining point yields the pixels whose centres lie within its radius (a fixed
   window per point, masked). Each slab's points are sorted by z once per camera (stable, so equal
   depths keep the lower point index first); a stable sort of the fragments by pixel alone then
   gives (pixel, z) order. Fragments are ranked within their pixel,
   capped at `points_per_pixel` minus what the pixel already holds, and composited with a per-pixel
   cumprod table. Memory: `max_fragments_per_chunk` bounds the fragments generated per slab (more
   slabs when needed); the composited fragments are at most `points_per_pixel` per pixel.
4. The differentiable part is the product of the (constant) sparse [pixels, points] weight matrix
   with the features (a CSR matmul forward; the transposed CSR product backward), so gradients reach
   exactly the features of points with a non-zero weight somewhere, and the background only through
   T_res.

Positions get no gradient (Make-It-3D does not optimise them). Outputs per scale: the descriptor
image [B, C, h, w], the coverage sum_k w_k = 1 - T (Make-It-3D's rasterised "ones" image, which it
dilates for the background loss) and the weighted camera z sum_k w_k z_k (not divided by the
coverage, like threestudio's NeRF `depth`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Union

import torch

#: alpha = 1 - sqrt(clamp(ALPHA_DIST_SCALE * d^2 / r^2, ALPHA_MIN, 1))  (algorithms.md D.4)
ALPHA_DIST_SCALE = 0.1
ALPHA_MIN = 1e-3


@dataclass
class PointRasterSettings:
    radius_px: float = 2.0  # point radius in pixels at full resolution (M3D: 2 px at 800)
    points_per_pixel: int = 8  # nearest points composited per pixel (M3D: 8)
    n_scales: int = 3  # full, /2, /4 (M3D K = 3)
    min_transmittance: float = 1e-4  # early termination; 0 composites all points_per_pixel points
    znear: float = 1e-3  # points closer than this (camera z) are culled
    depth_slabs: int = 4  # front-to-back slabs for occlusion culling (1 = no culling)
    max_fragments_per_chunk: int = 1 << 22  # memory bound: fragments generated at once

    def __post_init__(self) -> None:
        if self.radius_px <= 0:
            raise ValueError(f"radius_px must be positive, got {self.radius_px}")
        if self.points_per_pixel < 1 or self.n_scales < 1 or self.depth_slabs < 1:
            raise ValueError("points_per_pixel, n_scales and depth_slabs must be >= 1")


class Fragments(NamedTuple):
    """The composited (pixel, point) pairs of one image, front to back within each pixel.

    `pix` is the row-major pixel index j * W + i, `rank` the position of the point in its pixel's
    depth order (0 = nearest), `d2` the squared distance of the pixel centre to the projected point
    divided by the squared radius, `weight` the compositing weight alpha * T. `transmittance` [P] is
    the product of (1 - alpha) over each pixel's composited points (1 where none)."""

    pix: torch.Tensor  # [F] long
    point: torch.Tensor  # [F] long
    z: torch.Tensor  # [F]
    d2: torch.Tensor  # [F]
    rank: torch.Tensor  # [F] long
    weight: torch.Tensor  # [F]
    transmittance: torch.Tensor  # [P]
    height: int
    width: int

    def dense(self, points_per_pixel: int):
        """[P, K] tables (idx, z, d2) sorted front to back; empty slots: idx -1, z inf, d2 0."""
        P, K = self.height * self.width, int(points_per_pixel)
        idx = torch.full((P, K), -1, dtype=torch.long, device=self.pix.device)
        z = torch.full((P, K), float("inf"), dtype=self.z.dtype, device=self.pix.device)
        d2 = torch.zeros((P, K), dtype=self.d2.dtype, device=self.pix.device)
        sel = self.rank < K
        flat = self.pix[sel] * K + self.rank[sel]
        idx.view(-1)[flat] = self.point[sel]
        z.view(-1)[flat] = self.z[sel]
        d2.view(-1)[flat] = self.d2[sel]
        return idx, z, d2


class ScaleOutput(NamedTuple):
    features: torch.Tensor  # [B, C, h, w] composited descriptors (+ background)
    coverage: torch.Tensor  # [B, 1, h, w] sum_k w_k in [0, 1]
    depth: torch.Tensor  # [B, 1, h, w] sum_k w_k z_k (camera z, weighted)


# ----------------------------------------------------------------------------------- cameras
def focal_from_fovy(height: Union[int, float], fovy: Union[float, torch.Tensor]):
    """Focal length in pixels of a threestudio camera (vertical FOV `fovy` in radians)."""
    if torch.is_tensor(fovy):
        return 0.5 * float(height) / torch.tan(0.5 * fovy)
    return 0.5 * float(height) / math.tan(0.5 * float(fovy))


def project_points(points: torch.Tensor, c2w: torch.Tensor, fovy, height: int, width: int):
    """World points [N, 3] to continuous pixel coordinates (u = column, v = row; pixel centres at
    integer + 0.5) and camera z-depth (positive in front). `c2w` [4, 4] (or [3, 4]), `fovy` radians."""
    m = [[float(x) for x in row] for row in c2w.detach().double().cpu()[:3]]
    # R^T (p - t) written out per axis: small matmuls are pathologically slow on busy CPUs
    qx, qy, qz = points[:, 0] - m[0][3], points[:, 1] - m[1][3], points[:, 2] - m[2][3]
    cx = qx * m[0][0] + qy * m[1][0] + qz * m[2][0]
    cy = qx * m[0][1] + qy * m[1][1] + qz * m[2][1]
    z = -(qx * m[0][2] + qy * m[1][2] + qz * m[2][2])
    f = float(focal_from_fovy(height, float(fovy)))
    safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    u = cx / safe * f + 0.5 * width
    v = -cy / safe * f + 0.5 * height
    return u, v, z


def pixel_ray_norms(height: int, width: int, fovy, device=None, dtype=torch.float32) -> torch.Tensor:
    """|d| [H, W] of the camera-space ray directions ((i+.5-W/2)/f, -(j+.5-H/2)/f, -1); a distance
    along the unit ray divided by it is the camera z-depth."""
    f = float(focal_from_fovy(height, float(fovy)))
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5 - 0.5 * width) / f
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5 - 0.5 * height) / f
    return torch.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)


def _z_sort_bits(z: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like positive float32 z (IEEE bit patterns of positive floats sort like
    their values)."""
    return z.float().contiguous().view(torch.int32).to(torch.int64)


def alpha_from_d2(d2: torch.Tensor) -> torch.Tensor:
    """Per-point alpha from the normalised squared distance d^2 / r^2 (algorithms.md D.4)."""
    return 1.0 - torch.sqrt(torch.clamp(ALPHA_DIST_SCALE * d2, ALPHA_MIN, 1.0))


# --------------------------------------------------------------------------------- selection
def _dilate_square(mask: torch.Tensor, half: int) -> torch.Tensor:
    """Binary dilation of a [h, w] bool map by a (2 half + 1)^2 square, with shifted ORs (much
    cheaper than a float max-pool)."""
    out = mask.clone()
    for dim in (0, 1):
        src = out.clone()
        n = src.shape[dim]
        for s in range(1, min(half, n - 1) + 1):
            out.narrow(dim, s, n - s).logical_or_(src.narrow(dim, 0, n - s))
            out.narrow(dim, 0, n - s).logical_or_(src.narrow(dim, s, n - s))
    return out


def point_slabs(
    un: torch.Tensor,
    vn: torch.Tensor,
    z: torch.Tensor,
    rx: float,
    ry: float,
    znear: float = 1e-3,
    depth_slabs: int = 4,
    fragments_per_point: int = 25,
    max_fragments_per_chunk: int = 1 << 22,
) -> List[torch.Tensor]:
    """Indices of the points in front of the camera whose footprint may touch the image, split into
    front-to-back slabs. `un`, `vn` are pixel coordinates divided by the image size and `rx`, `ry`
    the radius in the same units, so one partition serves every scale. Slabs are processed whole, so
    the memory bound `max_fragments_per_chunk` sets their minimum number."""
    keep = (z > znear) & (un > -rx) & (un < 1 + rx) & (vn > -ry) & (vn < 1 + ry)
    keep &= torch.isfinite(un) & torch.isfinite(vn) & torch.isfinite(z)
    ids = keep.nonzero(as_tuple=True)[0]
    n = max(int(depth_slabs), -(-ids.numel() * int(fragments_per_point) // max(int(max_fragments_per_chunk), 1)))
    return _depth_slabs(z, ids, n)


def _depth_slabs(z: torch.Tensor, ids: torch.Tensor, n_slabs: int) -> List[torch.Tensor]:
    """`ids` split into front-to-back slabs of about equal count (quantiles of a subsample)."""
    if n_slabs <= 1 or ids.numel() < 4 * n_slabs:
        return [ids]
    zi = z[ids]
    sub = zi if zi.numel() <= 65536 else zi[torch.linspace(0, zi.numel() - 1, 65536, device=zi.device).long()]
    q = torch.linspace(0, 1, n_slabs + 1, device=zi.device, dtype=zi.dtype)[1:-1]
    edges = torch.quantile(sub, q)
    slab = torch.bucketize(zi, edges, right=True)
    order = torch.argsort(slab, stable=True)
    counts = torch.bincount(slab, minlength=n_slabs).tolist()
    return [part for part in torch.split(ids[order], counts) if part.numel()]


def _sort_by_z(slabs: List[torch.Tensor], z: torch.Tensor) -> List[torch.Tensor]:
    """Each slab's ids reordered by z (stable: equal depths keep their order in the slab)."""
    return [ids.index_select(0, torch.sort(z.index_select(0, ids).float(), stable=True)[1]) for ids in slabs]


@torch.no_grad()
def select_fragments(
    u: torch.Tensor,
    v: torch.Tensor,
    z: torch.Tensor,
    height: int,
    width: int,
    radius: float,
    points_per_pixel: int = 8,
    min_transmittance: float = 0.0,
    znear: float = 1e-3,
    depth_slabs: int = 4,
    max_fragments_per_chunk: int = 1 << 22,
    slabs: Optional[List[torch.Tensor]] = None,
    slabs_z_sorted: bool = False,
) -> Fragments:
    """Per pixel, the `points_per_pixel` nearest points (by `z`) whose projection (u, v) lies within
    `radius` pixels of the pixel centre, with their compositing weights (see the module doc).

    `min_transmittance` > 0 stops compositing a pixel once its transmittance falls below it (the
    fragments behind are not returned); 0 returns the plain K nearest. `slabs` (from
    :func:`point_slabs`) reuses a front-to-back partition computed once per camera."""
    device, dtype = u.device, z.dtype
    h, w, K, r = int(height), int(width), int(points_per_pixel), float(radius)
    eps = float(min_transmittance)
    P = h * w
    trans = torch.ones(P, device=device, dtype=dtype)
    count = torch.zeros(P, device=device, dtype=torch.long)
    open_px = torch.ones(P, device=device, dtype=torch.bool)  # fewer than K points and T >= eps
    parts: List[tuple] = []
    n_win = int(math.floor(2.0 * r)) + 1  # footprint window, pixels per axis
    half = int(math.floor(r + 0.5))  # footprint pixels lie within +-half of the point's pixel
    offs = torch.arange(n_win, device=device)
    if slabs is None:
        slabs = point_slabs(u / w, v / h, z, r / w, r / h, znear, depth_slabs, n_win * n_win, max_fragments_per_chunk)
    if not slabs_z_sorted:
        slabs = _sort_by_z(slabs, z)
    first = True
    for pid in slabs:
        uu, vv = u[pid], v[pid]
        if not first:  # occlusion culling: can the point still reach an open pixel?
            reach = _dilate_square(open_px.view(h, w), half).view(-1)
            ci = torch.floor(uu).long().clamp_(0, w - 1)
            cj = torch.floor(vv).long().clamp_(0, h - 1)
            alive = reach[cj * w + ci]
            pid, uu, vv = pid[alive], uu[alive], vv[alive]
            if pid.numel() == 0:
                continue
        # footprint: columns i with |i + 0.5 - u| <= r start at ceil(u - 0.5 - r)
        ii = torch.ceil(uu - 0.5 - r).long()[:, None] + offs[None, :]  # [n, L]
        jj = torch.ceil(vv - 0.5 - r).long()[:, None] + offs[None, :]
        inf = torch.tensor(float("inf"), device=device, dtype=dtype)
        dx = torch.where((ii >= 0) & (ii < w), (ii.to(dtype) + 0.5 - uu[:, None]) ** 2, inf)  # off-image: inf
        dy = torch.where((jj >= 0) & (jj < h), (jj.to(dtype) + 0.5 - vv[:, None]) ** 2, inf)
        d2 = (dy[:, :, None] + dx[:, None, :]).view(-1)  # [n * L * L], (point, y, x) major
        cand = (d2 <= r * r).nonzero().squeeze(1)
        pixw = ((jj * w).int()[:, :, None] + ii.int()[:, None, :]).view(-1)  # int32: less traffic
        pix = pixw.index_select(0, cand)
        if not first:  # drop fragments of pixels that are already full
            keep_c = open_px.index_select(0, pix).nonzero().squeeze(1)
            cand, pix = cand.index_select(0, keep_c), pix.index_select(0, keep_c)
        first = False
        if pix.numel() == 0:
            continue
        # the slab's points are in (z, index) order and the candidates (point, y, x)-major, so a stable
        # sort by pixel alone yields (pixel, z) order with ties on the lower point index first
        pix_s, order = torch.sort(pix, stable=True)
        pix_s = pix_s.long()
        nf = pix_s.numel()
        ar = torch.arange(nf, device=device)
        is_start = torch.ones(nf, dtype=torch.bool, device=device)
        is_start[1:] = pix_s[1:] != pix_s[:-1]
        rank = ar - is_start.nonzero().squeeze(1).index_select(0, torch.cumsum(is_start, 0) - 1)
        base = count.index_select(0, pix_s)
        sel = (base + rank < K).nonzero().squeeze(1)  # a prefix of every pixel's run
        order = order.index_select(0, sel)
        pix_s, rank, base = pix_s.index_select(0, sel), rank.index_select(0, sel), base.index_select(0, sel)
        is_start = is_start.index_select(0, sel)
        c_sel = cand.index_select(0, order)
        f_d2 = d2.index_select(0, c_sel) / (r * r)
        alpha = alpha_from_d2(f_d2)
        # per-pixel front-to-back transmittance through a [pixels, K] cumprod table
        seg = torch.cumsum(is_start.long(), 0) - 1
        seg_pix = pix_s.index_select(0, is_start.nonzero().squeeze(1))
        t0 = trans.index_select(0, seg_pix)
        table = torch.zeros((seg_pix.numel(), K), device=device, dtype=dtype)
        slot = seg * K + rank  # flat [pixels, K] index
        table.view(-1).index_copy_(0, slot, alpha)
        t_incl = torch.cumprod(1.0 - table, 1) * t0[:, None]
        t_excl = torch.cat([t0[:, None], t_incl[:, :-1]], 1)
        t_before = t_excl.view(-1).index_select(0, slot)
        n_counted = torch.zeros(seg_pix.numel(), device=device, dtype=torch.long)
        if eps > 0:
            counted = t_before >= eps  # a prefix of every pixel's run
            n_counted.index_add_(0, seg, counted.long())
            out_i = counted.nonzero().squeeze(1)
        else:
            n_counted.index_add_(0, seg, torch.ones_like(seg))
            out_i = None
        last = (n_counted - 1).clamp_min(0)
        new_t = torch.where(n_counted > 0, t_incl.gather(1, last[:, None])[:, 0], t0)
        new_c = count.index_select(0, seg_pix) + n_counted
        trans.index_copy_(0, seg_pix, new_t)  # seg_pix holds each pixel once
        count.index_copy_(0, seg_pix, new_c)
        open_px.index_copy_(0, seg_pix, (new_c < K) & (new_t >= eps) if eps > 0 else new_c < K)
        if out_i is not None:
            pix_s, c_sel, f_d2, rank, base = (c.index_select(0, out_i) for c in (pix_s, c_sel, f_d2, rank, base))
            wt = (alpha * t_before).index_select(0, out_i)
        else:
            wt = alpha * t_before
        f_pid = pid.index_select(0, torch.div(c_sel, n_win * n_win, rounding_mode="floor"))
        cols = (pix_s, f_pid, z.index_select(0, f_pid), f_d2, base + rank, wt)
        parts.append(cols)
    if parts:
        cols = [torch.cat(c) for c in zip(*parts)]
    else:
        e = torch.zeros(0, device=device)
        cols = [e.long(), e.long(), e.to(dtype), e.to(dtype), e.long(), e.to(dtype)]
    return Fragments(*cols, trans, h, w)


def rasterize_fragments(
    points: torch.Tensor,
    c2w: torch.Tensor,
    fovy,
    height: int,
    width: int,
    radius: float,
    points_per_pixel: int = 8,
    min_transmittance: float = 0.0,
    znear: float = 1e-3,
    depth_slabs: int = 4,
) -> Fragments:
    """Project `points` [N, 3] with one camera and select the per-pixel nearest points (no
    features). `radius` is in pixels of this (height, width) image."""
    with torch.no_grad():
        u, v, z = project_points(points.detach(), c2w, fovy, height, width)
    return select_fragments(u, v, z, height, width, radius, points_per_pixel, min_transmittance, znear, depth_slabs)


# -------------------------------------------------------------------------------- compositing
def residual_transmittance(frags: Fragments, min_transmittance: float) -> torch.Tensor:
    """T_res [P]: the transmittance left for the background, 0 once a pixel saturated."""
    t = frags.transmittance
    eps = float(min_transmittance)
    return torch.where(t >= eps, t, torch.zeros_like(t)) if eps > 0 else t


def composite_features(
    features: torch.Tensor,
    frags: Fragments,
    background: Optional[torch.Tensor] = None,
    min_transmittance: float = 1e-4,
    channels_first: bool = False,
) -> torch.Tensor:
    """sum_k w_k f_k (+ T_res b) per pixel: [P, C], or [C, P] when `channels_first` (then
    `features` is given as [C, N]). Differentiable in `features` and `background` [C]; only the
    fragments' points are gathered, so only they receive gradient."""
    P = frags.height * frags.width
    w = frags.weight if frags.weight.dtype == features.dtype else frags.weight.to(features.dtype)
    dim = 1 if channels_first else 0
    shape = (features.shape[0], P) if channels_first else (P, features.shape[1])
    gathered = features.index_select(dim, frags.point) * (w[None, :] if channels_first else w[:, None])
    out = features.new_zeros(shape).index_add(dim, frags.pix, gathered)
    if background is not None:
        res = residual_transmittance(frags, min_transmittance).to(features.dtype)
        b = background.reshape(-1).to(features.dtype)
        out = out + (b[:, None] * res[None, :] if channels_first else res[:, None] * b[None, :])
    return out


class _CompositeCSR(torch.autograd.Function):
    """out [P, C] = W @ features [N, C] + res b^T with W [P, N] the sparse fragment weights and res
    [P] the residual transmittance (both constant): a CSR product forward; backward a gather /
    index_add (only the fragments' points get gradient) and a mat-vec for the background."""

    @staticmethod
    def forward(ctx, features, background, pix, point, weight, res):
        n_pix = res.numel()
        order = torch.sort(pix.int(), stable=True)[1]  # group the fragments by pixel (CSR rows)
        crow = torch.zeros(n_pix + 1, dtype=torch.long, device=pix.device)
        torch.cumsum(torch.bincount(pix, minlength=n_pix), 0, out=crow[1:])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            mat = torch.sparse_csr_tensor(
                crow, point.index_select(0, order), weight.index_select(0, order), (n_pix, features.shape[0]),
                check_invariants=False,
            )
        out = mat @ features
        if background is not None:
            out.addr_(res, background)
        ctx.save_for_backward(pix, point, weight, res)
        ctx.n_points = features.shape[0]
        ctx.has_background = background is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        pix, point, weight, res = ctx.saved_tensors
        gf = gb = None
        if ctx.needs_input_grad[0]:  # W^T @ grad as a CSR product (rows: points; empty rows give exact 0)
            order = torch.sort(point.int(), stable=True)[1]
            crow = torch.zeros(ctx.n_points + 1, dtype=torch.long, device=point.device)
            torch.cumsum(torch.bincount(point, minlength=ctx.n_points), 0, out=crow[1:])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mat_t = torch.sparse_csr_tensor(
                    crow, pix.index_select(0, order), weight.index_select(0, order), (ctx.n_points, res.numel()),
                    check_invariants=False,
                )
            gf = mat_t @ grad_out.contiguous()
        if ctx.has_background and ctx.needs_input_grad[1]:
            gb = (grad_out.t() * res[None, :]).sum(1)  # the reduction of the plain autograd expression
        return gf, gb, None, None, None, None


def _composite_rows(
    features: torch.Tensor, frags: Fragments, background: Optional[torch.Tensor], min_transmittance: float
) -> torch.Tensor:
    """composite_features for row-major `features` [N, C] -> [P, C] through a sparse CSR product."""
    P = frags.height * frags.width
    dt = features.dtype
    w = frags.weight if frags.weight.dtype == dt else frags.weight.to(dt)
    res = residual_transmittance(frags, min_transmittance).to(dt)
    if frags.pix.numel():
        bg = None if background is None else background.reshape(-1).to(dt)
        return _CompositeCSR.apply(features, bg, frags.pix, frags.point, w, res)
    out = features.new_zeros((P, features.shape[1])).index_add(0, frags.pix, features.index_select(0, frags.point))
    if background is not None:
        out = out + res[:, None] * background.reshape(-1).to(dt)[None, :]
    return out


# --------------------------------------------------------------------------------- top level
def scale_sizes(height: int, width: int, n_scales: int) -> List[tuple]:
    """(h, w) of each scale; H and W must be divisible by 2^(n_scales - 1)."""
    div = 2 ** (int(n_scales) - 1)
    if height % div or width % div:
        raise ValueError(
            f"the render size {height}x{width} must be divisible by {div} for {n_scales} scales "
            f"(choose a height/width that is a multiple of {div})"
        )
    return [(height >> s, width >> s) for s in range(int(n_scales))]


def _as_batch(x: Union[float, torch.Tensor, Sequence], n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=like.dtype, device=like.device).reshape(-1)
    return t.expand(n) if t.numel() == 1 else t


def rasterize_points(
    points: torch.Tensor,
    features: torch.Tensor,
    c2w: torch.Tensor,
    fovy,
    height: int,
    width: int,
    settings: Optional[PointRasterSettings] = None,
    background: Optional[torch.Tensor] = None,
) -> List[ScaleOutput]:
    """Rasterise `points` [N, 3] carrying `features` [N, C] into `n_scales` images per camera.

    `c2w` [B, 4, 4] (or [4, 4]), `fovy` radians (scalar or [B]), `background` [C] or None (then
    uncovered pixels are 0). Returns one :class:`ScaleOutput` per scale (full resolution first).
    Differentiable with respect to `features` and `background` only."""
    s = settings or PointRasterSettings()
    if c2w.dim() == 2:
        c2w = c2w[None]
    B = c2w.shape[0]
    pts = points.detach()
    fov = _as_batch(fovy, B, pts)
    sizes = scale_sizes(int(height), int(width), s.n_scales)
    per_scale: List[List[tuple]] = [[] for _ in sizes]
    feats_rm = features.contiguous()  # [N, C]: rows of the sparse product
    for b in range(B):  # cameras; everything inside is vectorised over points
        with torch.no_grad():
            u, v, z = project_points(pts, c2w[b], fov[b], height, width)
            n_win = int(math.floor(2.0 * s.radius_px)) + 1
            slabs = point_slabs(
                u / width, v / height, z, s.radius_px / width, s.radius_px / height, s.znear,
                s.depth_slabs, n_win * n_win, s.max_fragments_per_chunk,
            )  # the same at every scale
            slabs = _sort_by_z(slabs, z)
            whole = [torch.cat(slabs)] if len(slabs) > 1 and s.max_fragments_per_chunk >= n_win * n_win * sum(
                x.numel() for x in slabs) else slabs
        for k, (h, w) in enumerate(sizes):
            scale = h / float(height)
            r = s.radius_px * scale
            # culling pays off for large footprints only (a 4x4 window or more)
            use = slabs if (math.floor(2.0 * r) + 1) ** 2 >= 16 else whole
            frags = select_fragments(
                u * scale, v * scale, z, h, w, r, s.points_per_pixel,
                s.min_transmittance, s.znear, s.depth_slabs, s.max_fragments_per_chunk, use, True,
            )
            feat = _composite_rows(feats_rm, frags, background, s.min_transmittance).t()  # [C, P] view
            with torch.no_grad():
                cov = 1.0 - frags.transmittance
                dep = torch.zeros_like(cov).index_add_(0, frags.pix, frags.weight * frags.z)
            per_scale[k].append((feat, cov, dep))
    outs: List[ScaleOutput] = []
    for k, (h, w) in enumerate(sizes):
        feats = torch.stack([f.view(-1, h, w) if f.is_contiguous() else f.t().view(h, w, -1).permute(2, 0, 1)
                             for f, _, _ in per_scale[k]])
        cov = torch.stack([c.reshape(1, h, w) for _, c, _ in per_scale[k]]).to(features.dtype)
        dep = torch.stack([d.reshape(1, h, w) for _, _, d in per_scale[k]]).to(features.dtype)
        outs.append(ScaleOutput(feats, cov, dep))
    return outs
