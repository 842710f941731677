"""Fit a mesh from a feed-forward image-to-3D model to the reference photo (decision 31).

A mesh from TripoSR, SF3D, InstantMesh, TRELLIS or Hunyuan3D comes in its own canonical frame:
its own up axis (often +y), front axis, scale and origin. The refine stage renders it from the
reference camera of `configs/refine.yaml` (threestudio's cameras, docs/threestudio.md §8:
elevation `data.default_elevation_deg`, azimuth 0, distance 3.8, fovy 20 deg, looking at the
origin) and must see it where the photo shows the object. :func:`align_mesh` finds the
similarity transform that does this by matching the mesh's silhouette to the photo's mask.

The pose (:class:`MeshPose`) maps a mesh point p to the world point

    s * Rz(yaw) * A(up, front) * (p - c) + u * right + v * up_cam

with c the centre of the mesh's bounding box, A the axis-aligned rotation taking the mesh's `up`
axis to world +z and its `front` axis to world +x (threestudio's `shape_init_mesh_up` /
`shape_init_mesh_front`; the 24 such rotations are all the conventions a canonical frame can
have), `yaw` a turn about world z, s the scale and (right, up_cam) the reference camera's image
axes. The reference camera's elevation is fitted too unless it is given.

Search: every (up, front) pair with yaws 0, 30 and 60 deg (72 rotations, every 30 deg about each
of the 6 up axes) times a few elevations is scored after matching the silhouette's area and
centroid to the mask's; the best few are refined by a compass search on (yaw, elevation, log
scale, u, v). The score is the silhouette IoU, plus a small weight times the correlation of
rendered and reference disparity when a reference depth map is given (it tells a mesh facing
away from one facing the camera when both silhouettes agree). The final IoU is measured on the
full mesh at the mask's resolution; below `min_iou` the alignment is refused.

Numpy only (no threestudio); the silhouettes come from the CPU rasteriser of
`hifi123.evaluation.geometry`. Reading and writing mesh files needs trimesh.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .cameras import focal_from_fovy, look_at_c2w

# the reference camera of configs/refine.yaml (data.default_*); tests check they agree
REF_ELEVATION_DEG = 0.0
REF_AZIMUTH_DEG = 0.0
REF_DISTANCE = 3.8
REF_FOVY_DEG = 20.0

MIN_IOU = 0.85  # below: refused (decision 31)
DEPTH_WEIGHT = 0.02  # score = IoU + DEPTH_WEIGHT * disparity correlation
AXES = ("+x", "+y", "+z", "-x", "-y", "-z")
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
ALIGNED_MESH = "aligned_mesh.ply"
ALIGNMENT_JSON = "alignment.json"
ALIGNMENT_OVERLAY = "alignment_overlay.png"
OUTPUT_FILES = (ALIGNED_MESH, ALIGNMENT_JSON, ALIGNMENT_OVERLAY)
POSE_KEYS = ("up", "front", "yaw", "scale", "u", "v", "elevation")


def axis_vector(name: str) -> np.ndarray:
    if name not in AXES:
        raise ValueError(f"an axis is one of {', '.join(AXES)}, got {name!r}")
    v = np.zeros(3)
    v["xyz".index(name[1])] = 1.0 if name[0] == "+" else -1.0
    return v


def axis_rotation(up: str, front: str) -> np.ndarray:
    """The rotation taking the mesh's `up` axis to world +z and its `front` axis to world +x."""
    z, x = axis_vector(up), axis_vector(front)
    if abs(float(z @ x)) > 0.5:
        raise ValueError(f"up {up} and front {front} must be perpendicular axes")
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=0)  # rows: the mesh axes that become world x, y, z


