"""A procedural synthetic sample object, rendered by our own (pure numpy) code.

Run ``python -m hifi123.sample.make_sample --out custom/hifi123/assets`` to (re)generate the
assets.  The output is deterministic: every run writes bit-identical files.  Only IEEE
correctly-rounded element-wise operations (+ - * / sqrt, min/max, floor) are applied to arrays;
transcendental functions are only evaluated on scalars (camera angles), matrix products are
written out element by element (no BLAS), and the noise uses an integer hash (no RNG stream).

The object
----------
A toy made of analytic primitives, centred at the origin, inside a sphere of radius ~0.54
(height 0.80 along world +z, i.e. ~60% of the frame height in the reference view):

* a blue rounded box (the base) with white diagonal stripes, brighter towards +y;
* a green post (capped cylinder) with dark horizontal bands;
* a red / orange 3D-checkered ball on top of the post;
* a small ring (torus, axis along world x) standing on the base at the +y side, with a
  yellow-to-purple vertical gradient.

The texture and the layout are not left-right symmetric, so novel views differ.
:func:`sample_sdf` is the exact signed distance outside the object (the union of exact primitive
SDFs; a conservative bound inside, exact on the surface), :func:`sample_albedo` its colour.

Conventions (threestudio's)
---------------------------
* World frame: right-handed, z-up.  A camera at (elevation e, azimuth a, distance r) sits at
  ``r * (cos e cos a, cos e sin a, sin e)`` and looks at the origin; azimuth 0 is on +x.
  (Elevation +-90 deg is degenerate with world-up +z and not supported.)
* ``c2w`` columns are ``[right, up, -lookat | position]`` (OpenGL: the camera looks along its
  own -z) with ``lookat = normalize(-position)``, ``right = normalize(cross(lookat, +z))``,
  ``up = cross(right, lookat)``.  For the reference camera (0, 0, 3.8): position (3.8, 0, 0),
  right = world +y (image right), up = world +z (image up).
* Pixel (i = column, j = row) has the camera-space ray direction
  ``((i + 0.5 - W/2) / f, -(j + 0.5 - H/2) / f, -1)`` with ``f = 0.5 H / tan(0.5 fovy)``;
  world direction ``= c2w[:3, :3] @ dir_cam``.  Depth ``z`` is the camera-space depth along the
  optical axis (positive), so the world point of a pixel is ``position + z * (R @ dir_cam)``.
* Reference view: elevation 0, azimuth 0, distance 3.8, fovy 20 deg, 512 x 512.

Output files (threestudio single-image datamodule conventions)
--------------------------------------------------------------
``sample_rgba.png``
    512x512 RGBA, 8 bit.  Alpha is binary: 255 where the ray through the pixel centre hits the
    object, 0 elsewhere (threestudio uses ``mask = alpha > 0.5``).  RGB of background pixels is
    0 (black).  Object RGB is the mean of the 2x2 supersamples that hit the object (no
    background bleeding), shaded ``albedo * (0.4 + 0.6 max(n.l, 0))`` with the light coming from
    the camera direction.
``sample_depth.png``
    Single channel ("L"), 8 bit, near = BRIGHT.  ``v = round(255 * (1/z - dmin) / (dmax - dmin))``
    inside the mask, 0 outside, with ``dmin / dmax`` the min / max disparity ``1/z`` over the
    mask, saved as ``disparity_min`` / ``disparity_max`` in ``sample_geometry.npz``.  Invert with
    ``z = 1 / (dmin + v / 255 * (dmax - dmin))`` (use the alpha mask: the farthest object pixel
    also has value 0).  threestudio reads it with ``cv2.imread(..., IMREAD_UNCHANGED) / 255``.
``sample_normal.png``
    3 channels, 8 bit, WORLD-space unit normals encoded for threestudio's normal loss, which
    compares ``2 * comp_normal - 1`` with ``1 - 2 * ref_normal`` where ``ref_normal`` is the file
    as returned by ``cv2.imread`` (BGR order, unchanged) / 255.  So each channel stores
    ``v = (1 - n) / 2`` and the file is written such that cv2 returns the channels in (x, y, z)
    order: in PIL terms the "RGB" channels are (z, y, x).  Decode with
    ``n = 1 - 2 * np.asarray(Image.open(p))[..., ::-1] / 255``.  Background = 0.
``sample_geometry.npz``
    Camera (``c2w`` 4x4, ``fovy_deg``, ``elevation_deg``, ``azimuth_deg``, ``camera_distance``,
    ``height``, ``width``, ``focal``), float32 ``depth_z`` (0 outside), ``mask``, float32
    world ``position`` and ``normal_world`` maps, ``disparity_min`` / ``disparity_max``,
    ``object_size`` (height of the object), ``bound_radius`` and the primitive parameters
    (``box_*``, ``post_*``, ``ball_*``, ``ring_*``).  Load with :func:`load_sample_geometry`.
``sample_caption.txt``
    A one-line caption.
``bg_texture.png``
    512x512 RGB grey concrete-like value-noise texture (mean ~0.5, std ~0.1) that the RGNV
    pipeline composites the reference onto; :func:`procedural_background` makes it at any size.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# cameras, textures and file encodings live in the core (this generator only uses them); they are
# re-exported here for the sample's callers
from ..core.cameras import (  # noqa: F401
    backproject_depth,
    focal_from_fovy,
    look_at_c2w,
    pixel_directions,
    project_points,
    ray_directions,
    rotate_vectors,
)
from ..core.images import (  # noqa: F401
    decode_depth_png,
    encode_depth_png,
    procedural_background,
    to_u8,
)
from ..core.normals import decode_normal_png, encode_normal_png  # noqa: F401

__all__ = [
    "REF_ELEVATION_DEG",
    "REF_AZIMUTH_DEG",
    "REF_DISTANCE",
    "REF_FOVY_DEG",
    "REF_SIZE",
    "OBJECT_SIZE",
    "BOUND_RADIUS",
    "CAPTION",
    "DEFAULT_ASSETS_DIR",
    "look_at_c2w",
    "focal_from_fovy",
    "ray_directions",
    "backproject_depth",
    "project_points",
    "sample_sdf",
    "sample_sdf_parts",
    "sample_normal",
    "sample_albedo",
    "cast_rays",
    "render_sample",
    "procedural_background",
    "encode_depth_png",
    "decode_depth_png",
    "encode_normal_png",
    "decode_normal_png",
    "load_sample_geometry",
    "write_sample_assets",
    "main",
]

REF_ELEVATION_DEG = 0.0
REF_AZIMUTH_DEG = 0.0
REF_DISTANCE = 3.8
REF_FOVY_DEG = 20.0
REF_SIZE = 512

DEFAULT_ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"

CAPTION = (
    "a toy made of a red and orange checkered ball on a green striped post, standing on a blue "
    "box with white diagonal stripes, with a small yellow and purple ring on its right side"
)

# ----------------------------------------------------------------------------------------------
# geometry: primitive parameters (world units, z-up).  The object spans z in [-0.40, 0.40].
# ----------------------------------------------------------------------------------------------
BOX_CENTER = (0.0, 0.02, -0.29)
BOX_HALF = (0.18, 0.32, 0.11)  # half extents, rounding included
BOX_ROUND = 0.03
POST_CENTER = (0.0, -0.08, -0.085)
POST_RADIUS = 0.075
POST_HALF_HEIGHT = 0.105
BALL_CENTER = (0.0, -0.08, 0.19)
BALL_RADIUS = 0.21
RING_CENTER = (0.0, 0.19, -0.06)  # axis along world x
RING_MAJOR = 0.095
RING_MINOR = 0.032

OBJECT_SIZE = 0.80  # height of the object (z extent); the unit of the geometric tolerances
BOUND_RADIUS = 0.60  # every surface point is inside this sphere (used to clip the rays)

PART_NAMES = ("box", "post", "ball", "ring")

_LIGHT_AMBIENT = 0.4
_LIGHT_DIFFUSE = 0.6


def _primitive_params() -> dict:
    return {
        "box_center": np.array(BOX_CENTER),
        "box_half": np.array(BOX_HALF),
        "box_round": np.float64(BOX_ROUND),
        "post_center": np.array(POST_CENTER),
        "post_radius": np.float64(POST_RADIUS),
        "post_half_height": np.float64(POST_HALF_HEIGHT),
        "ball_center": np.array(BALL_CENTER),
        "ball_radius": np.float64(BALL_RADIUS),
        "ring_center": np.array(RING_CENTER),
        "ring_major": np.float64(RING_MAJOR),
        "ring_minor": np.float64(RING_MINOR),
        "ring_axis": np.array([1.0, 0.0, 0.0]),
    }


def _len2(a, b):
    return np.sqrt(a * a + b * b)


def _len3(a, b, c):
    return np.sqrt(a * a + b * b + c * c)


def _sdf_box(x, y, z):
    r = BOX_ROUND
    qx = np.abs(x - BOX_CENTER[0]) - (BOX_HALF[0] - r)
    qy = np.abs(y - BOX_CENTER[1]) - (BOX_HALF[1] - r)
    qz = np.abs(z - BOX_CENTER[2]) - (BOX_HALF[2] - r)
    outside = _len3(np.maximum(qx, 0.0), np.maximum(qy, 0.0), np.maximum(qz, 0.0))
    inside = np.minimum(np.maximum(qx, np.maximum(qy, qz)), 0.0)
    return outside + inside - r


def _sdf_post(x, y, z):
    dr = _len2(x - POST_CENTER[0], y - POST_CENTER[1]) - POST_RADIUS
    dz = np.abs(z - POST_CENTER[2]) - POST_HALF_HEIGHT
    return np.minimum(np.maximum(dr, dz), 0.0) + _len2(np.maximum(dr, 0.0), np.maximum(dz, 0.0))


def _sdf_ball(x, y, z):
    return _len3(x - BALL_CENTER[0], y - BALL_CENTER[1], z - BALL_CENTER[2]) - BALL_RADIUS


def _sdf_ring(x, y, z):
    q = _len2(y - RING_CENTER[1], z - RING_CENTER[2]) - RING_MAJOR
    return _len2(q, x - RING_CENTER[0]) - RING_MINOR


_PART_SDFS = (_sdf_box, _sdf_post, _sdf_ball, _sdf_ring)


def _as_points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3], got {p.shape}")
    return p


def sample_sdf_parts(points) -> np.ndarray:
    """Signed distances to each primitive (order :data:`PART_NAMES`): [..., 3] -> [..., 4]."""
    p = _as_points(points)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return np.stack([f(x, y, z) for f in _PART_SDFS], axis=-1)


def _sdf_xyz(x, y, z):
    d = _sdf_box(x, y, z)
    for f in _PART_SDFS[1:]:
        d = np.minimum(d, f(x, y, z))
    return d


def sample_sdf(points) -> np.ndarray:
    """Signed distance of the sample object, [..., 3] -> [...] (negative inside).

    Exact outside and on the surface (union of exact primitive SDFs), a bound inside."""
    p = _as_points(points)
    return _sdf_xyz(p[..., 0], p[..., 1], p[..., 2])


def sample_normal(points, eps: float = 1e-5) -> np.ndarray:
    """Unit outward normal (normalised central-difference gradient of :func:`sample_sdf`)."""
    p = _as_points(points)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    gx = _sdf_xyz(x + eps, y, z) - _sdf_xyz(x - eps, y, z)
    gy = _sdf_xyz(x, y + eps, z) - _sdf_xyz(x, y - eps, z)
    gz = _sdf_xyz(x, y, z + eps) - _sdf_xyz(x, y, z - eps)
    n = np.maximum(_len3(gx, gy, gz), 1e-30)
    return np.stack([gx / n, gy / n, gz / n], axis=-1)


def _frac(v):
    return v - np.floor(v)


def _mix(a, b, t):
    """a * (1 - t) + b * t for colours a, b (3-tuples) and weights t [...] -> [..., 3]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    t = t[..., None]
    return a * (1.0 - t) + b * t


