"""Textured point cloud from a coarse 3D model (Make-It-3D refine stage, paper §3.3 "textured point
cloud building"; algorithms.md D.1-D.2; decision 17).

Works from ANY renderer: a callable ``render_fn(camera: ViewCamera) -> mapping`` returning

* ``rgb``      [H, W, 3] colours in [0, 1] (albedo shading, as Make-It-3D renders its NeRF),
* ``depth``    [H, W] (or [H, W, 1], [1, H, W, 1]) either the camera z-depth (``depth_type="z"``)
  or the distance along the unit-length pixel ray (``depth_type="distance"``; threestudio's NeRF
  renderers return the opacity-WEIGHTED distance: divide it by the opacity first, as
  :class:`hifi123.threestudio_ext.systems.makeit3d_refine.ThreestudioRenderFn` does),
* ``opacity``  [H, W] accumulated opacity in [0, 1],

as numpy arrays or torch tensors, for a threestudio camera (see :class:`ViewCamera`).

The build, all at `resolution` (Make-It-3D: 800):

1. **Reference view.** Pixels where the render is opaque (opacity > 0.9, M3D's mask) and the
   reference image's alpha is set, eroded (M3D: 11x11, 2 iterations at 800, i.e. 10 px), are
   back-projected with the rendered depth, z-buffered (a point more than a small slope tolerance
   behind the nearest point within `zbuffer_radius_px` of its pixel is dropped) and coloured from
   the REFERENCE IMAGE (not the render). They are "reference-visible".
2. **Views all around** (decision 17: 360°; default 3 elevations x 12 azimuths around the
   reference, the reference view itself excluded). For each view in order: its opaque mask,
   eroded (M3D 11x11 once: 5 px) and minus depth discontinuities (M3D: a dilated Canny edge map of
   the depth; here: neighbour depth steps steeper than `depth_edge_slope_deg`, dilated); then
   **coverage**: every point built so far (reference AND earlier views, the paper's iterative
   scheme, fixing the official code which checks the reference points only and so duplicates
   surface seen by several novel views) that lies on the view's visible surface (depth test against
   the view's rendered depth, :func:`visible_in_view`) is splatted into the view with
   `coverage_radius_px`; the pixels it reaches are covered. New points come only from uncovered
   mask pixels; they are z-buffered and coloured from that view's render.
3. Novel points that the reference camera sees (inside its mask, depth consistent under the strict
   test) are flagged reference-visible and recoloured from the reference image (the better
   texture there; Make-It-3D instead drops such points).
4. **Budget:** more than `max_points` points keep a seeded random subset (novel points first go,
   reference points are kept while they fit; M3D: 10^6 novel points).

Depth tolerances are relative so that they do not depend on the object's scale: two depths agree
when they differ by at most max(rel * z, r * (z / f) * tan(max_slope)), i.e. a relative slack plus
the depth change across r pixels of a surface inclined by up to `max_slope_deg` to the view.

Returns a :class:`PointCloud`: positions [N, 3], colours [N, 3], reference-visible flags [N] and
the source view index [N] (0 = reference, i = i-th entry of `cameras`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import ViewCamera
from ..morphology import dilate, erode, scale_px
from .point_raster import pixel_ray_norms, project_points, rasterize_fragments

DEPTH_TYPES = ("z", "distance")


# ------------------------------------------------------------------------------------- config
@dataclass
class PointCloudConfig:
    """Settings of :func:`build_point_cloud`. Pixel amounts marked "@800" are given at
    `pixel_reference_resolution` (800, Make-It-3D's) and scaled to `resolution`."""

    resolution: int = 800  # render size of every build view (M3D --H/--W 800)
    elevations_deg: Sequence[float] = (-10.0, 0.0, 10.0)  # M3D theta in {100, 90, 80} deg
    n_azimuths: int = 12  # per elevation, evenly over 360 deg from the reference (decision 17)
    distance: Optional[float] = None  # None: the reference camera's distance
    fovy_deg: Optional[float] = None  # None: the reference camera's FOV (M3D 20 deg)
    opacity_threshold: float = 0.9  # mask = opacity > 0.9 (M3D utils.py:695-731)
    reference_erosion_px: float = 10.0  # @800: 11x11 kernel, 2 iterations (M3D)
    novel_erosion_px: float = 5.0  # @800: 11x11 kernel, 1 iteration (M3D)
    depth_edge_slope_deg: float = 85.0  # our depth-edge detector (M3D: Canny(10, 10) on depth)
    depth_edge_dilation_px: float = 5.0  # @800: the edge map dilated 11x11 (M3D)
    # pixels at `resolution`: a visible existing point covers this disc
    coverage_radius_px: float = 1.0
    coverage_erosion_px: float = 0.0  # @800; M3D erodes coverage 15x15 (7 px); 0 = no re-adding
    zbuffer_radius_px: float = 1.0  # pixels at `resolution`
    depth_tolerance: float = 0.005  # relative slack of "same surface" tests on smooth surfaces
    max_slope_deg: float = 80.0  # surfaces inclined up to this still count as one surface
    reference_visible_erosion_px: float = 2.0  # @800: novel points near the silhouette stay novel
    recolor_reference_visible: bool = True  # novel points the reference sees take its colours
    max_points: int = 1_000_000  # budget (M3D: 10^6 novel points)
    seed: int = 0
    pixel_reference_resolution: int = 800

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {self.resolution}")
        if self.n_azimuths < 0:
            raise ValueError("n_azimuths must be >= 0")
        if self.max_points < 1:
            raise ValueError("max_points must be >= 1")

    def px(self, value_at_800: float) -> int:
        """A pixel amount given @800 at `resolution` (rounded; 0 stays 0)."""
        return scale_px(value_at_800, self.resolution, self.pixel_reference_resolution)


def build_cameras(reference: ViewCamera, cfg: PointCloudConfig) -> List[ViewCamera]:
    """The 360° build views: every elevation x `n_azimuths` azimuths starting at the reference
    azimuth, minus the reference view itself; ordered by azimuth distance from the reference (front
    first), then elevation, so nearby views are filled before the back."""
    dist = cfg.distance if cfg.distance is not None else reference.distance
    fovy = cfg.fovy_deg if cfg.fovy_deg is not None else reference.fovy_deg
    if not math.isfinite(dist):
        dist = float(np.linalg.norm(np.asarray(reference.c2w)[:3, 3]))
    az0 = reference.azimuth_deg if math.isfinite(reference.azimuth_deg) else 0.0
    el0 = reference.elevation_deg if math.isfinite(reference.elevation_deg) else 0.0
    views = []
    for k in range(cfg.n_azimuths):
        rel = 360.0 * k / cfg.n_azimuths
        rel = rel - 360.0 if rel > 180.0 else rel
        for el in cfg.elevations_deg:
            if k == 0 and abs(float(el) - el0) < 1e-6:
                continue  # the reference view itself
            views.append((abs(rel), rel, float(el)))
    views.sort(key=lambda t: (t[0], -t[1], t[2]))
    return [ViewCamera.orbit(el, az0 + rel, dist, fovy, cfg.resolution) for _, rel, el in views]


# ------------------------------------------------------------------------------ result object
@dataclass
class PointCloud:
    positions: torch.Tensor  # [N, 3] world
    colors: torch.Tensor  # [N, 3] in [0, 1]
    reference_visible: torch.Tensor  # [N] bool
    source_view: torch.Tensor  # [N] long: 0 = reference, i = cameras[i - 1]
    cameras: List[ViewCamera] = field(default_factory=list)  # the build views (reference excluded)
    stats: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def to_numpy(self) -> Dict[str, np.ndarray]:
        return {
            "positions": self.positions.detach().cpu().numpy().astype(np.float32),
            "colors": self.colors.detach().cpu().numpy().astype(np.float32),
            "reference_visible": self.reference_visible.detach().cpu().numpy().astype(bool),
            "source_view": self.source_view.detach().cpu().numpy().astype(np.int64),
        }

    def save_npz(self, path: str) -> str:
        np.savez(path, **self.to_numpy())
        return path


# ---------------------------------------------------------------------------- image helpers
def _as_map(x, device=None, channels: Optional[int] = None) -> torch.Tensor:
    """numpy/torch [H, W], [H, W, 1], [1, H, W, C], ... -> float tensor [H, W] (channels None) or
    [H, W, C]."""
    t = x.detach() if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    t = t.float() if device is None else t.to(device).float()
    want = 2 if channels is None else 3
    if channels is None and t.dim() >= 3 and t.shape[-1] == 1:
        t = t[..., 0]
    while t.dim() > want and t.shape[0] == 1:
        t = t[0]
    if t.dim() != want or (channels is not None and t.shape[-1] < channels):
        raise ValueError(
            f"expected a map [H, W{'' if channels is None else f', {channels}'}], got "
            f"{tuple(t.shape)}"
        )
    return t


def _resize(img: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """[H, W] or [H, W, C] float -> resized (antialiased when shrinking)."""
    if img.shape[0] == height and img.shape[1] == width:
        return img
    x = img[None, None] if img.dim() == 2 else img.permute(2, 0, 1)[None]
    shrink = height < img.shape[0] or width < img.shape[1]
    y = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=shrink)
    return y[0, 0] if img.dim() == 2 else y[0].permute(1, 2, 0)


def depth_edges(
    z: torch.Tensor, mask: torch.Tensor, focal: float, slope_deg: float
) -> torch.Tensor:
    """Pixels of `mask` next to a 4-neighbour (also in the mask) whose depth differs by more than a
    surface inclined `slope_deg` to the view would give: |dz| > tan(slope) * z / f."""
    tan = math.tan(math.radians(slope_deg))
    edge = torch.zeros_like(mask)
    for dim in (0, 1):
        a = z.narrow(dim, 0, z.shape[dim] - 1)
        b = z.narrow(dim, 1, z.shape[dim] - 1)
        both = mask.narrow(dim, 0, z.shape[dim] - 1) & mask.narrow(dim, 1, z.shape[dim] - 1)
        step = both & ((a - b).abs() > tan * torch.minimum(a, b) / focal)
        edge.narrow(dim, 0, z.shape[dim] - 1).logical_or_(step)
        edge.narrow(dim, 1, z.shape[dim] - 1).logical_or_(step)
    return edge & mask


def depth_tolerance(
    z: torch.Tensor, radius_px: float, focal: float, cfg: PointCloudConfig
) -> torch.Tensor:
    """Largest depth difference still counted as the same surface (module doc)."""
    slope = float(radius_px) * math.tan(math.radians(cfg.max_slope_deg)) / focal
    return torch.clamp(z * max(cfg.depth_tolerance, slope), min=0.0)


def backproject(z: torch.Tensor, pixels: torch.Tensor, camera: ViewCamera) -> torch.Tensor:
    """World points of flat pixel indices `pixels` with camera z-depths `z` (pixel centres)."""
    H, W, f = camera.height, camera.width, camera.focal
    j = torch.div(pixels, W, rounding_mode="floor").to(z.dtype)
    i = (pixels % W).to(z.dtype)
    d = torch.stack([(i + 0.5 - 0.5 * W) / f, -(j + 0.5 - 0.5 * H) / f, -torch.ones_like(i)], -1)
    m = np.asarray(camera.c2w, dtype=np.float64)
    return torch.stack(
        [
            z * (d[:, 0] * m[k, 0] + d[:, 1] * m[k, 1] + d[:, 2] * m[k, 2]) + m[k, 3]
            for k in range(3)
        ],
        -1,
    )


# ------------------------------------------------------------------------ z-buffer, coverage
def zbuffer_filter(
    points: torch.Tensor, camera: ViewCamera, radius_px: float, cfg: PointCloudConfig
) -> torch.Tensor:
    """Keep-mask [N]: a point survives when it is not farther than the depth tolerance behind the
    nearest point covering its own pixel (splat radius `radius_px`). Exactly coincident points along
    a ray keep the nearest ones only up to the tolerance."""
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=points.device)
    H, W = camera.height, camera.width
    c2w = camera.c2w_tensor(points.device, points.dtype)
    frags = rasterize_fragments(
        points, c2w, camera.fovy, H, W, max(radius_px, 0.5), points_per_pixel=1
    )
    zmin = torch.full((H * W,), float("inf"), device=points.device, dtype=points.dtype)
    zmin[frags.pix] = frags.z.to(points.dtype)
    u, v, z = project_points(points, c2w, camera.fovy, H, W)
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    i = torch.floor(u).long().clamp(0, W - 1)
    j = torch.floor(v).long().clamp(0, H - 1)
    near = torch.where(inside, zmin[j * W + i], torch.full_like(z, float("inf")))
    return z <= near + depth_tolerance(z, radius_px, camera.focal, cfg)