def conventions() -> List[Tuple[str, str]]:
    """The 24 (up, front) pairs: every axis-aligned rotation."""
    return [(u, f) for u in AXES for f in AXES if u[1] != f[1]]


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class ReferenceCamera:
    """The reference view: threestudio's orbit camera (docs/threestudio.md §8)."""

    elevation_deg: float = REF_ELEVATION_DEG
    azimuth_deg: float = REF_AZIMUTH_DEG
    distance: float = REF_DISTANCE
    fovy_deg: float = REF_FOVY_DEG

    def c2w(self, elevation_deg: Optional[float] = None) -> np.ndarray:
        e = self.elevation_deg if elevation_deg is None else elevation_deg
        return look_at_c2w(e, self.azimuth_deg, self.distance)


@dataclass
class MeshPose:
    """Mesh frame -> world (module docstring). `center`: the mesh point put at the origin."""

    up: str = "+z"
    front: str = "+x"
    yaw: float = 0.0  # degrees about world z
    scale: float = 1.0
    u: float = 0.0  # world offset along the reference camera's right axis
    v: float = 0.0  # ... and its up axis
    elevation: float = REF_ELEVATION_DEG  # of the reference camera, degrees
    center: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self, camera: Optional[ReferenceCamera] = None) -> np.ndarray:
        camera = camera or ReferenceCamera()
        c2w = camera.c2w(self.elevation)
        R = self.scale * rot_z(self.yaw) @ axis_rotation(self.up, self.front)
        M = np.eye(4)
        M[:3, :3] = R
        M[:3, 3] = (
            -R @ np.asarray(self.center, dtype=np.float64)
            + self.u * c2w[:3, 0]
            + self.v * c2w[:3, 1]
        )
        return M

    def apply(self, vertices: np.ndarray, camera: Optional[ReferenceCamera] = None) -> np.ndarray:
        M = self.matrix(camera)
        return np.asarray(vertices, dtype=np.float64) @ M[:3, :3].T + M[:3, 3]

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["center"] = [float(x) for x in self.center]
        return d


@dataclass
class AlignmentResult:
    pose: MeshPose
    iou: float  # full mesh, at the mask's resolution
    depth_correlation: Optional[float]  # Pearson of rendered vs reference disparity, if given
    camera: ReferenceCamera
    seconds: float
    candidates: List[Dict[str, object]] = field(default_factory=list)  # the refined starts
    elevation_fitted: bool = True
    by_hand: bool = False

    def to_dict(self) -> Dict[str, object]:
        return {
            "pose": self.pose.to_dict(),
            "matrix": self.pose.matrix(self.camera).tolist(),
            "silhouette_iou": self.iou,
            "depth_correlation": self.depth_correlation,
            "reference_camera": {**asdict(self.camera), "elevation_deg": self.pose.elevation},
            "elevation_fitted": self.elevation_fitted,
            "pose_by_hand": self.by_hand,
            "seconds": self.seconds,
            "starts": self.candidates,
        }


def axis_name(vec: np.ndarray) -> str:
    k = int(np.argmax(np.abs(vec)))
    return ("+" if vec[k] > 0 else "-") + "xyz"[k]


def canonical(pose: MeshPose) -> MeshPose:
    """The same rotation written with the front axis that leaves the smallest yaw, in [-45, 45)."""
    k = int(math.floor((pose.yaw + 45.0) / 90.0))
    turned = rot_z(90.0 * k) @ axis_rotation(pose.up, pose.front)
    out = MeshPose(**asdict(pose))
    out.front = axis_name(turned[0])
    out.yaw = float(pose.yaw - 90.0 * k)
    return out


def rotation_angle(a: MeshPose, b: MeshPose) -> float:
    """Angle in degrees between the rotations of two poses."""
    Ra = rot_z(a.yaw) @ axis_rotation(a.up, a.front)
    Rb = rot_z(b.yaw) @ axis_rotation(b.up, b.front)
    return math.degrees(math.acos(float(np.clip((np.trace(Ra.T @ Rb) - 1.0) / 2.0, -1.0, 1.0))))


# ---------------------------------------------------------------------------------- rendering