def _albedo_box(x, y, z):
    # blue, brighter towards +y, with white diagonal stripes
    t = np.clip((y - (BOX_CENTER[1] - BOX_HALF[1])) / (2.0 * BOX_HALF[1]), 0.0, 1.0)
    base = _mix((0.10, 0.18, 0.55), (0.25, 0.50, 0.95), t)
    stripe = (_frac((0.5 * x + y + 0.7 * z) / 0.09) < 0.33).astype(np.float64)
    return _mix((0.0, 0.0, 0.0), (0.95, 0.95, 0.88), stripe) + base * (1.0 - stripe)[..., None]


def _albedo_post(x, y, z):
    band = (_frac((z - POST_CENTER[2]) / 0.05) < 0.5).astype(np.float64)
    return _mix((0.25, 0.70, 0.30), (0.08, 0.38, 0.12), band)


def _albedo_ball(x, y, z):
    s = 0.1
    cell = np.floor((x + 0.013) / s) + np.floor((y + 0.037) / s) + np.floor((z + 0.021) / s)
    parity = cell - 2.0 * np.floor(cell / 2.0)  # 0 or 1
    col = _mix((0.85, 0.12, 0.10), (0.98, 0.62, 0.10), parity)
    # darker towards the bottom of the ball
    t = np.clip((z - (BALL_CENTER[2] - BALL_RADIUS)) / (2.0 * BALL_RADIUS), 0.0, 1.0)
    return col * (0.7 + 0.3 * t)[..., None]


