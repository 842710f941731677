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
  What it drops is bounded by the transmittance at the stop: at most `min_transmittance` times the
  largest descriptor value behind it (features ~ N(0, 1): pixels move by up to ~3e-4 against full
  compositing), and those points and the background get exactly zero gradient there.

How it is computed (vectorised; the only Python loops run over cameras, scales and a few depth
slabs, never over points):

1. Project once per camera and order the points that can touch the image by (z, index): one sort
   of distinct integer keys (the float bit pattern of z, then the position) (:func:`depth_order`,
   shared by every scale). Slabs of equal point counts are taken from this order front to back
   (up to `depth_slabs` slabs of at least `min_slab_points` points, more when the memory bound
   `max_fragments_per_chunk` requires); per pixel we keep the transmittance T and the number of
   points composited so far.
2. Occlusion culling (exact): before a slab, a dilation of the "still open" pixel map (T above the
   threshold and fewer than `points_per_pixel` points) over the footprint window tells which of the
   remaining points can still reach an open pixel; the others are dropped for good (the next slab
   takes the next points that survive), and so are the fragments of closed pixels. Used when a
   footprint has more than 9 candidate pixels (the full scale); the smaller scales run one slab,
   where culling costs more than it saves.
3. Splatting: each remaining point yields the pixels of its footprint window whose centres lie
   within its radius (:func:`footprint_offsets`: 21 candidates at 2 px, tested row by row; the
   image-border test only when some footprint crosses the border). Every fragment gets one distinct
   integer key (pixel, position in the depth order); sorting the keys by value groups the
   fragments into per-pixel runs, front to back, and the key itself gives back both. Each run fills
   a dense row of K slots (capped at `points_per_pixel` minus what the pixel already holds), with
   1 - alpha recomputed from the pixel centre and a cumprod along the row.