def visible_in_view(
    points: torch.Tensor,
    camera: ViewCamera,
    depth_z: torch.Tensor,
    mask: torch.Tensor,
    cfg: PointCloudConfig,
    strict: bool = False,
):
    """Which `points` lie on the visible surface of a view (`depth_z` camera z, `mask` its opaque
    pixels). A point projecting to (u, v) is compared with the 2x2 pixel centres around it:

    * all four in the mask and on one surface (depths within a `max_slope_deg` slope across the
      diagonal): the inverse depth interpolated bilinearly (exact on planes) matches the point's z
      within the relative `depth_tolerance`; or
    * some masked corner matches (this catches silhouettes and depth edges) within the slope
      tolerance of the 1.41 px to it (`strict=False`, used for coverage: an existing point at a
      silhouette still covers it) or within the relative tolerance only (`strict=True`, used for
      the reference-visible flags: grazing surfaces hidden by a few pixels' depth do not count).

    Returns (visible [N] bool, u, v)."""
    H, W = camera.height, camera.width
    u, v, z = project_points(
        points, camera.c2w_tensor(points.device, points.dtype), camera.fovy, H, W
    )
    inside = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (z > 0)
    x, y = (u - 0.5).clamp(0, W - 1), (v - 0.5).clamp(0, H - 1)
    i0 = torch.floor(x).long().clamp(0, max(W - 2, 0))
    j0 = torch.floor(y).long().clamp(0, max(H - 2, 0))
    fx, fy = (x - i0).clamp(0, 1), (y - j0).clamp(0, 1)
    i1, j1 = (i0 + 1).clamp_max(W - 1), (j0 + 1).clamp_max(H - 1)
    corners = [(j0, i0), (j0, i1), (j1, i0), (j1, i1)]
    ds = torch.stack([depth_z[jj, ii] for jj, ii in corners])  # [4, N]
    ms_ = torch.stack([mask[jj, ii] for jj, ii in corners])
    f = camera.focal
    lo, hi = ds.min(0).values, ds.max(0).values
    smooth = (
        ms_.all(0)
        & (lo > 0)
        & (hi <= lo * (1.0 + math.sqrt(2.0) * math.tan(math.radians(cfg.max_slope_deg)) / f))
    )
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    d_bil = 1.0 / (w / ds.clamp_min(1e-12)).sum(0)
    on_smooth = (z - d_bil).abs() <= cfg.depth_tolerance * z
    gap = torch.where(ms_, (z[None] - ds).abs(), torch.full_like(ds, float("inf"))).min(0).values
    tol = cfg.depth_tolerance * z if strict else depth_tolerance(z, math.sqrt(2.0), f, cfg)
    vis = inside & ((smooth & on_smooth) | (gap <= tol))
    return vis, u, v