def render_silhouette(vertices, faces, c2w, fovy_deg: float, size: int) -> np.ndarray:
    """Camera z-depth [size, size] (inf where empty) of world-space vertices."""
    from ..evaluation.geometry import render_depth

    return render_depth(vertices, faces, c2w, fovy_deg, size)


def downsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Box-filter a boolean mask to size x size (pixel coverage > 0.5)."""
    m = np.asarray(mask, dtype=np.float64)
    H, W = m.shape
    if (H, W) == (size, size):
        return m > 0.5
    if H % size == 0 and W % size == 0:
        return m.reshape(size, H // size, size, W // size).mean(axis=(1, 3)) > 0.5
    from PIL import Image

    img = Image.fromarray((m * 255).astype(np.uint8)).resize((size, size), Image.BOX)
    return np.asarray(img) > 127


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def disparity_correlation(
    depth_z: np.ndarray, ref_disparity: np.ndarray, mask: np.ndarray
) -> Optional[float]:
    """Pearson correlation of the rendered disparity 1/z with the reference disparity (near =
    bright) over pixels both cover; None when fewer than 16 such pixels."""
    both = np.isfinite(depth_z) & mask
    if np.count_nonzero(both) < 16:
        return None
    a = 1.0 / depth_z[both]
    b = np.asarray(ref_disparity, dtype=np.float64)[both]
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def cluster_decimate(
    vertices: np.ndarray, faces: np.ndarray, cells: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Vertex clustering on a grid of `cells` along the longest bounding-box side: a mesh with
    the same silhouette up to about one cell, for the search (the final score uses the input)."""
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    cell = float(np.max(hi - lo)) / cells
    if cell <= 0:
        return v, faces
    key = np.floor((v - lo) / cell).astype(np.int64)
    key = (key[:, 0] * (cells + 2) + key[:, 1]) * (cells + 2) + key[:, 2]
    uniq, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(-1)
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    nv = np.stack([np.bincount(inv, weights=v[:, k], minlength=len(uniq)) for k in range(3)], 1)
    nv /= counts[:, None]
    f = inv[np.asarray(faces, dtype=np.int64)]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = np.unique(np.sort(f[keep], axis=1), axis=0) if keep.any() else f[:0]
    return nv, f


# ---------------------------------------------------------------------------------- fitting


