"""Outputs of the Make-It-3D refine stage (decision 18): coloured PLY of the point cloud, the
deferred renderer's weights, a 360° orbit video. threestudio-free; the system writes them under
threestudio's `save/` folder (`SaverMixin.get_save_path`, i.e. ``<trial_dir>/save/<name>``):

    save/it0-point-cloud/point_cloud.ply       the initial cloud (positions + build colours)
    save/it0-point-cloud/point_cloud.npz       positions, colors, reference_visible, source_view
    save/it<step>-export/point_cloud.ply       RGB part of the optimised descriptors (clamped)
    save/it<step>-export/deferred_renderer.pt  U-Net state dict, background descriptor, descriptors,
                                               positions, flags (:func:`save_renderer_weights`)
    save/it<step>-orbit.mp4                    360° orbit (:func:`write_orbit_video`, 64 frames, 25
                                               fps)
    save/it<step>-test.mp4                     threestudio's test video (test cameras, 30 fps)

PLY: `format binary_little_endian 1.0` (default) or `ascii 1.0`, one `vertex` element with
`float x, y, z` and `uchar red, green, blue` (colours in [0, 1] are scaled by 255 and rounded).
:func:`read_ply` reads both formats (and any vertex properties of the standard scalar types).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

#: files of the refine stage under threestudio's save/ folder (`{step}`: the global step)
SAVE_LAYOUT = {
    "initial_ply": "it0-point-cloud/point_cloud.ply",
    "initial_npz": "it0-point-cloud/point_cloud.npz",
    "ply": "it{step}-export/point_cloud.ply",
    "renderer": "it{step}-export/deferred_renderer.pt",
    "orbit_video": "it{step}-orbit.mp4",
    "test_video": "it{step}-test.mp4",
}
PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
RENDERER_WEIGHTS_FORMAT = "hifi123-makeit3d-deferred-renderer/1"


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def colors_to_uint8(colors) -> np.ndarray:
    """[N, 3] floats in [0, 1] (clamped, NaN -> 0) or integers (clipped to 0..255) -> uint8."""
    c = _np(colors)
    if c.dtype == np.uint8:
        return c
    if np.issubdtype(c.dtype, np.integer):
        return np.clip(c, 0, 255).astype(np.uint8)
    c = np.nan_to_num(c.astype(np.float64), nan=0.0)
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file next to `path`, then rename (no half-written file on a crash)."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_ply(path: str, positions, colors=None, binary: bool = True) -> str:
    """Write a point cloud as PLY: positions [N, 3] (float32 in the file) and optional colours
    [N, 3] (uint8, or floats in [0, 1] rounded to uint8). Binary little-endian by default."""
    p = _np(positions).astype(np.float32)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {p.shape}")
    c = None if colors is None else colors_to_uint8(colors).reshape(-1, 3)
    if c is not None and len(c) != len(p):
        raise ValueError(f"{len(p)} positions but {len(c)} colours")
    props = ["property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if c is not None:
        props += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("r", "u1"), ("g", "u1"), ("b", "u1")]
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        "\n".join(
            [
                "ply",
                f"format {fmt} 1.0",
                "comment written by hifi123",
                f"element vertex {len(p)}",
                *props,
                "end_header",
            ]
        )
        + "\n"
    )
    if binary:
        rec = np.empty(len(p), dtype=fields)
        rec["x"], rec["y"], rec["z"] = p[:, 0], p[:, 1], p[:, 2]
        if c is not None:
            rec["r"], rec["g"], rec["b"] = c[:, 0], c[:, 1], c[:, 2]
        body = rec.tobytes()
    else:
        rows = p.tolist() if c is None else [a + b for a, b in zip(p.tolist(), c.tolist())]
        body = "".join(
            " ".join(repr(v) if isinstance(v, float) else str(v) for v in row) + "\n"
            for row in rows
        ).encode("ascii")
    atomic_write_bytes(path, header.encode("ascii") + body)
    return path


def read_ply(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read the vertex element of a PLY: (positions float32 [N, 3], colours uint8 [N, 3] or None).
    Supports ascii and binary_little_endian/big_endian with scalar vertex properties, the vertex
    element first."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        fmt, n, props, in_vertex = None, None, [], False
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                if n is not None and in_vertex:
                    in_vertex = False  # a later element: ignored (must come after the vertices)
                elif words[1] == "vertex":
                    n, in_vertex = int(words[2]), True
                elif n is None:
                    raise ValueError(
                        f"{path}: element {words[1]!r} before the vertices is not supported"
                    )
            elif words[0] == "property" and in_vertex:
                if words[1] == "list":
                    raise ValueError(
                        f"{path}: list properties in the vertex element are not supported"
                    )
                props.append((words[2], PLY_TYPES[words[1]]))
        if n is None:
            raise ValueError(f"{path}: no vertex element")
        if fmt == "ascii":
            rows = [f.readline().split() for _ in range(n)]
            data = {
                name: np.array([r[k] for r in rows], dtype=t) for k, (name, t) in enumerate(props)
            }
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            end = "<" if fmt == "binary_little_endian" else ">"
            dt = np.dtype([(name, end + t) for name, t in props])
            rec = np.frombuffer(f.read(dt.itemsize * n), dtype=dt, count=n)
            data = {name: rec[name] for name, _ in props}
        else:
            raise ValueError(f"{path}: unknown PLY format {fmt!r}")
    pos = np.stack([data["x"], data["y"], data["z"]], -1).astype(np.float32)
    names = [("red", "green", "blue"), ("r", "g", "b")]
    col = None
    for trio in names:
        if all(t in data for t in trio):
            col = np.stack([data[t] for t in trio], -1)
            col = col.astype(np.uint8) if col.dtype.kind in "iu" else colors_to_uint8(col)
            break
    return pos, col


def save_renderer_weights(
    path: str,
    unet: torch.nn.Module,
    background: torch.Tensor,
    descriptors: Optional[torch.Tensor] = None,
    positions: Optional[torch.Tensor] = None,
    reference_visible: Optional[torch.Tensor] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> str:
    """torch.save the deferred renderer (U-Net state dict + background descriptor) and, when given,
    the point descriptors, positions and flags (everything needed to render the result again)."""
    payload = {
        "format": RENDERER_WEIGHTS_FORMAT,
        "unet": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
        "unet_widths": list(getattr(unet, "widths", [])),
        "in_channels": int(getattr(unet, "in_channels", background.numel())),
        "background": background.detach().cpu(),
    }
    for name, t in (
        ("descriptors", descriptors),
        ("positions", positions),
        ("reference_visible", reference_visible),
    ):
        if t is not None:
            payload[name] = t.detach().cpu()
    if extra:
        payload["extra"] = dict(extra)
    torch.save(payload, path)
    return path


def load_renderer_weights(
    path: str, unet: Optional[torch.nn.Module] = None, map_location="cpu"
) -> Dict[str, Any]:
    """Load :func:`save_renderer_weights`' file; with `unet`, its state dict is loaded (strict)."""
    payload = torch.load(path, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != RENDERER_WEIGHTS_FORMAT:
        raise ValueError(
            f"{path} is not a hifi123 deferred-renderer file ({RENDERER_WEIGHTS_FORMAT})"
        )
    if unet is not None:
        unet.load_state_dict(payload["unet"])
    return payload


def orbit_poses(
    n_frames: int = 64, elevation_deg: float = 0.0, start_azimuth_deg: float = 0.0
) -> Sequence[Tuple[float, float]]:
    """(elevation, azimuth) of `n_frames` views evenly around 360° starting at the reference."""
    return [
        (float(elevation_deg), float(start_azimuth_deg) + 360.0 * k / n_frames)
        for k in range(int(n_frames))
    ]


def to_uint8_frame(rgb) -> np.ndarray:
    """[H, W, 3] (or [1, H, W, 3]) float in [0, 1] -> uint8 [H, W, 3]."""
    a = _np(rgb)
    while a.ndim > 3:
        a = a[0]
    return colors_to_uint8(a.reshape(-1, 3)).reshape(a.shape[0], a.shape[1], 3)


def write_orbit_video(
    path: str,
    render_fn: Callable[[float, float], Any],
    n_frames: int = 64,
    fps: int = 25,
    elevation_deg: float = 0.0,
    start_azimuth_deg: float = 0.0,
) -> str:
    """Render `n_frames` views around the object with `render_fn(elevation_deg, azimuth_deg)` ->
    rgb [H, W, 3] in [0, 1] and write an mp4 (imageio + ffmpeg; official: 64 frames at 25 fps)."""
    import imageio.v2 as imageio

    frames = [
        to_uint8_frame(render_fn(e, a))
        for e, a in orbit_poses(n_frames, elevation_deg, start_azimuth_deg)
    ]
    if not frames:
        raise ValueError("n_frames must be >= 1")
    h, w = frames[0].shape[:2]
    block = 16 if (h % 16 == 0 and w % 16 == 0) else math.gcd(math.gcd(h, w), 2) or 1
    imageio.mimwrite(path, frames, fps=int(fps), macro_block_size=block)
    return path