def coverage_mask(
    points: torch.Tensor,
    camera: ViewCamera,
    depth_z: torch.Tensor,
    mask: torch.Tensor,
    cfg: PointCloudConfig,
) -> torch.Tensor:
    """[H, W] bool: pixels within `coverage_radius_px` of the projection of an existing point that
    lies on the view's visible surface (:func:`visible_in_view`), i.e. surface the cloud already
    has."""
    H, W = camera.height, camera.width
    covered = torch.zeros((H, W), dtype=torch.bool, device=depth_z.device)
    if points.shape[0] == 0:
        return covered
    vis, _, _ = visible_in_view(points, camera, depth_z, mask, cfg)
    if not bool(vis.any()):
        return covered
    c2w = camera.c2w_tensor(points.device, points.dtype)
    frags = rasterize_fragments(
        points[vis], c2w, camera.fovy, H, W, cfg.coverage_radius_px, points_per_pixel=1
    )
    covered.view(-1)[frags.pix] = True
    return covered


# ------------------------------------------------------------------------------ the builder
RenderFn = Callable[[ViewCamera], Mapping[str, Any]]


def _render(render_fn: RenderFn, camera: ViewCamera, depth_type: str, device=None):
    out = render_fn(camera)
    for key in ("rgb", "depth", "opacity"):
        if key not in out:
            raise KeyError(f"render_fn must return 'rgb', 'depth' and 'opacity'; missing {key!r}")
    rgb = _as_map(out["rgb"], device, channels=3)[..., :3]
    depth = _as_map(out["depth"], rgb.device)
    opacity = _as_map(out["opacity"], rgb.device)
    H, W = camera.height, camera.width
    if rgb.shape[:2] != (H, W) or depth.shape != (H, W) or opacity.shape != (H, W):
        raise ValueError(
            f"render_fn returned rgb {tuple(rgb.shape)}, depth {tuple(depth.shape)}, opacity "
            f"{tuple(opacity.shape)} for a {H}x{W} camera"
        )
    if depth_type == "distance":
        depth = depth / pixel_ray_norms(H, W, camera.fovy, depth.device, depth.dtype)
    return rgb, depth, opacity