class _Scene:
    """The mesh (centred), the mask and the reference camera at one working resolution."""

    def __init__(self, vertices, faces, mask, disparity, camera: ReferenceCamera, size: int):
        self.v, self.f = vertices, faces
        self.size = size
        self.mask = downsample_mask(mask, size)
        self.disp = None
        if disparity is not None:
            d = np.asarray(disparity, dtype=np.float64)
            if d.shape != (size, size):
                from PIL import Image

                d = np.asarray(
                    Image.fromarray(d.astype(np.float32), mode="F").resize(
                        (size, size), Image.BILINEAR
                    )
                )
            self.disp = d
        self.camera = camera
        self.focal = focal_from_fovy(size, camera.fovy_deg)
        self.area = np.count_nonzero(self.mask)
        ys, xs = np.nonzero(self.mask)
        self.centroid = (xs.mean() + 0.5, ys.mean() + 0.5)

    def depth(self, pose: MeshPose) -> np.ndarray:
        c2w = self.camera.c2w(pose.elevation)
        return render_silhouette(
            pose.apply(self.v, self.camera), self.f, c2w, self.camera.fovy_deg, self.size
        )

    def score(self, pose: MeshPose) -> Tuple[float, float, Optional[float]]:
        d = self.depth(pose)
        sil = np.isfinite(d)
        s_iou = iou(sil, self.mask)
        corr = disparity_correlation(d, self.disp, self.mask) if self.disp is not None else None
        return s_iou + (DEPTH_WEIGHT * corr if corr is not None else 0.0), s_iou, corr

    def match_moments(self, pose: MeshPose) -> Tuple[MeshPose, float]:
        """Scale and offset that give the silhouette the mask's area and centroid (one render,
        then the silhouette warped by the implied image-space similarity); returns the score of
        that warped render, a cheap estimate of the fitted score."""
        depth = self.depth(pose)
        sil = np.isfinite(depth)
        area = np.count_nonzero(sil)
        if area == 0:
            return pose, 0.0
        ys, xs = np.nonzero(sil)
        cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
        k = math.sqrt(self.area / area)
        # warp: target pixel x <- source cx + (x - mcx) / k
        mcx, mcy = self.centroid
        grid = np.arange(self.size) + 0.5
        sx = np.floor(cx + (grid - mcx) / k).astype(np.int64)
        sy = np.floor(cy + (grid - mcy) / k).astype(np.int64)
        okx, oky = (sx >= 0) & (sx < self.size), (sy >= 0) & (sy < self.size)
        warped = np.full_like(depth, np.inf)
        warped[np.ix_(oky, okx)] = depth[np.ix_(sy[oky], sx[okx])]
        # the image-space similarity as a world similarity about the origin's depth
        per_px = self.camera.distance / self.focal
        s = pose.scale * k
        ox = (pose.u / per_px - (cx - 0.5 * self.size)) * k + (mcx - 0.5 * self.size)
        oy = (-pose.v / per_px - (cy - 0.5 * self.size)) * k + (mcy - 0.5 * self.size)
        fitted = MeshPose(
            pose.up, pose.front, pose.yaw, s, ox * per_px, -oy * per_px, pose.elevation, pose.center
        )
        score = iou(np.isfinite(warped), self.mask)
        if self.disp is not None:
            corr = disparity_correlation(warped, self.disp, self.mask)
            score += DEPTH_WEIGHT * corr if corr is not None else 0.0
        return fitted, score


def _compass(
    scene: _Scene, pose: MeshPose, free: Sequence[str], max_evals: int
) -> Tuple[MeshPose, tuple, int]:
    """Compass (pattern) search maximising the score over the `free` pose fields."""
    per_px = scene.camera.distance / scene.focal
    steps = {"yaw": 12.0, "elevation": 8.0, "scale": 0.08, "u": 3 * per_px, "v": 3 * per_px}
    floor = {"yaw": 0.2, "elevation": 0.2, "scale": 0.002, "u": 0.2 * per_px, "v": 0.2 * per_px}
    names = [n for n in ("yaw", "elevation", "scale", "u", "v") if n in free]
    step = {n: steps[n] for n in names}
    best = scene.score(pose)
    evals = 1

    def moved(p: MeshPose, name: str, delta: float) -> MeshPose:
        q = MeshPose(**{**asdict(p)})
        if name == "scale":
            q.scale = p.scale * math.exp(delta)
        else:
            setattr(q, name, getattr(p, name) + delta)
        if name == "elevation":
            q.elevation = float(np.clip(q.elevation, -80.0, 80.0))
        return q

    while evals < max_evals and any(step[n] > floor[n] for n in names):
        improved = False
        for n in names:
            if step[n] <= floor[n]:
                continue
            for sign in (1.0, -1.0):
                trial = moved(pose, n, sign * step[n])
                sc = scene.score(trial)
                evals += 1
                if sc[0] > best[0] + 1e-9:
                    pose, best, improved = trial, sc, True
                    break
        if not improved:
            for n in names:
                step[n] *= 0.5
    return pose, best, evals