def _albedo_ring(x, y, z):
    lo = RING_CENTER[2] - RING_MAJOR - RING_MINOR
    t = np.clip((z - lo) / (2.0 * (RING_MAJOR + RING_MINOR)), 0.0, 1.0)
    return _mix((0.55, 0.15, 0.70), (0.98, 0.85, 0.15), t)


_PART_ALBEDOS = (_albedo_box, _albedo_post, _albedo_ball, _albedo_ring)


def sample_albedo(points) -> np.ndarray:
    """Albedo in [0, 1] of the primitive nearest to each point: [..., 3] -> [..., 3]."""
    p = _as_points(points)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    part = np.argmin(sample_sdf_parts(p), axis=-1)
    out = np.zeros(p.shape, dtype=np.float64)
    for k, f in enumerate(_PART_ALBEDOS):
        sel = part == k
        if np.any(sel):
            out[sel] = f(x[sel], y[sel], z[sel])
    return out


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------
def cast_rays(origins, dirs, max_steps: int = 300, eps: float = 1e-6, miss_tol: float = 1e-4):
    """Sphere-trace rays against :func:`sample_sdf`.

    ``origins`` [N, 3] (or [3]), ``dirs`` [N, 3] (any length).  Returns ``(hit [N] bool,
    t [N])`` with ``t`` the distance along the *normalised* direction (inf on a miss)."""
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    n = len(d)
    o = np.broadcast_to(np.asarray(origins, dtype=np.float64), (n, 3))
    dn = _len3(d[:, 0], d[:, 1], d[:, 2])
    u = d / dn[:, None]
    # clip to the bounding sphere
    b = o[:, 0] * u[:, 0] + o[:, 1] * u[:, 1] + o[:, 2] * u[:, 2]
    c = o[:, 0] * o[:, 0] + o[:, 1] * o[:, 1] + o[:, 2] * o[:, 2] - BOUND_RADIUS * BOUND_RADIUS
    disc = b * b - c
    hit = np.zeros(n, dtype=bool)
    t_out = np.full(n, np.inf)
    active = np.nonzero(disc > 0.0)[0]
    sq = np.sqrt(np.maximum(disc[active], 0.0))
    t = np.maximum(-b[active] - sq, 0.0)
    t_far = -b[active] + sq
    ox, oy, oz = o[active, 0], o[active, 1], o[active, 2]
    ux, uy, uz = u[active, 0], u[active, 1], u[active, 2]
    for _ in range(max_steps):
        if active.size == 0:
            break
        dist = _sdf_xyz(ox + t * ux, oy + t * uy, oz + t * uz)
        done_hit = dist < eps
        t = t + dist
        done_miss = t > t_far
        keep = ~(done_hit | done_miss)
        if np.any(done_hit):
            hit[active[done_hit]] = True
            t_out[active[done_hit]] = t[done_hit]
        if not np.all(keep):
            active, t, t_far = active[keep], t[keep], t_far[keep]
            ox, oy, oz, ux, uy, uz = ox[keep], oy[keep], oz[keep], ux[keep], uy[keep], uz[keep]
    if active.size:  # step budget exhausted (grazing rays): accept the near-misses
        dist = _sdf_xyz(ox + t * ux, oy + t * uy, oz + t * uz)
        ok = dist < miss_tol
        hit[active[ok]] = True
        t_out[active[ok]] = t[ok]
    return hit, t_out