def _sample_bilinear(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """img [H, W, C] at continuous pixel coordinates (centres at +0.5), border-clamped."""
    H, W = img.shape[:2]
    grid = torch.stack([u / W * 2 - 1, v / H * 2 - 1], -1).view(1, 1, -1, 2).to(img.dtype)
    out = F.grid_sample(
        img.permute(2, 0, 1)[None],
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out[0, :, 0].T


@dataclass
class _Reference:
    """What every view of the build needs of the reference view (at the build resolution)."""

    camera: ViewCamera
    depth_z: torch.Tensor  # [R, R] rendered z-depth
    image: torch.Tensor  # [R, R, 3] the reference image in [0, 1]
    visible: torch.Tensor  # [R, R] bool: its mask for the reference-visibility test


def _reference_points(render_fn, ref_cam, reference_rgb, reference_mask, cfg, depth_type, device):
    """Step 1: (the reference, [N] pixel indices, [N, 3] points): the opaque and masked pixels of
    the reference view, eroded, back-projected with the rendered depth and z-buffered."""
    R = cfg.resolution
    _, ref_z, ref_op = _render(render_fn, ref_cam, depth_type, device)
    dev = ref_z.device
    ref_img = _resize(_as_map(reference_rgb, dev, channels=3)[..., :3], R, R).clamp(0, 1)
    ref_vis = ref_op > cfg.opacity_threshold
    if reference_mask is not None:
        m = _as_map(reference_mask, dev)
        ref_vis &= _resize(m.float() if m.dtype == torch.bool else m, R, R) > 0.5
    ref_mask = erode(ref_vis, cfg.px(cfg.reference_erosion_px))
    pix = ref_mask.reshape(-1).nonzero().squeeze(1)
    pts = backproject(ref_z.reshape(-1)[pix], pix, ref_cam)
    keep = zbuffer_filter(pts, ref_cam, cfg.zbuffer_radius_px, cfg)
    vis_mask = erode(ref_vis, cfg.px(cfg.reference_visible_erosion_px))
    return _Reference(ref_cam, ref_z, ref_img, vis_mask), pix[keep], pts[keep]


def _novel_view_points(render_fn, cam, depth_type, dev, existing, ref: _Reference, cfg):
    """Steps 2-3 for one view: ([N, 3] new points, [N, 3] colours, [N] reference-visible flags,
    the view's stats): its eroded mask minus depth edges and minus what `existing` covers,
    back-projected and z-buffered, coloured from its render (from the reference where seen)."""
    rgb, z, op = _render(render_fn, cam, depth_type, dev)
    mask = erode(op > cfg.opacity_threshold, cfg.px(cfg.novel_erosion_px))
    edges = depth_edges(z, op > cfg.opacity_threshold, cam.focal, cfg.depth_edge_slope_deg)
    mask &= ~dilate(edges, cfg.px(cfg.depth_edge_dilation_px))
    opaque = op > cfg.opacity_threshold
    covered = coverage_mask(existing, cam, z, opaque, cfg)
    if cfg.coverage_erosion_px > 0:
        covered = erode(covered, cfg.px(cfg.coverage_erosion_px))
    new = mask & ~covered
    pix = new.reshape(-1).nonzero().squeeze(1)
    pts = backproject(z.reshape(-1)[pix], pix, cam)
    keep = zbuffer_filter(pts, cam, cfg.zbuffer_radius_px, cfg)
    pix, pts = pix[keep], pts[keep]
    col = rgb.reshape(-1, 3)[pix].clamp(0, 1)
    flag = _flag_reference_visible(pts, col, ref, cfg)
    stats = {
        "elevation_deg": cam.elevation_deg,
        "azimuth_deg": cam.azimuth_deg,
        "mask": int(mask.sum()),
        "covered": int((mask & covered).sum()),
        "added": int(len(pts)),
        "reference_visible": int(flag.sum()),
    }
    return pts, col, flag, stats


def _flag_reference_visible(pts, col, ref: _Reference, cfg) -> torch.Tensor:
    """Step 3: [N] bool, the novel points the reference camera sees (strict test); with
    `recolor_reference_visible` their colours `col` are resampled from the reference image."""
    flag = torch.zeros(len(pts), dtype=torch.bool, device=ref.depth_z.device)
    if len(pts):
        flag, u, v = visible_in_view(pts, ref.camera, ref.depth_z, ref.visible, cfg, strict=True)
        if cfg.recolor_reference_visible and bool(flag.any()):
            col[flag] = _sample_bilinear(ref.image, u[flag], v[flag]).to(col.dtype)
    return flag


def _apply_budget(positions, colors, flags, sources, cfg, dev):
    """Step 4: at most `max_points` points, a seeded random subset in the original order:
    reference points are kept while they fit, the novel points fill the rest."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    ref_ids = (sources == 0).nonzero().squeeze(1).cpu()
    nov_ids = (sources != 0).nonzero().squeeze(1).cpu()
    if len(ref_ids) >= cfg.max_points:
        chosen = ref_ids[torch.randperm(len(ref_ids), generator=gen)[: cfg.max_points]]
    else:
        take = cfg.max_points - len(ref_ids)
        chosen = torch.cat([ref_ids, nov_ids[torch.randperm(len(nov_ids), generator=gen)[:take]]])
    chosen = chosen.sort().values.to(dev)
    return positions[chosen], colors[chosen], flags[chosen], sources[chosen]


def build_point_cloud(
    render_fn: RenderFn,
    reference_camera: ViewCamera,
    reference_rgb,
    reference_mask=None,
    cfg: Optional[PointCloudConfig] = None,
    depth_type: str = "z",
    cameras: Optional[Sequence[ViewCamera]] = None,
    device=None,
    log: Optional[Callable[[str], None]] = None,
) -> PointCloud:
    """Build the textured point cloud (module doc). `reference_rgb` [H, W, 3] in [0, 1] (any size,
    resized to the build resolution), `reference_mask` [H, W] (alpha > 0.5 when given as floats;
    None = the render's mask only). `cameras` overrides the 360° views of :func:`build_cameras`."""
    cfg = cfg or PointCloudConfig()
    if depth_type not in DEPTH_TYPES:
        raise ValueError(f"depth_type must be one of {DEPTH_TYPES}, got {depth_type!r}")
    R = cfg.resolution
    ref_cam = reference_camera.resized(R)
    views = list(cameras) if cameras is not None else build_cameras(reference_camera, cfg)
    views = [c if (c.height, c.width) == (R, R) else c.resized(R) for c in views]

    # ---- 1. reference view: rendered depth, reference colours
    ref, pix, pts = _reference_points(
        render_fn, ref_cam, reference_rgb, reference_mask, cfg, depth_type, device
    )
    dev = ref.depth_z.device
    positions = [pts]
    colors = [ref.image.reshape(-1, 3)[pix]]
    flags = [torch.ones(len(pts), dtype=torch.bool, device=dev)]
    sources = [torch.zeros(len(pts), dtype=torch.long, device=dev)]
    stats: Dict[str, Any] = {"reference": int(len(pts)), "views": []}
    if log:
        log(f"reference view: {len(pts)} points")

    # ---- 2. the views all around: only what no existing point covers
    # ---- 3. (in each view) novel points the reference camera sees
    for vi, cam in enumerate(views, start=1):
        pts, col, flag, view_stats = _novel_view_points(
            render_fn, cam, depth_type, dev, torch.cat(positions), ref, cfg
        )
        positions.append(pts)
        colors.append(col)
        flags.append(flag)
        sources.append(torch.full((len(pts),), vi, dtype=torch.long, device=dev))
        stats["views"].append(view_stats)
        if log:
            log(
                f"view {vi}/{len(views)} (elev {cam.elevation_deg:+.0f}, "
                f"azim {cam.azimuth_deg:+.0f}): {view_stats['mask']} mask px, "
                f"{view_stats['covered']} covered, {len(pts)} new points"
            )

    cloud = torch.cat(positions), torch.cat(colors), torch.cat(flags), torch.cat(sources)
    # ---- 4. budget
    stats["before_budget"] = len(cloud[0])
    if len(cloud[0]) > cfg.max_points:
        cloud = _apply_budget(*cloud, cfg, dev)
    stats["points"] = int(len(cloud[0]))
    return PointCloud(*cloud, views, stats)