def align_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    mask: np.ndarray,
    disparity: Optional[np.ndarray] = None,
    *,
    camera: Optional[ReferenceCamera] = None,
    elevation_deg: Optional[float] = None,
    fixed: Optional[Dict[str, object]] = None,
    elevations: Sequence[float] = (0.0, 15.0, 30.0),
    yaws: Sequence[float] = (0.0, 30.0, 60.0),
    keep: int = 4,
    coarse_size: int = 64,
    size: int = 128,
    search_cells: int = 96,
    max_evals: int = 160,
    conventions_to_try: Optional[Sequence[Tuple[str, str]]] = None,
    min_separation_deg: float = 45.0,
) -> AlignmentResult:
    """Fit the mesh's pose to the reference mask (and disparity, near = bright, if given).

    `elevation_deg`: the reference camera's elevation when known (else fitted, starting from
    `elevations`). `fixed`: pose fields given by hand (keys of :data:`POSE_KEYS`; "scale", "u",
    "v" in world units); the others are fitted around them. Returns the best pose with its IoU on
    the full mesh at the mask's resolution; refusing a poor fit is :func:`check_alignment`'s job.
    """
    t0 = time.perf_counter()
    camera = camera or ReferenceCamera()
    fixed = dict(fixed or {})
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    if "elevation" in fixed:
        elevation_deg = float(fixed["elevation"])
    lo, hi = v.min(0), v.max(0)
    center = tuple(float(x) for x in 0.5 * (lo + hi))
    radius = float(np.linalg.norm(v - np.asarray(center), axis=1).max())
    sv, sf = cluster_decimate(v, f, search_cells) if len(f) > 4 * search_cells**2 else (v, f)
    coarse_v, coarse_f = (
        cluster_decimate(v, f, coarse_size) if len(f) > 2 * coarse_size**2 else (sv, sf)
    )
    coarse = _Scene(coarse_v, coarse_f, mask, disparity, camera, coarse_size)
    fine = _Scene(sv, sf, mask, disparity, camera, size)
    # a start scale that puts the mesh at about 60% of the frame height
    s0 = 0.6 * camera.distance * math.tan(0.5 * math.radians(camera.fovy_deg)) / max(radius, 1e-12)
    pairs = list(conventions_to_try or conventions())
    if "up" in fixed or "front" in fixed:
        pairs = [
            (u, fr) for u, fr in pairs if fixed.get("up", u) == u and fixed.get("front", fr) == fr
        ]
        if not pairs:
            raise InputError(
                f"pose up={fixed.get('up')} front={fixed.get('front')}: not perpendicular axes",
                "up and front among +x, +y, +z, -x, -y, -z, on different axes",
                "fix --pose",
            )
    yaw_list = [float(fixed["yaw"])] if "yaw" in fixed else list(yaws)
    elev_list = [float(elevation_deg)] if elevation_deg is not None else list(elevations)
    # 1. every start, scale and offset matched to the mask's area and centroid
    starts = []
    for up, front in pairs:
        for yaw in yaw_list:
            for elev in elev_list:
                p = MeshPose(
                    up,
                    front,
                    yaw,
                    float(fixed.get("scale", s0)),
                    float(fixed.get("u", 0.0)),
                    float(fixed.get("v", 0.0)),
                    elev,
                    center,
                )
                fitted, est = coarse.match_moments(p)
                for k in ("scale", "u", "v"):
                    if k in fixed:
                        setattr(fitted, k, float(fixed[k]))
                starts.append((est, fitted))
    starts.sort(key=lambda t: -t[0])
    # 2. the best distinct starts, refined
    free = [n for n in ("yaw", "elevation", "scale", "u", "v") if n not in fixed]
    if elevation_deg is not None and "elevation" in free:
        free.remove("elevation")
    chosen: List[MeshPose] = []
    for _, p in starts:
        if len(chosen) >= keep:
            break
        if any(rotation_angle(c, p) < min_separation_deg for c in chosen):
            continue
        chosen.append(p)
    refined = []
    for p in chosen:
        q, sc, n = _compass(fine, p, free, max_evals) if free else (p, fine.score(p), 1)
        refined.append((sc, q, n, p))
    refined.sort(key=lambda t: -t[0][0])
    best = refined[0][1]
    # 3. the final score: the input mesh at the mask's resolution
    H = mask.shape[0]
    full = _Scene(v, f, mask, disparity, camera, H)
    _, final_iou, corr = full.score(best)
    candidates = [
        {
            "start": {"up": p.up, "front": p.front, "yaw": p.yaw, "elevation": p.elevation},
            "fitted": {
                k: getattr(canonical(q), k) for k in ("up", "front", "yaw", "elevation", "scale")
            },
            "iou": sc[1],
            "depth_correlation": sc[2],
            "evaluations": n,
        }
        for sc, q, n, p in refined
    ]
    best = canonical(best)
    return AlignmentResult(
        best,
        final_iou,
        corr,
        camera,
        time.perf_counter() - t0,
        candidates,
        elevation_fitted=elevation_deg is None,
        by_hand=bool(fixed),
    )