def _shade(points, normals, light_dir):
    albedo = sample_albedo(points)
    ndl = normals[:, 0] * light_dir[0] + normals[:, 1] * light_dir[1] + normals[:, 2] * light_dir[2]
    return albedo * (_LIGHT_AMBIENT + _LIGHT_DIFFUSE * np.maximum(ndl, 0.0))[:, None]


def render_sample(
    elevation_deg: float,
    azimuth_deg: float,
    distance: float = REF_DISTANCE,
    fovy_deg: float = REF_FOVY_DEG,
    size: int = REF_SIZE,
    supersample: int = 2,
) -> dict:
    """Render the ground-truth sample object from a threestudio camera.

    Returns a dict with ``rgb`` [H, W, 3] float in [0, 1] (0 on the background; mean of the
    ``supersample x supersample`` sub-samples that hit), ``alpha`` [H, W] bool (pixel-centre ray
    hits), ``depth_z`` [H, W] camera z-depth (0 outside), ``normal_world`` [H, W, 3] (0 outside),
    ``position`` [H, W, 3] world points (0 outside), plus ``c2w``, ``focal`` and ``fovy_deg``."""
    H = W = int(size)
    if float(distance) <= BOUND_RADIUS:
        raise ValueError(f"camera distance must exceed the bound radius {BOUND_RADIUS}")
    c2w = look_at_c2w(elevation_deg, azimuth_deg, distance)
    R, cam = c2w[:3, :3], c2w[:3, 3]
    light = tuple(c2w[:3, 2])  # towards the camera

    ss = max(int(supersample), 1)
    offs = [(k + 0.5) / ss for k in range(ss)]
    dir_sets = [pixel_directions(H, W, fovy_deg)]
    dir_sets += [pixel_directions(H, W, fovy_deg, ox, oy) for oy in offs for ox in offs]
    dirs_cam = np.stack(dir_sets, axis=0).reshape(-1, 3)
    hit, t = cast_rays(cam, rotate_vectors(R, dirs_cam))
    hit = hit.reshape(len(dir_sets), H * W)
    t = t.reshape(len(dir_sets), H * W)
    dirs_cam = dirs_cam.reshape(len(dir_sets), H * W, 3)

    # pixel-centre quantities
    mask = hit[0]
    idx = np.nonzero(mask)[0]
    dc = dirs_cam[0, idx]
    dlen = _len3(dc[:, 0], dc[:, 1], dc[:, 2])
    depth = t[0, idx] / dlen  # camera z-depth (dir_cam has z = -1)
    pts = cam + depth[:, None] * rotate_vectors(R, dc)
    nrm = sample_normal(pts)
    centre_rgb = _shade(pts, nrm, light)

    # supersampled colour (only sub-samples that hit the object)
    acc = np.zeros((H * W, 3))
    cnt = np.zeros(H * W)
    for s in range(1, len(dir_sets)):
        sidx = np.nonzero(hit[s])[0]
        ds = dirs_cam[s, sidx]
        ls = _len3(ds[:, 0], ds[:, 1], ds[:, 2])
        ps = cam + (t[s, sidx] / ls)[:, None] * rotate_vectors(R, ds)
        acc[sidx] += _shade(ps, sample_normal(ps), light)
        cnt[sidx] += 1.0
    rgb = np.zeros((H * W, 3))
    c_in = cnt[idx]
    rgb[idx] = np.where((c_in > 0)[:, None], acc[idx] / np.maximum(c_in, 1.0)[:, None], centre_rgb)

    depth_map = np.zeros(H * W)
    depth_map[idx] = depth
    pos_map = np.zeros((H * W, 3))
    pos_map[idx] = pts
    nrm_map = np.zeros((H * W, 3))
    nrm_map[idx] = nrm
    return {
        "rgb": np.clip(rgb, 0.0, 1.0).reshape(H, W, 3),
        "alpha": mask.reshape(H, W),
        "depth_z": depth_map.reshape(H, W),
        "normal_world": nrm_map.reshape(H, W, 3),
        "position": pos_map.reshape(H, W, 3),
        "c2w": c2w,
        "focal": focal_from_fovy(H, fovy_deg),
        "fovy_deg": float(fovy_deg),
    }