4. The differentiable part is the product of the (constant) sparse [runs, points] weight matrix with
   the features: one weighted bag sum per run for all scales and cameras (`embedding_bag` with
   per-sample weights, the rows of the matrix in CSR form; on CPU FBGEMM's kernel, ~1.5x faster
   than torch's CSR product), scattered into the background images; backward the transposed
   product the same way (bags per point after one stable integer sort by point), so gradients
   reach exactly the features of points with a non-zero weight somewhere, and the background only
   through T_res.

On CPU the distinct keys are sorted by numpy (a vectorised quicksort, 2-3x faster than torch's radix
sort here and without an index array), masks are compacted with numpy (flatnonzero / compress,
5-10x faster than torch.nonzero / boolean indexing on these sizes). The images are written
channels-last (pixel-major rows: the scatter of the covered pixels and the backward gather are
contiguous row operations, and the U-Net's CPU convolutions run ~15% faster).

Measured costs (`hifi123 bench raster`) and where the time goes: `docs/performance.md`.

Positions get no gradient (Make-It-3D does not optimise them). Outputs per scale: the descriptor
image [B, C, h, w], the coverage sum_k w_k = 1 - T (Make-It-3D's rasterised "ones" image, which it
dilates for the background loss) and the weighted camera z sum_k w_k z_k (not divided by the
coverage, like threestudio's NeRF `depth`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from ..morphology import dilate_bool

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
    min_slab_points: int = 16384  # fewer slabs than depth_slabs when they would hold fewer points

    def __post_init__(self) -> None:
        if self.radius_px <= 0:
            raise ValueError(f"radius_px must be positive, got {self.radius_px}")
        if min(self.points_per_pixel, self.n_scales, self.depth_slabs, self.min_slab_points) < 1:
            raise ValueError(
                "points_per_pixel, n_scales, depth_slabs and min_slab_points must be >= 1"
            )
        if not 0.0 <= self.min_transmittance < 1.0:
            raise ValueError(f"min_transmittance must be in [0, 1), got {self.min_transmittance}")
        if self.znear <= 0:
            raise ValueError(
                f"znear must be positive (camera z in front of the camera), got {self.znear}"
            )


class Fragments(NamedTuple):
    """The composited (pixel, point) pairs of one image, grouped by pixel in runs that are front to
    back (one run per pixel and depth slab; a pixel's runs follow each other in depth order).

    `pix` is the row-major pixel index j * W + i, `run` the index of the fragment's run, `weight`
    the compositing weight alpha * T; `run_pix` / `run_len` the pixel and the number of fragments
    of each run, in order.
    `transmittance` [P] is the product of (1 - alpha) over each pixel's composited points (1 where
    none)."""

    pix: torch.Tensor  # [F] long
    run: torch.Tensor  # [F] int32 (int64 for huge clouds)
    point: torch.Tensor  # [F] int32 (int64 for huge clouds)
    z: torch.Tensor  # [F]
    weight: torch.Tensor  # [F]
    run_pix: torch.Tensor  # [R] long
    run_len: torch.Tensor  # [R] long
    transmittance: torch.Tensor  # [P]
    height: int
    width: int


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
    integer + 0.5) and camera z-depth (positive in front). `c2w` [4, 4] (or [3, 4]), `fovy`
    radians."""
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


def pixel_ray_norms(
    height: int, width: int, fovy, device=None, dtype=torch.float32
) -> torch.Tensor:
    """|d| [H, W] of the camera-space ray directions ((i+.5-W/2)/f, -(j+.5-H/2)/f, -1); a distance
    along the unit ray divided by it is the camera z-depth."""
    f = float(focal_from_fovy(height, float(fovy)))
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5 - 0.5 * width) / f
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5 - 0.5 * height) / f
    return torch.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)


def alpha_from_d2(d2: torch.Tensor) -> torch.Tensor:
    """Per-point alpha from the normalised squared distance d^2 / r^2 (algorithms.md D.4)."""
    return 1.0 - torch.sqrt(torch.clamp(ALPHA_DIST_SCALE * d2, ALPHA_MIN, 1.0))


# ------------------------------------------------------------------------- index primitives
#: on CPU, slabs are made small enough for 32-bit fragment keys (sorted 2x faster than 64-bit
#: ones) as long as they keep at least this many points
_MIN_KEY_SLAB = 16384
_UNSIGNED_KEYS = True  # 32-bit keys sorted as uint32 on CPU (off: int64 keys; tests compare both)
#: torch's CPU sort uses a stable LSD radix sort for integer keys from this length on (below it a
#: comparison sort, ~10x slower per element); shorter key arrays are padded up to it
_RADIX_MIN_LENGTH = 32768


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices (int64) of the True entries of a 1-D bool tensor. On CPU through numpy, whose
    flatnonzero is about 10x faster than torch.nonzero on the ~10^5-10^6 masks used here."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.contiguous().numpy()))
    return mask.nonzero().squeeze(1)


def _run_starts(sorted_values: torch.Tensor) -> torch.Tensor:
    """Indices (int64) where a run of equal values starts in a sorted non-empty 1-D tensor."""
    if sorted_values.device.type == "cpu":
        a = sorted_values.contiguous().numpy()
        return torch.from_numpy(np.concatenate(([0], np.flatnonzero(a[1:] != a[:-1]) + 1)))
    is_start = torch.ones(sorted_values.numel(), dtype=torch.bool, device=sorted_values.device)
    torch.ne(sorted_values[1:], sorted_values[:-1], out=is_start[1:])
    return is_start.nonzero().squeeze(1)


def _compress(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values[mask] for 1-D tensors (numpy's compress on CPU: ~6x faster than boolean indexing)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.compress(mask.contiguous().numpy(), values.contiguous().numpy()))
    return values[mask]


def _sort_distinct(key: torch.Tensor, unsigned: bool = False) -> torch.Tensor:
    """Ascending sort of a 1-D tensor of distinct integer keys (values only, so stability does not
    matter). On CPU numpy's sort (vectorised quicksort on AVX2/AVX-512 CPUs, 2-3x faster than
    torch's radix sort on these sizes and without its index array). `unsigned`: int32 keys whose
    bit patterns are to be ordered as uint32 (CPU only)."""
    if key.device.type == "cpu":
        a = key.contiguous().numpy()
        return torch.from_numpy(
            np.sort(a.view(np.uint32)).view(np.int32) if unsigned else np.sort(a)
        )
    return torch.sort(key).values


def _sort_int(key: torch.Tensor):
    """Stable ascending sort of a 1-D integer tensor -> (sorted keys, indices). On CPU a key array
    shorter than the radix threshold is padded with larger keys (which sort last) so that torch
    takes its radix path."""
    n = key.numel()
    if key.device.type == "cpu" and 1024 <= n < _RADIX_MIN_LENGTH:
        pad = key.new_full((_RADIX_MIN_LENGTH - n,), int(key.max()) + 1)
        keys, idx = torch.sort(torch.cat([key, pad]), stable=True)
        return keys[:n], idx[:n]
    return torch.sort(key, stable=True)


def _group_by(values: torch.Tensor, n_values: int) -> torch.Tensor:
    """A permutation that groups a 1-D tensor of integers in [0, n_values) by value, keeping the
    original order within a group (a stable argsort). On CPU, when value and position fit 32 bits,
    through one value sort of the distinct keys (value, position) as uint32 (~3x faster than torch's
    stable radix sort with its index array)."""
    n = values.numel()
    bits = max(int(n - 1).bit_length(), 1)
    if values.device.type == "cpu" and _UNSIGNED_KEYS and n_values << bits <= 2**32:
        key = (values.int() << bits) | torch.arange(n, dtype=torch.int32)
        return _sort_distinct(key, unsigned=True) & ((1 << bits) - 1)
    return _sort_int(values.int() if n_values < 2**31 else values)[1]


def _z_keys(z: torch.Tensor) -> torch.Tensor:
    """Integer keys ordered like positive z (IEEE bit patterns of positive floats sort like their
    values): int32 for float32/16 depths, int64 for float64."""
    if z.dtype == torch.float64:
        return z.contiguous().view(torch.int64)
    return z.float().contiguous().view(torch.int32)


def depth_order(
    u: torch.Tensor,
    v: torch.Tensor,
    z: torch.Tensor,
    width: int,
    height: int,
    radius: float,
    znear: float = 1e-3,
) -> torch.Tensor:
    """Indices of the points in front of the camera (z > znear) whose footprint of `radius` pixels
    may touch the (height x width) image, sorted by (z, index). Scaling u, v and the radius alike
    (the multi-scale rasteriser) keeps the set and the order, so one call serves every scale."""
    r = float(radius)
    keep = (
        (z > znear) & torch.isfinite(z) & (u > -r) & (u < width + r) & (v > -r) & (v < height + r)
    )
    ids = _nonzero(keep)
    zk = _z_keys(z.index_select(0, ids))
    if zk.dtype == torch.int64:  # float64 depths: 63-bit keys, a stable sort keeps ties by index
        return ids.index_select(0, _sort_int(zk)[1])
    # float32: the distinct keys (z bits, position) with the position in the low bits
    bits = max(int(ids.numel() - 1).bit_length(), 1)
    key = (zk.long() << bits) | torch.arange(ids.numel(), device=ids.device)
    return ids.index_select(0, _sort_distinct(key) & ((1 << bits) - 1))


def footprint_offsets(radius: float):
    """Pixel offsets (dj, di), relative to the pixel containing a point, whose centre can lie within
    `radius` of the point: 21 for 2 px, 9 for 1 px, 3 for 0.5 px (the window a point at any
    sub-pixel position needs; the exact distance test follows per point)."""
    r = float(radius)
    span = range(math.ceil(-0.5 - r), math.ceil(0.5 + r))  # |i + 0.5 - u| <= r for u in [c, c + 1)

    def nearest(k: int) -> float:  # the smallest |offset + 0.5 - frac| over frac in [0, 1)
        return 0.0 if k == 0 else abs(k) - 0.5

    return [(dj, di) for dj in span for di in span if nearest(di) ** 2 + nearest(dj) ** 2 <= r * r]


# --------------------------------------------------------------------------------- selection
@functools.lru_cache(maxsize=64)
def _footprint(radius: float, width: int, device: torch.device, dtype: torch.dtype):
    """Per (radius, image width, device, dtype), the constants of the splatting (cached: they are
    rebuilt for every image otherwise): the number of footprint pairs, the half window, the distinct
    offsets (int [S, 1] and float), the pairs grouped by row offset as (first pair, end pair, row,
    first column, end column) indices into the distinct offsets (pairs are ordered by (dj, di), so
    a row's columns are contiguous), and the linear pixel offset of every pair ([n_off, 1]
    int32)."""
    pairs = footprint_offsets(radius)
    span = sorted({d for p in pairs for d in p})
    span_t = torch.tensor(span, device=device, dtype=torch.int32)[:, None]
    groups = []
    for k, (dj, di) in enumerate(pairs):
        if groups and groups[-1][2] == span.index(dj) and groups[-1][4] == span.index(di):
            groups[-1][1] += 1
            groups[-1][4] += 1
        else:
            groups.append([k, k + 1, span.index(dj), span.index(di), span.index(di) + 1])
    pair_off = torch.tensor([p[0] * width + p[1] for p in pairs], device=device, dtype=torch.int32)[
        :, None
    ]
    return (
        len(pairs),
        max(abs(d) for d in span),
        span_t,
        span_t.to(dtype),
        tuple(map(tuple, groups)),
        pair_off,
    )


def _slab_count(
    st: _SlabState, n: int, depth_slabs, min_slab_points, max_fragments_per_chunk
) -> int:
    """Step 1 of :func:`select_fragments`: the number of depth slabs for `n` points."""
    n_slabs = max(
        min(int(depth_slabs), -(-n // max(int(min_slab_points), 1))),
        1,
        -(-n * st.n_off // max(int(max_fragments_per_chunk), 1)),
    )
    # on CPU, slabs small enough for 32-bit (pixel, position) keys, when not tiny
    if st.device.type == "cpu":
        per_key = 1 << max(32 - int(st.P - 1).bit_length(), 0)
        if per_key >= _MIN_KEY_SLAB:
            n_slabs = max(n_slabs, -(-n // per_key))
    return n_slabs


def _composite_slabs(st: _SlabState, us, vs, ci_all, cj_all, order, per_slab: int) -> List[tuple]:
    """Step 2 of :func:`select_fragments`: slab by slab, front to back, select the slab's points
    (`us`, `vs`, their pixel `ci_all`, `cj_all` and point index `order`, all in depth order), key
    and composite their fragments. Returns the parts (`_composite_slab`) of the slabs with any."""
    n = order.numel()
    parts: List[tuple] = []
    n_runs = 0  # runs of the slabs before
    rest: Optional[torch.Tensor] = None  # depth-order positions still to process (after the first)
    first = True
    while True:
        if first:  # the nearest points: a plain slice of the depth order
            sel, m = slice(0, min(per_slab, n)), min(per_slab, n)
            rest = torch.arange(m, n, device=st.device) if n > m else None
            uu, vv, ci, cj, ids = us[sel], vs[sel], ci_all[sel], cj_all[sel], order[sel]
        else:
            if rest is None:
                break
            rest = _cull_occluded(st, rest, ci_all, cj_all)
            if rest.numel() == 0:
                break
            sel, rest = rest[:per_slab], (rest[per_slab:] if rest.numel() > per_slab else None)
            uu, vv, ci, cj, ids = (t.index_select(0, sel) for t in (us, vs, ci_all, cj_all, order))
            m = sel.numel()
        key_s, shift, pix_mask = _slab_keys(st, uu, vv, ci, cj, m, first)
        if key_s.numel() > 0:
            part = _composite_slab(
                st, key_s, shift, pix_mask, uu, vv, ids, first, n_runs, order.dtype
            )
            parts.append(part)
            n_runs += part[4].numel()
        first = False
    return parts


def _cull_occluded(st: _SlabState, rest, ci_all, cj_all):
    """Occlusion culling (exact): the positions in `rest` whose point's footprint window still
    holds an open pixel (the others are dropped)."""
    reach = dilate_bool(st.open_px.view(st.h, st.w), st.half).view(-1)
    cell = cj_all.index_select(0, rest).clamp_(0, st.h - 1) * st.w + ci_all.index_select(
        0, rest
    ).clamp_(0, st.w - 1)
    return _compress(rest, reach.index_select(0, cell))


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
    order: Optional[torch.Tensor] = None,
    min_slab_points: int = 1,
) -> Fragments:
    """Per pixel, the `points_per_pixel` nearest points (by `z`, ties to the lower index) whose
    projection (u, v) lies within `radius` pixels of the pixel centre, with their compositing
    weights (see the module doc). The fragments come grouped by pixel in front-to-back runs (one
    run per pixel and depth slab, the slabs in depth order).

    `min_transmittance` > 0 stops compositing a pixel once its transmittance falls below it (the
    fragments behind are not returned); 0 returns the plain K nearest. `order` (from
    :func:`depth_order`) reuses the depth order computed once per camera. Up to `depth_slabs` depth
    slabs of at least `min_slab_points` points (more when `max_fragments_per_chunk` or, on CPU,
    32-bit fragment keys require) trade occlusion culling against a fixed cost per slab; the result
    does not depend on them (up to float rounding)."""
    device, dtype = u.device, z.dtype
    h, w, K, r = int(height), int(width), int(points_per_pixel), float(radius)
    eps = float(min_transmittance)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"min_transmittance must be in [0, 1), got {min_transmittance}")
    if order is None:
        order = depth_order(u, v, z, w, h, r, znear)
    n = order.numel()
    st = _SlabState.start(h, w, K, r, eps, device, dtype)
    us, vs = u.index_select(0, order), v.index_select(0, order)
    if n < 2**31:  # int32 point and run indices: the sparse products' index type on CPU (MKL LP64)
        order = order.int()
    # 1. up to `depth_slabs` slabs of at least `min_slab_points` points (a slab has a fixed cost of
    # some 60 tensor operations), more when the memory bound requires
    n_slabs = _slab_count(st, n, depth_slabs, min_slab_points, max_fragments_per_chunk)
    # points per slab (the last slabs may hold fewer, or be culled away)
    per_slab = -(-n // n_slabs)
    ci_all, cj_all = torch.floor(us).int(), torch.floor(vs).int()
    half = st.half
    st.interior = n == 0 or bool(  # no footprint window crosses the image border
        (ci_all.min() >= half)
        & (ci_all.max() < w - half)
        & (cj_all.min() >= half)
        & (cj_all.max() < h - half)
    )
    # 2. slab by slab, front to back: select, key, composite
    parts = _composite_slabs(st, us, vs, ci_all, cj_all, order, per_slab)
    # 3. each slab's fragments are grouped by pixel; a pixel reached in several slabs has one run
    # per slab, in depth order (the compositing sums runs, so no global re-sort is needed)
    if not parts:
        e = torch.zeros(0, device=device, dtype=torch.long)
        return Fragments(e, e, e, e.to(dtype), e.to(dtype), e, e, st.trans, h, w)
    pix, run, point, weight, run_pix, run_len = (
        (torch.cat(c) for c in zip(*parts)) if len(parts) > 1 else parts[0]
    )
    return Fragments(
        pix, run, point, z.index_select(0, point), weight, run_pix, run_len, st.trans, h, w
    )


@dataclass
class _SlabState:
    """What the slabs of one :func:`select_fragments` call share: the image, the footprint table,
    and per pixel the transmittance, the fragment count and whether it is still open."""

    h: int
    w: int
    K: int
    r2: float
    eps: float
    P: int
    device: torch.device
    dtype: torch.dtype
    n_off: int
    half: int
    span_t: torch.Tensor
    span_f: torch.Tensor
    groups: tuple
    pair_off: torch.Tensor
    trans: torch.Tensor
    count: torch.Tensor
    open_px: torch.Tensor  # fewer than K points and T >= eps
    inf: torch.Tensor
    slots: torch.Tensor
    k_shift: Optional[int]  # (run, slot) from a flat index by a shift when K is a power of two
    interior: bool = False

    @classmethod
    def start(cls, h, w, K, r, eps, device, dtype) -> "_SlabState":
        P = h * w
        n_off, half, span_t, span_f, groups, pair_off = _footprint(r, w, device, dtype)
        return cls(
            h,
            w,
            K,
            r * r,
            eps,
            P,
            device,
            dtype,
            n_off,
            half,
            span_t,
            span_f,
            groups,
            pair_off,
            trans=torch.ones(P, device=device, dtype=dtype),
            count=torch.zeros(P, device=device, dtype=torch.int32),
            open_px=torch.ones(P, device=device, dtype=torch.bool),
            inf=torch.tensor(float("inf"), device=device, dtype=dtype),
            slots=torch.arange(K, device=device),
            k_shift=K.bit_length() - 1 if K & (K - 1) == 0 else None,
        )


def _slab_keys(st: _SlabState, uu, vv, ci, cj, m: int, first: bool):
    """The slab's in-radius fragments as sorted distinct integer keys (pixel, depth order), with the
    key's shift and pixel mask."""
    device, dtype, w, h = st.device, st.dtype, st.w, st.h
    # in-radius test per footprint pair from squared distances per distinct column / row offset
    # ([len(span), m]; off-image: inf, needed only when a footprint crosses the border);
    # candidates are offset-major: c = o * m + j (j the depth order)
    dx2 = (st.span_f + ((ci.to(dtype) + 0.5) - uu)) ** 2
    dy2 = (st.span_f + ((cj.to(dtype) + 0.5) - vv)) ** 2
    if not st.interior:
        cols, rws = ci[None, :] + st.span_t, cj[None, :] + st.span_t
        dx2 = torch.where((cols >= 0) & (cols < w), dx2, st.inf)
        dy2 = torch.where((rws >= 0) & (rws < h), dy2, st.inf)
    keep = torch.empty((st.n_off, m), dtype=torch.bool, device=device)  # [n_off, m], by row group
    for k0, k1, jy, i0, i1 in st.groups:
        torch.le(dx2[i0:i1] + dy2[jy], st.r2, out=keep[k0:k1])
    keep = keep.view(-1)
    # one distinct integer key per fragment, (pixel, depth order) in its bits: sorting the keys
    # alone groups the fragments by pixel, front to back (ties in z went to the lower index)
    # (int32 when the in-image keys fit 31 bits; on CPU 32 bits as unsigned: the int32 arithmetic
    # wraps and the bit patterns are sorted as uint32; else int64. Off-image candidates may wrap
    # but were dropped by the in-radius test.)
    P = st.P
    shift = max(int(m - 1).bit_length(), 1)
    unsigned = 2**31 < P << shift <= 2**32 and device.type == "cpu" and _UNSIGNED_KEYS
    idt = torch.int32 if P << shift <= 2**31 or unsigned else torch.int64
    pix_mask = (1 << (32 - shift)) - 1 if unsigned else -1  # drops the sign extension of >>
    base_key = ((cj * w + ci).to(idt) << shift) | torch.arange(m, device=device, dtype=idt)
    keys = _compress((base_key[None, :] + (st.pair_off.to(idt) << shift)).view(-1), keep)
    if not first:  # drop the fragments of pixels that are already full
        keys = _compress(keys, st.open_px.index_select(0, (keys >> shift) & pix_mask))
    return _sort_distinct(keys, unsigned), shift, pix_mask


def _composite_slab(
    st: _SlabState,
    key_s,
    shift: int,
    pix_mask: int,
    uu,
    vv,
    ids,
    first: bool,
    n_runs: int,
    index_dtype,
):
    """Composite one slab's sorted fragments into the pixels' state; returns its part of the
    fragment list (pixel, run, point, weight, run pixel, run length)."""
    K, slots, w, dtype, eps = st.K, st.slots, st.w, st.dtype, st.eps
    nf = key_s.numel()
    pix_s = (key_s >> shift) & pix_mask
    j_s = key_s & ((1 << shift) - 1)
    starts = _run_starts(pix_s)  # one run per touched pixel
    seg_pix = pix_s.index_select(0, starts).long()
    n_seg = starts.numel()
    run = torch.diff(starts, append=starts.new_full((1,), nf))
    # per run a dense row of K slots: slot k holds the run's k-th fragment when it may still be
    # composited (k < K minus what the pixel already holds)
    base = None if first else st.count.index_select(0, seg_pix).long()
    limit = run.clamp(max=K) if first else torch.minimum(run, K - base)
    src = (starts[:, None] + slots[None, :]).clamp_(max=nf - 1).view(-1)
    j_tab = j_s.index_select(0, src)  # [n_seg * K] depth-order positions in the slab
    # 1 - alpha = sqrt(clamp(0.1 d^2 / r^2, ALPHA_MIN, 1)) of the table entries, d from the pixel
    # centre (the arithmetic of the test above); slots past a run's limit hold other fragments
    # and are never used (they come after the run's slots and only lower T further)
    row_c = torch.div(seg_pix, w, rounding_mode="floor")
    cx = (seg_pix - row_c * w).to(dtype)[:, None] + 0.5
    cy = row_c.to(dtype)[:, None] + 0.5
    ddx = cx - uu.index_select(0, j_tab).view(n_seg, K)
    ddy = cy - vv.index_select(0, j_tab).view(n_seg, K)
    one_minus_a = (
        ddy.mul_(ddy)
        .addcmul_(ddx, ddx)
        .mul_(ALPHA_DIST_SCALE / st.r2)
        .clamp_(ALPHA_MIN, 1.0)
        .sqrt_()
    )
    # front-to-back transmittance after each slot (non-increasing along a row)
    t_incl = torch.cumprod(one_minus_a, 1)
    if not first:
        t_incl.mul_(st.trans.index_select(0, seg_pix)[:, None])
    # composited: the first `limit` slots while the transmittance before them is >= eps (the
    # first slot always: its pixel is open)
    n_counted = torch.minimum(limit, (t_incl >= eps).sum(1) + 1) if eps > 0 else limit
    new_t = t_incl.gather(1, (n_counted - 1)[:, None])[:, 0]
    new_c = n_counted if first else base + n_counted
    st.trans.index_copy_(0, seg_pix, new_t)
    st.count.index_copy_(0, seg_pix, new_c.int())
    st.open_px.index_copy_(0, seg_pix, (new_c < K) & (new_t >= eps) if eps > 0 else new_c < K)
    # (run, slot)-major: by pixel, front to back
    out = _nonzero((slots[None, :] < n_counted[:, None]).view(-1))
    row = out >> st.k_shift if st.k_shift is not None else torch.div(out, K, rounding_mode="floor")
    point = ids.index_select(0, j_tab.index_select(0, out))
    t_after = t_incl.view(-1).index_select(0, out)
    # alpha T = T_before - T_after
    weight = t_after / one_minus_a.view(-1).index_select(0, out) - t_after
    return (
        seg_pix.index_select(0, row),
        (row + n_runs).to(index_dtype),
        point,
        weight,
        seg_pix,
        n_counted,
    )


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
    return select_fragments(
        u, v, z, height, width, radius, points_per_pixel, min_transmittance, znear, depth_slabs
    )


# -------------------------------------------------------------------------------- compositing
def residual_transmittance(frags: Fragments, min_transmittance: float) -> torch.Tensor:
    """T_res [P]: the transmittance left for the background, 0 once a pixel saturated."""
    t = frags.transmittance
    eps = float(min_transmittance)
    return torch.where(t >= eps, t, torch.zeros_like(t)) if eps > 0 else t


class _CompositeScales(torch.autograd.Function):
    """Per scale a pixel-major image batch [B, P, C] = W_i @ features + res_i b^T for each
    camera image i, with W_i [P, N] its (constant) sparse fragment weights and res_i [P] its
    residual transmittance. Forward: the sparse product over the runs of all images as one weighted
    bag sum per run (`embedding_bag`, rows of W in CSR form), scattered into background images.
    Backward: the transposed product as one weighted bag sum per point over the gathered run
    gradients (a point without fragments gets exact zeros) and mat-vecs for the background.

    `layout[k][b]` = (first run, end run, first pixel, end pixel) of camera b at scale k in the
    concatenated runs / residual transmittances."""

    @staticmethod
    def forward(ctx, features, background, upix, crow, row, point, weight, res, layout):
        n_points, n_ch = features.shape
        comp = None
        if point.numel():
            # [runs, C]: a weighted bag sum per run (embedding_bag runs FBGEMM's kernel on CPU,
            # ~1.5x faster than the CSR product; the same sums)
            comp = torch.nn.functional.embedding_bag(
                point,
                features,
                crow,
                mode="sum",
                per_sample_weights=weight,
                include_last_offset=True,
            )
        outs = []
        for per_cam in layout:  # pixel-major [B, P, C]: channels-last images
            out = features.new_empty((len(per_cam), per_cam[0][3] - per_cam[0][2], n_ch))
            for img, (r0, r1, p0, p1) in zip(out, per_cam):
                if background is not None:
                    torch.outer(res[p0:p1], background, out=img)
                else:
                    img.zero_()
                if r1 > r0:
                    img.index_add_(0, upix[r0:r1], comp[r0:r1])
            outs.append(out)
        ctx.save_for_backward(upix, row, point, weight, res)
        ctx.layout, ctx.n_points, ctx.has_background = layout, n_points, background is not None
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        upix, row, point, weight, res = ctx.saved_tensors
        n_ch = next((g.shape[2] for g in grads if g is not None), None)
        if n_ch is None:  # no output was used
            return (None,) * 9
        gf = gb = None
        gathered = res.new_empty((upix.numel(), n_ch))  # the gradient of every run's pixel
        gb_parts = []
        for g, per_cam in zip(grads, ctx.layout):
            for b, (r0, r1, p0, p1) in enumerate(per_cam):
                if g is None:
                    gathered[r0:r1].zero_()
                    continue
                torch.index_select(g[b], 0, upix[r0:r1], out=gathered[r0:r1])
                gb_parts.append(res[p0:p1] @ g[b])
        if ctx.needs_input_grad[0]:
            if (
                point.numel()
            ):  # W^T by rows: fragments grouped by point (empty bags give exact zeros)
                perm = _group_by(point, ctx.n_points)
                crow_t = torch.zeros(ctx.n_points + 1, dtype=row.dtype, device=point.device)
                torch.cumsum(
                    torch.bincount(point, minlength=ctx.n_points),
                    0,
                    dtype=row.dtype,
                    out=crow_t[1:],
                )
                gf = torch.nn.functional.embedding_bag(
                    row.index_select(0, perm),
                    gathered,
                    crow_t,
                    mode="sum",
                    per_sample_weights=weight.index_select(0, perm),
                    include_last_offset=True,
                )
            else:
                gf = res.new_zeros((ctx.n_points, n_ch))
        if ctx.has_background and ctx.needs_input_grad[1]:
            gb = torch.stack(gb_parts).sum(0) if gb_parts else res.new_zeros(n_ch)
        return gf, gb, None, None, None, None, None, None, None


def composite_scales(
    features: torch.Tensor,
    frags: Sequence[Sequence[Fragments]],
    background: Optional[torch.Tensor] = None,
    min_transmittance: float = 1e-4,
) -> List[torch.Tensor]:
    """sum_k w_k f_k + T_res b per pixel for `frags[scale][camera]`: one batch [B, C, h, w] per
    scale, in channels-last memory (the layout the compositing writes fastest and the U-Net's
    convolutions run fastest on CPU). `features` [N, C]; differentiable in `features` and
    `background` [C] (or None: uncovered pixels are 0). Each image's fragments must be grouped by
    pixel in runs (as :func:`select_fragments` returns them); one sparse product serves all
    images."""
    dt = features.dtype
    flat = [f for per_cam in frags for f in per_cam]
    cat = (lambda xs: torch.cat(xs)) if len(flat) > 1 else (lambda xs: xs[0])
    point, weight = cat([f.point for f in flat]), cat([f.weight for f in flat]).to(dt)
    run_pix, run_len = cat([f.run_pix for f in flat]), cat([f.run_len for f in flat])
    res = cat([residual_transmittance(f, min_transmittance) for f in flat]).to(dt)
    crow = torch.zeros(run_len.numel() + 1, dtype=point.dtype, device=point.device)
    torch.cumsum(run_len, 0, dtype=point.dtype, out=crow[1:])
    layout, rows, r0, p0 = (
        [],
        [],
        0,
        0,
    )  # runs never span two images: each image's runs are consecutive
    for per_cam in frags:
        layout.append([])
        for f in per_cam:
            r1, p1 = r0 + f.run_pix.numel(), p0 + f.height * f.width
            layout[-1].append((r0, r1, p0, p1))
            rows.append(f.run + r0 if r0 else f.run)
            r0, p0 = r1, p1
    row = cat(rows)  # the run (sparse row) of every fragment
    bg = None if background is None else background.reshape(-1).to(dt)
    outs = _CompositeScales.apply(features, bg, run_pix, crow, row, point, weight, res, layout)
    return [
        o.view(o.shape[0], per_cam[0].height, per_cam[0].width, o.shape[2]).permute(0, 3, 1, 2)
        for o, per_cam in zip(outs, frags)
    ]


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
    feats = features.contiguous()  # [N, C]: the dense side of the sparse products
    frags: List[List[Fragments]] = [[] for _ in sizes]  # [scale][camera]
    for b in range(B):  # cameras; everything inside is vectorised over points
        with torch.no_grad():
            u, v, z = project_points(pts, c2w[b], fov[b], height, width)
            # the same at every scale
            order = depth_order(u, v, z, width, height, s.radius_px, s.znear)
            for k, (h, w) in enumerate(sizes):
                scale = h / float(height)
                r = s.radius_px * scale
                # occlusion culling pays off for large footprints only (more than 9 candidate
                # pixels)
                slabs = s.depth_slabs if len(footprint_offsets(r)) > 9 else 1
                frags[k].append(
                    select_fragments(
                        u * scale,
                        v * scale,
                        z,
                        h,
                        w,
                        r,
                        s.points_per_pixel,
                        s.min_transmittance,
                        s.znear,
                        slabs,
                        s.max_fragments_per_chunk,
                        order,
                        s.min_slab_points,
                    )
                )
    images = composite_scales(feats, frags, background, s.min_transmittance)
    outs: List[ScaleOutput] = []
    for k, (h, w) in enumerate(sizes):
        with torch.no_grad():
            cov = (
                torch.stack([1.0 - f.transmittance for f in frags[k]])
                .view(B, 1, h, w)
                .to(features.dtype)
            )
            dep = (
                torch.stack(
                    [
                        torch.zeros_like(f.transmittance).index_add_(0, f.pix, f.weight * f.z)
                        for f in frags[k]
                    ]
                )
                .view(B, 1, h, w)
                .to(features.dtype)
            )
        outs.append(ScaleOutput(images[k], cov, dep))
    return outs