def check_alignment(
    result: AlignmentResult, mesh_path: str, ref_path: str, min_iou: float = MIN_IOU
) -> None:
    """Refuse a fit whose silhouette IoU is below `min_iou` (not for a pose given by hand)."""
    if result.by_hand or result.iou >= min_iou:
        return
    p = result.pose
    raise InputError(
        f"mesh {mesh_path} does not match the object in {ref_path}: the best pose found "
        f"(up {p.up}, front {p.front}, yaw {p.yaw:.0f} deg, elevation {p.elevation:.0f} deg) "
        f"covers the reference mask with silhouette IoU {result.iou:.3f}",
        f"a mesh of the photographed object whose silhouette from the reference view reaches IoU "
        f">= {min_iou:.2f} with the mask (alpha) of {ref_path}",
        "check that the mesh was made from this photo and the mask cuts out the same object "
        "(`hifi123 preprocess`); or give the pose by hand, e.g. "
        "--pose up=+y,front=+z,yaw=0,elevation=10 (any subset; the rest is fitted), "
        "or lower --min-iou",
    )


# ---------------------------------------------------------------------------------- files


def parse_pose(text: str) -> Dict[str, object]:
    """`up=+y,front=+z,yaw=30,scale=0.5,u=0,v=0,elevation=10` (any subset), or a path to an
    `alignment.json` (its pose, all fields)."""
    if text.endswith(".json") or os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as fh:
                pose = json.load(fh)["pose"]
            return {k: pose[k] for k in POSE_KEYS}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"--pose {text} is not a readable alignment.json ({err})",
                "an alignment.json written by `hifi123 align-mesh`",
                "pass its path, or key=value pairs such as up=+y,front=+z,yaw=0",
            ) from err
    out: Dict[str, object] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in POSE_KEYS:
            raise InputError(
                f"--pose: cannot read {item!r}",
                f"comma-separated key=value pairs with keys {', '.join(POSE_KEYS)}",
                "e.g. --pose up=+y,front=+z,yaw=0,elevation=10",
            )
        value = value.strip()
        if key in ("up", "front"):
            if value not in AXES:
                raise InputError(
                    f"--pose {key}={value}", f"one of {', '.join(AXES)}", f"e.g. --pose {key}=+y"
                )
            out[key] = value
        else:
            try:
                num = float(value)
            except ValueError:
                num = float("nan")
            if not math.isfinite(num) or (key == "scale" and num <= 0):
                raise InputError(
                    f"--pose {key}={value}",
                    "a finite number" + (" > 0" if key == "scale" else ""),
                    f"e.g. --pose {key}=0",
                )
            out[key] = num
    if "up" in out and "front" in out and out["up"][1] == out["front"][1]:
        raise InputError(
            f"--pose up={out['up']} front={out['front']}: the same axis",
            "up and front on different axes",
            "e.g. --pose up=+y,front=+z",
        )
    return out


def _trimesh():
    try:
        import trimesh
    except ImportError as err:  # pragma: no cover - threestudio installs it
        raise InputError(
            "reading meshes needs trimesh, which is not installed",
            "the trimesh package",
            "pip install trimesh",
        ) from err
    return trimesh