# ----------------------------------------------------------------------------------------------
# I/O
# ----------------------------------------------------------------------------------------------
def load_sample_geometry(path=None) -> dict:
    """Load ``sample_geometry.npz`` (default: the shipped assets) as a dict of arrays/scalars."""
    path = Path(path) if path is not None else DEFAULT_ASSETS_DIR / "sample_geometry.npz"
    if path.is_dir():
        path = path / "sample_geometry.npz"
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for k in z.files:
            a = z[k]
            out[k] = a.item() if a.ndim == 0 else a
    return out


def _savez_deterministic(path, arrays: dict) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps (bit-identical files)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def _save_png(arr, path, mode):
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
    if img.mode != mode:
        raise ValueError(f"expected a {mode} image, got {img.mode}")
    img.save(path, optimize=True, compress_level=9)


def coarse_demo_view(
    size: int = REF_SIZE, azimuth_deg: float = 90.0, elevation_deg: float = 10.0
) -> np.ndarray:
    """A deliberately coarse novel view (rendered at 1/4 resolution, nearest-upsampled), standing in
    for a Zero-1-to-3 / coarse-3D render in the `hifi123 rgnv` demo. uint8 RGBA [size, size, 4]."""
    low = size // 4
    r = render_sample(elevation_deg, azimuth_deg, REF_DISTANCE, REF_FOVY_DEG, low, supersample=1)
    small = np.zeros((low, low, 4), dtype=np.uint8)
    small[..., :3] = to_u8(r["rgb"])
    small[..., :3][~r["alpha"]] = 0
    small[..., 3] = np.where(r["alpha"], 255, 0).astype(np.uint8)
    return np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)


