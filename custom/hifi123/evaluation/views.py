"""Finding and reading the views to evaluate: threestudio trial directories, folders of images,
videos. Everything here validates and raises `InputError` (file, expectation, fix) before any
model is loaded.

threestudio trial directories
    ``outputs/<name>/<tag>@<time>/`` holds ``save/it<N>-test/<index>.png`` (the test renders) and
    ``save/it<N>-test.mp4``; threestudio's systems write the mp4 and then delete the PNG folder, so
    usually only the video is left. We take the highest N, the PNG folder when it still exists
    (lossless) and the video otherwise (lossy: the report says so). Frames are ordered by index.
    Test camera i of n sits at azimuth 360 * i / (n - 1) (threestudio's test set is
    ``linspace(0, 360, n)``: the last frame repeats the first), at ``eval_elevation_deg``,
    ``eval_camera_distance`` and ``eval_fovy_deg``. When ``configs/parsed.yaml`` is in the trial
    directory we read those and the reference camera (``data.default_*``) from it.
    Each frame is a grid of square panels side by side ([rgb | normal | depth | opacity] in the
    zero123 / magic123 systems): the RGB render is the leftmost panel; when the last panel is
    grey (R = G = B), it is the opacity and pixels with opacity < 0.5 are set to the white
    background (HiFi-123 masks the background out; pass --keep-background to skip this).
Folders of images
    Sorted in natural order (2.png before 10.png); RGBA images are composited on white with their
    alpha; RGB images are taken as they are.
Videos (.mp4, .gif, ...)
    Decoded with imageio (needs its ffmpeg or pyav plugin for mp4) or OpenCV, whichever is
    installed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")
GREY_TOLERANCE = 6.0 / 255.0  # mean |R-G| + |G-B| below this: a grey (opacity) panel
_TEST_DIR = re.compile(r"^it(\d+)-test$")
_TEST_VIDEO = re.compile(r"^it(\d+)-test\.(mp4|gif)$")


def natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: str) -> List[str]:
    return sorted(
        (f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and not f.startswith(".")),
        key=natural_key,
    )


@dataclass
class Frame:
    """One view: RGB on white, float32 [H,W,3] in [0,1]."""

    name: str
    rgb: np.ndarray
    azimuth: Optional[float] = None


@dataclass
class ViewSet:
    source: str
    kind: str  # threestudio-png | threestudio-video | image-folder | video
    frames: List[Frame]
    lossy: bool = False
    panels: int = 1
    opacity_masked: bool = False
    camera: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def size(self) -> Tuple[int, int]:
        return self.frames[0].rgb.shape[:2]


# ------------------------------------------------------------------------------------ reading


def _read_image(path: str, role: str) -> np.ndarray:
    """[H,W,3 or 4] float32 in [0,1]."""
    from ..core.images import open_image

    img = open_image(path, role)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(img).astype(np.float32) / 255.0


def read_video(path: str, role: str = "video") -> List[np.ndarray]:
    """Frames [H,W,3] float32 of a video, with imageio or OpenCV (whichever can decode it)."""
    errors = []
    try:
        import imageio.v3 as iio

        frames = iio.imread(path, index=None)
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        return [f[..., :3].astype(np.float32) / 255.0 for f in arr]
    except Exception as err:  # noqa: BLE001 - any backend failure: try the next one
        errors.append(
            f"imageio: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        )
    try:
        import cv2

        cap = cv2.VideoCapture(path)
        out = []
        while cap.isOpened():
            ok, frame = cap.read()
            if not ok:
                break
            out.append(frame[..., ::-1].astype(np.float32) / 255.0)
        cap.release()
        if out:
            return out
        errors.append("opencv: no frames decoded")
    except ImportError:
        errors.append("opencv: not installed")
    raise InputError(
        f"{role} {path} could not be decoded ({'; '.join(errors)})",
        "a video that imageio (with its ffmpeg or pyav plugin) or OpenCV can read",
        "pip install 'imageio[ffmpeg]' (or av), or extract the frames: "
        f"`ffmpeg -i {path} frames/%d.png` and pass the folder",
    )


def split_panels(img: np.ndarray) -> List[np.ndarray]:
    """Split a frame made of square panels side by side (threestudio's image grids). Videos may
    pad the width to a multiple of 16, so the panel count is round(W / H)."""
    h, w = img.shape[:2]
    n = int(round(w / h)) if w > h else 1
    if n <= 1:
        return [img]
    pw = w // n
    return [img[:, k * pw : (k + 1) * pw] for k in range(n)]


def is_grey(panel: np.ndarray) -> bool:
    rgb = panel[..., :3]
    return (
        float(np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean())
        < GREY_TOLERANCE
    )


def to_white_rgb(img: np.ndarray, mask_with_opacity: bool, panel_index: int = 0):
    """(rgb on white [H,W,3], n_panels, opacity_used) of one frame."""
    panels = split_panels(img)
    rgb = panels[panel_index]
    used = False
    if rgb.shape[-1] == 4:
        a = rgb[..., 3:4]
        rgb = rgb[..., :3] * a + (1.0 - a)
    if (
        mask_with_opacity
        and len(panels) >= 2
        and panel_index != len(panels) - 1
        and is_grey(panels[-1])
    ):
        op = panels[-1][..., 0]
        if op.shape == rgb.shape[:2]:
            rgb = np.where((op >= 0.5)[..., None], rgb[..., :3], 1.0)
            used = True
    return np.ascontiguousarray(rgb[..., :3], dtype=np.float32), len(panels), used


# ------------------------------------------------------------------------------------ trials


def _read_parsed_config(trial: str) -> Dict[str, Any]:
    """Camera settings from a trial's configs/parsed.yaml (empty when absent or unreadable)."""
    path = os.path.join(trial, "configs", "parsed.yaml")
    if not os.path.isfile(path):
        return {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged config only costs us the camera metadata
        return {}
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    rc = data.get("random_camera", {}) or {}
    out = {"config": path}
    for key in (
        "default_elevation_deg",
        "default_azimuth_deg",
        "default_camera_distance",
        "default_fovy_deg",
    ):
        if isinstance(data.get(key), (int, float)):
            out[key] = float(data[key])
    for key in ("eval_elevation_deg", "eval_camera_distance", "eval_fovy_deg", "n_test_views"):
        if isinstance(rc.get(key), (int, float)):
            out[key] = float(rc[key])
    return out


def find_test_renders(path: str) -> Tuple[str, str, Optional[str]]:
    """(kind, source, trial_dir) for --views: a trial dir, its save/ dir, a folder of images or a
    video file."""
    if os.path.isfile(path):
        if path.lower().endswith(VIDEO_EXTS):
            return "video", path, None
        raise InputError(
            f"--views {path} is a file but not a video",
            "a threestudio trial directory, a folder of images or a video",
            "pass the trial directory (outputs/<name>/<tag>@<time>)",
        )
    if not os.path.isdir(path):
        raise InputError(
            f"--views {path} does not exist",
            "a threestudio trial directory, a folder of images or a video",
            "check the path (threestudio writes trials under outputs/<name>/<tag>@<time>)",
        )
    trial = path
    save = os.path.join(path, "save")
    if not os.path.isdir(save):
        save, trial = (
            path,
            (
                os.path.dirname(os.path.abspath(path))
                if os.path.basename(os.path.abspath(path)) == "save"
                else None
            ),
        )
    best: Dict[int, Dict[str, str]] = {}
    for name in os.listdir(save):
        m = _TEST_DIR.match(name)
        if m and os.path.isdir(os.path.join(save, name)) and list_images(os.path.join(save, name)):
            best.setdefault(int(m.group(1)), {})["png"] = os.path.join(save, name)
        m = _TEST_VIDEO.match(name)
        if m:
            best.setdefault(int(m.group(1)), {})["video"] = os.path.join(save, name)
    if best:
        it = max(best)
        got = best[it]
        if "png" in got:
            return "threestudio-png", got["png"], trial
        return "threestudio-video", got["video"], trial
    if list_images(path):
        return "image-folder", path, None
    raise InputError(
        f"--views {path} holds no test renders and no images",
        "save/it<N>-test/*.png or save/it<N>-test.mp4 (a threestudio trial), or image files",
        "run threestudio's test stage first (`python launch.py --config "
        "<trial>/configs/parsed.yaml --test resume=<trial>/ckpts/last.ckpt`), or pass a folder "
        "of images",
    )


def load_view_set(path: str, mask_with_opacity: bool = True) -> ViewSet:
    kind, source, trial = find_test_renders(path)
    if kind in ("video", "threestudio-video"):
        raw = read_video(source, "--views video")
        names = [f"frame {i}" for i in range(len(raw))]
    else:
        files = list_images(source)
        raw, shape0 = [], None
        for f in files:
            img = _read_image(os.path.join(source, f), "--views image")
            if shape0 is None:
                shape0 = img.shape[:2]
            elif img.shape[:2] != shape0:
                raise InputError(
                    f"--views image {os.path.join(source, f)} is {img.shape[1]}x{img.shape[0]} but "
                    f"{files[0]} is {shape0[1]}x{shape0[0]}",
                    "all views of one size",
                    "re-render the views at one resolution",
                )
            raw.append(img)
        names = files
    if len(raw) < 2:
        raise InputError(
            f"--views {source} has {len(raw)} view(s)",
            "at least 2: the reference view and one novel view",
            "render more test views (data.random_camera.n_test_views)",
        )
    frames, n_panels, used_any = [], 1, False
    for name, img in zip(names, raw):
        rgb, n_panels, used = to_white_rgb(img, mask_with_opacity)
        used_any |= used
        frames.append(Frame(name, rgb))
    h, w = frames[0].rgb.shape[:2]
    # (videos may have been resized to multiples of 16 by the encoder: accept and resize later)
    if h != w and not kind.endswith("video"):
        raise InputError(
            f"--views {source}: the views are {w}x{h}, not square",
            "square renders (or threestudio frames of square panels side by side)",
            "render square views (threestudio: eval_height == eval_width)",
        )
    vs = ViewSet(
        source,
        kind,
        frames,
        lossy=kind.endswith("video") and not source.lower().endswith(".gif"),
        panels=n_panels,
        opacity_masked=used_any,
    )
    if kind.startswith("threestudio"):
        n = len(frames)
        for i, fr in enumerate(frames):
            fr.azimuth = 360.0 * i / (n - 1)
        vs.camera = _read_parsed_config(trial) if trial else {}
    if vs.lossy:
        vs.notes.append(
            "views decoded from a lossy video; re-run the test stage keeping the PNG folder for "
            "exact numbers"
        )
    return vs


def angle_diff(a: float, b: float) -> float:
    d = (a - b) % 360.0
    return min(d, 360.0 - d)


def select_reference(vs: ViewSet, ref_view: Optional[str], ref_azimuth: Optional[float]):
    """(reference frame index, novel indices, rule). An explicit --ref-view wins: a frame index, the
    file name of a view in the set, or an image file outside the set (appended to `vs.frames` as
    the reference-view render; then every view is novel except, for threestudio sets, those at
    the reference azimuth). Otherwise threestudio sets use the frame nearest the reference azimuth
    (default: the trial's data.default_azimuth_deg, else 0) and exclude every frame at that
    azimuth (the first and the repeated last one) from the novel views; other sets use their
    first frame in natural sort order."""
    n = len(vs.frames)
    if ref_view is not None:
        idx = None
        if re.fullmatch(r"-?\d+", str(ref_view)):
            idx = int(ref_view)
            if not -n <= idx < n:
                raise InputError(
                    f"--ref-view {ref_view} is out of range",
                    f"an index in 0..{n - 1}",
                    "pass a valid frame index or a file name",
                )
            idx %= n
        else:
            base = os.path.basename(str(ref_view))
            in_set = not os.path.isfile(str(ref_view)) or (
                os.path.isdir(vs.source)
                and os.path.realpath(os.path.dirname(os.path.abspath(str(ref_view))))
                == os.path.realpath(vs.source)
            )
            for i, fr in enumerate(vs.frames):
                if fr.name == str(ref_view) or (in_set and fr.name == base):
                    idx = i
            if idx is None and os.path.isfile(str(ref_view)):
                # an image outside the set: the reference-view render; every view of the set is
                # novel except (threestudio sets) those at the reference azimuth
                rgb, _, _ = to_white_rgb(_read_image(str(ref_view), "--ref-view image"), True)
                keep = list(range(n))
                if vs.kind.startswith("threestudio"):
                    az = (
                        ref_azimuth
                        if ref_azimuth is not None
                        else vs.camera.get("default_azimuth_deg", 0.0)
                    )
                    step = 360.0 / max(n - 1, 1)
                    keep = [
                        i for i in range(n) if angle_diff(vs.frames[i].azimuth, az) >= 1e-3 * step
                    ]
                vs.frames.append(Frame(str(ref_view), rgb))
                return n, keep, f"--ref-view {ref_view} (an image outside the view set)"
            if idx is None:
                raise InputError(
                    f"--ref-view {ref_view} is not one of the views in {vs.source}",
                    "a frame index, the file name of one view, or an image file",
                    "list the folder and pick a file",
                )
        novel = [i for i in range(n) if i != idx]
        return idx, novel, f"--ref-view {ref_view}"
    if vs.kind.startswith("threestudio"):
        az = ref_azimuth if ref_azimuth is not None else vs.camera.get("default_azimuth_deg", 0.0)
        dist = [angle_diff(fr.azimuth, az) for fr in vs.frames]
        idx = int(np.argmin(dist))
        step = 360.0 / max(n - 1, 1)
        same = [i for i in range(n) if dist[i] < 1e-3 * step]
        novel = [i for i in range(n) if i not in same and i != idx]
        rule = (
            f"threestudio test frame nearest azimuth {az:g} deg (frame i at 360*i/(n-1) deg); "
            f"frames at that azimuth excluded from the novel views"
        )
        if dist[idx] > 1e-3 * step:
            vs.notes.append(
                f"no test frame at the reference azimuth {az:g} deg; nearest is "
                f"{vs.frames[idx].azimuth:.2f} deg"
            )
        return idx, novel, rule
    return 0, list(range(1, n)), "first view in natural sort order (pass --ref-view to choose)"


def camera_mismatch_notes(camera: Dict[str, Any]) -> List[str]:
    """Warnings when the test cameras cannot reproduce the reference view."""
    notes = []
    for ev, de in (
        ("eval_elevation_deg", "default_elevation_deg"),
        ("eval_camera_distance", "default_camera_distance"),
        ("eval_fovy_deg", "default_fovy_deg"),
    ):
        if ev in camera and de in camera and abs(camera[ev] - camera[de]) > 1e-6:
            notes.append(
                f"{ev}={camera[ev]:g} differs from the reference camera's {de}={camera[de]:g}: "
                "the 'reference view' frame is not the input's viewpoint, LPIPS_ref is off"
            )
    return notes


def load_reference(path: str) -> np.ndarray:
    """The input RGBA, composited on white: float32 [H,W,3]."""
    from ..core.images import load_rgba

    rgba = load_rgba(path, role="--ref image")
    a = rgba[..., 3:4]
    return np.ascontiguousarray(rgba[..., :3] * a + (1.0 - a), dtype=np.float32)


def load_image_folder(
    path: str, flag: str, mask_with_opacity: bool = True
) -> Tuple[List[str], List[np.ndarray]]:
    """Names and white-composited RGB images of a folder (GSO --pred / --gt)."""
    if not os.path.isdir(path):
        raise InputError(
            f"{flag} {path} is not a directory",
            "a folder of view images (000.png, 001.png, ...)",
            "check the path",
        )
    files = list_images(path)
    if not files:
        raise InputError(
            f"{flag} {path} holds no images",
            "PNG/JPEG views (000.png ... 015.png)",
            "point it at the folder that holds the renders",
        )
    imgs = []
    for f in files:
        rgb, _, _ = to_white_rgb(
            _read_image(os.path.join(path, f), f"{flag} image"), mask_with_opacity
        )
        if rgb.shape[0] != rgb.shape[1]:
            raise InputError(
                f"{flag} image {os.path.join(path, f)} is {rgb.shape[1]}x{rgb.shape[0]}, not "
                "square",
                "square views (256 x 256 in the GSO protocol)",
                "render square views",
            )
        imgs.append(rgb)
    return files, imgs