def load_mesh(path: str):
    """The mesh file as one trimesh.Trimesh, node transforms of a scene (GLB) applied. Missing,
    unreadable or face-less files are an InputError naming the path."""
    expected = f"a triangle mesh file trimesh reads ({', '.join(MESH_SUFFIXES)})"
    if not os.path.isfile(path):
        raise InputError(f"mesh file not found: {path}", expected, "check the path (--mesh)")
    trimesh = _trimesh()
    try:
        loaded = trimesh.load(path, process=False)
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.dump(concatenate=True) if loaded.geometry else None
    except Exception as err:  # trimesh raises many types for a bad file
        raise InputError(
            f"mesh file {path} could not be read ({type(err).__name__}: {err})",
            expected,
            "re-export the mesh as OBJ, GLB or PLY",
        ) from err
    if loaded is None or not hasattr(loaded, "faces") or len(getattr(loaded, "faces", [])) == 0:
        raise InputError(
            f"mesh file {path} has no triangles (a point cloud or an empty scene?)",
            expected,
            "export the mesh with its faces",
        )
    v = np.asarray(loaded.vertices, dtype=np.float64)
    if not np.isfinite(v).all() or float(np.max(v.max(0) - v.min(0))) <= 0:
        raise InputError(
            f"mesh file {path} has non-finite or coincident vertices",
            expected,
            "re-export the mesh",
        )
    return loaded


def write_outputs(
    result: AlignmentResult,
    mesh,
    mask: np.ndarray,
    out_dir: str,
    meta: Dict[str, object],
    overwrite: bool = False,
    with_mesh: bool = True,
) -> Dict[str, str]:
    """aligned_mesh.ply (world frame, colours kept as vertex colours), alignment.json and
    alignment_overlay.png (mask vs silhouette) in `out_dir`; existing files are refused unless
    `overwrite` (for our own stage outputs). `with_mesh=False` (a refused fit): no mesh, and an
    earlier one in `out_dir` is removed."""
    trimesh = _trimesh()
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    taken = [p for p in paths.values() if os.path.exists(p)]
    if taken and not overwrite:
        raise InputError(
            f"{', '.join(taken)} already exist(s)",
            "an output folder without these files",
            "pass another --out (or --overwrite to replace them)",
        )
    M = result.pose.matrix(result.camera)
    colors = None
    try:
        visual = mesh.visual
        if getattr(visual, "kind", None) == "texture":
            visual = visual.to_color()
        if getattr(visual, "kind", None) == "vertex":
            colors = np.asarray(visual.vertex_colors)
    except Exception:  # a texture trimesh cannot sample: geometry only
        colors = None
    aligned = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices) @ M[:3, :3].T + M[:3, 3],
        faces=np.asarray(mesh.faces),
        vertex_colors=colors,
        process=False,
    )
    if with_mesh:
        aligned.export(paths[ALIGNED_MESH])
    elif os.path.exists(paths[ALIGNED_MESH]):
        os.remove(paths[ALIGNED_MESH])
    record = {**meta, **result.to_dict()}
    with open(paths[ALIGNMENT_JSON], "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2, default=_plain)
    H = mask.shape[0]
    d = render_silhouette(
        np.asarray(aligned.vertices),
        aligned.faces,
        result.camera.c2w(result.pose.elevation),
        result.camera.fovy_deg,
        H,
    )
    overlay_png(mask, np.isfinite(d), paths[ALIGNMENT_OVERLAY])
    return paths


def _plain(value):
    """numpy scalars and arrays as plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def overlay_png(mask: np.ndarray, sil: np.ndarray, path: str) -> None:
    """Green: both; red: mask only; blue: silhouette only."""
    from PIL import Image

    img = np.full(mask.shape + (3,), 255, dtype=np.uint8)
    img[mask & sil] = (60, 180, 75)
    img[mask & ~sil] = (230, 25, 75)
    img[~mask & sil] = (0, 130, 200)
    Image.fromarray(img).save(path)