def write_sample_assets(out_dir=None, size: int = REF_SIZE, verbose: bool = False) -> dict:
    """Render the reference view and write all sample assets into ``out_dir``."""
    out = Path(out_dir) if out_dir is not None else DEFAULT_ASSETS_DIR
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    r = render_sample(REF_ELEVATION_DEG, REF_AZIMUTH_DEG, REF_DISTANCE, REF_FOVY_DEG, size)
    mask = r["alpha"]
    t1 = time.perf_counter()

    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = to_u8(r["rgb"])
    rgba[..., :3][~mask] = 0
    rgba[..., 3] = np.where(mask, 255, 0).astype(np.uint8)
    _save_png(rgba, out / "sample_rgba.png", "RGBA")

    depth_u8, dmin, dmax = encode_depth_png(r["depth_z"], mask)
    _save_png(depth_u8, out / "sample_depth.png", "L")
    _save_png(encode_normal_png(r["normal_world"], mask), out / "sample_normal.png", "RGB")
    _save_png(to_u8(procedural_background(size, seed=0)), out / "bg_texture.png", "RGB")
    (out / "sample_caption.txt").write_text(CAPTION + "\n")
    _save_png(coarse_demo_view(size), out / "sample_coarse_az090_rgba.png", "RGBA")

    geo = {
        "c2w": r["c2w"],
        "fovy_deg": np.float64(REF_FOVY_DEG),
        "elevation_deg": np.float64(REF_ELEVATION_DEG),
        "azimuth_deg": np.float64(REF_AZIMUTH_DEG),
        "camera_distance": np.float64(REF_DISTANCE),
        "height": np.int64(size),
        "width": np.int64(size),
        "focal": np.float64(r["focal"]),
        "depth_z": r["depth_z"].astype(np.float32),
        "mask": mask,
        "position": r["position"].astype(np.float32),
        "normal_world": r["normal_world"].astype(np.float32),
        "disparity_min": np.float64(dmin),
        "disparity_max": np.float64(dmax),
        "object_size": np.float64(OBJECT_SIZE),
        "bound_radius": np.float64(BOUND_RADIUS),
        **_primitive_params(),
    }
    _savez_deterministic(out / "sample_geometry.npz", geo)
    t2 = time.perf_counter()
    if verbose:
        print(f"rendered in {t1 - t0:.2f} s, wrote {out} in {t2 - t1:.2f} s")
    return {"render": r, "disparity_min": dmin, "disparity_max": dmax, "out_dir": out}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_ASSETS_DIR), help="output directory")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    write_sample_assets(args.out, verbose=True)
    print(f"sample assets written to {args.out} in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
