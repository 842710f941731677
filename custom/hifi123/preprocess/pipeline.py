"""`hifi123 preprocess`: a photo (or a folder of photos) to threestudio's single-image inputs.

For each input `<dir>/<name>.<ext>` (a trailing `_rgba` is dropped from `<name>`), writes to the
output folder (default `<input folder>/preprocessed`):

    <name>_rgba.png          RGBA, --size x --size, object recentred (recenter.py); alpha = mask
    <name>_depth.png         8-bit disparity, near = bright, 0 outside (normals.py)
    <name>_normal.png        8-bit world normals (1 - n) / 2 in cv2 order, 0 outside (normals.py)
    <name>_caption.txt       one line (caption.py); not written with --no-caption
    <name>_sheet.png         contact sheet: rgba on a checkerboard | depth | normals (n + 1) / 2
    <name>_preprocess.json   settings, sources, conversions (the up-to-date check reads it)

Use them in threestudio with `data.image_path=<out>/<name>_rgba.png` (depth and normal paths are
derived from it by replacing `_rgba.png`), `data.default_fovy_deg` / `default_elevation_deg` /
`default_azimuth_deg` equal to `--fovy` / `--elevation` / `--azimuth` (the normal map's frame),
and the caption as the prompt.

Order of work: every input is read and checked, the output folder is checked, and every model
reference is checked (`preflight`) BEFORE any model loads; models load lazily and once. A folder is
processed with a tqdm progress bar; an input whose outputs are up to date (the sidecar's settings
equal the current ones, every output exists and is not older than the input) is skipped
(`--force` redoes it). In a folder, a bad file is reported and the others go on (exit code 2 at
the end); a single bad file is an error.

Steps per image: alpha (kept when meaningful, see inputs.py) or segmentation (segment.py) ->
empty-foreground check -> recentring -> depth: DPT on the recentred image composited on white
(depth.py), or a depth given to `preprocess_image` -> normals from depth under the camera
assumptions (normals.py) -> caption (caption.py) -> files (each written to a temporary name then
renamed; the sidecar last, so an interrupted run is never "up to date").
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..errors import Hifi123Error, InputError
from ..outputs import check_output_dir
from .inputs import ALPHA_THRESHOLD, MAX_WORKING_SIDE, InputImage, discover, output_name, read_image
from .normals import (
    CameraAssumptions,
    camera_to_world,
    disparity_to_depth,
    encode_depth,
    encode_normals,
    normals_from_depth,
)
from .recenter import object_bbox, plan_recentring, recenter

FORMAT_VERSION = 1
MIN_OUTPUT_SIZE = 32
MAX_OUTPUT_SIZE = 4096


@dataclass
class PreprocessConfig:
    size: int = 512
    border_ratio: float = 0.2
    caption: Optional[str] = None  # --caption: use this text, no captioner
    no_caption: bool = False
    caption_model: Optional[str] = None  # default DEFAULT_MODELS["blip2"]
    seg_model: Optional[str] = None  # default DEFAULT_MODELS["segmenter"]
    seg_prompt: str = "an object"
    seg_threshold: float = 0.5
    foreground_labels: Sequence[str] = ()
    ignore_alpha: bool = False
    depth_model: Optional[str] = None  # default DEFAULT_MODELS["dpt"]
    fovy_deg: float = 20.0
    elevation_deg: float = 0.0
    azimuth_deg: float = 0.0
    relief: float = 0.5
    tiny: bool = False
    device: Optional[str] = None
    fp16: bool = False

    def validate(self) -> None:
        def bad(flag, value, expected):
            raise Hifi123Error(
                f"bad option {flag} {value!r}", expected, "see `hifi123 preprocess --help`"
            )

        if not (MIN_OUTPUT_SIZE <= int(self.size) <= MAX_OUTPUT_SIZE):
            bad("--size", self.size, f"an integer in [{MIN_OUTPUT_SIZE}, {MAX_OUTPUT_SIZE}]")
        if not (0.0 <= self.border_ratio < 0.5):
            bad("--border-ratio", self.border_ratio, "a number in [0, 0.5)")
        if not (0.0 < self.seg_threshold < 1.0):
            bad("--seg-threshold", self.seg_threshold, "a number in (0, 1)")
        if not (0.0 < self.fovy_deg < 180.0):
            bad("--fovy", self.fovy_deg, "a field of view in degrees, in (0, 180)")
        if not (-90.0 < self.elevation_deg < 90.0):
            bad("--elevation", self.elevation_deg, "degrees in (-90, 90)")
        if not self.relief > 0:
            bad("--relief", self.relief, "a positive number (depth range / object extent)")
        if self.caption is not None and self.no_caption:
            raise Hifi123Error("--caption and --no-caption both given", "one of them", "drop one")
        if self.caption is not None and not self.caption.strip():
            bad("--caption", self.caption, "a non-empty caption (or --no-caption)")

    @property
    def camera(self) -> CameraAssumptions:
        return CameraAssumptions(self.fovy_deg, self.elevation_deg, self.azimuth_deg, self.relief)


# ------------------------------------------------------------------------------------ models


class Models:
    """Model references (resolved once) and lazily loaded models."""

    def __init__(self, cfg: PreprocessConfig, log: Callable[[str], None] = print) -> None:
        from ..models.loader import DEFAULT_MODELS

        self.cfg = cfg
        self.log = log
        if cfg.tiny:
            from .tiny import tiny_model_dirs

            dirs = tiny_model_dirs()
            self.refs = {
                "seg": cfg.seg_model or dirs["clipseg"],
                "depth": cfg.depth_model or dirs["dpt"],
                "caption": cfg.caption_model or dirs["blip2"],
            }
        else:
            self.refs = {
                "seg": cfg.seg_model or DEFAULT_MODELS["segmenter"],
                "depth": cfg.depth_model or DEFAULT_MODELS["dpt"],
                "caption": cfg.caption_model or DEFAULT_MODELS["blip2"],
            }
        self.fields = {"seg": "--seg-model", "depth": "--depth-model", "caption": "--caption-model"}
        self._loaded: Dict[str, object] = {}

    @property
    def needs_caption_model(self) -> bool:
        return self.cfg.caption is None and not self.cfg.no_caption

    def preflight(self, need_seg: bool, need_depth: bool = True) -> None:
        """Check every model reference that will be used, before loading any."""
        from ..models.loader import preflight

        if need_seg:
            from .segment import check_segmenter

            preflight(self.refs["seg"], self.fields["seg"], files=("config.json",))
            check_segmenter(self.refs["seg"], self.cfg.foreground_labels)
        if need_depth:
            preflight(self.refs["depth"], self.fields["depth"], files=("config.json",))
        if self.needs_caption_model:
            preflight(self.refs["caption"], self.fields["caption"], files=("config.json",))

    def _device_dtype(self):
        import torch

        from ..commands import resolve_device

        device = resolve_device(self.cfg.device)
        dtype = torch.float16 if (self.cfg.fp16 and device.type == "cuda") else torch.float32
        return device, dtype

    def get(self, kind: str):
        if kind not in self._loaded:
            device, dtype = self._device_dtype()
            ref, fld = self.refs[kind], self.fields[kind]
            self.log(f"loading {kind} model {ref}")
            if kind == "seg":
                from .segment import Segmenter

                self._loaded[kind] = Segmenter.load(
                    ref,
                    fld,
                    device=device,
                    dtype=dtype,
                    prompt=self.cfg.seg_prompt,
                    foreground_labels=self.cfg.foreground_labels,
                )
            elif kind == "depth":
                from .depth import DepthEstimator

                self._loaded[kind] = DepthEstimator.load(ref, fld, device=device, dtype=dtype)
            else:
                from .caption import Captioner

                self._loaded[kind] = Captioner.load(ref, fld, device=device, dtype=dtype)
        return self._loaded[kind]


def settings_of(cfg: PreprocessConfig, models: Models, need_seg: bool) -> dict:
    """What the outputs depend on (compared by the up-to-date check)."""
    s = {
        "format": FORMAT_VERSION,
        "size": int(cfg.size),
        "border_ratio": float(cfg.border_ratio),
        "camera": cfg.camera.as_dict(),
        "depth_model": models.refs["depth"],
        "ignore_alpha": bool(cfg.ignore_alpha),
        "fp16": bool(cfg.fp16),
    }
    if need_seg:
        s.update(
            seg_model=models.refs["seg"],
            seg_prompt=cfg.seg_prompt,
            seg_threshold=float(cfg.seg_threshold),
            foreground_labels=[str(x) for x in cfg.foreground_labels],
        )
    if cfg.no_caption:
        s["caption"] = None
    elif cfg.caption is not None:
        s["caption"] = {"text": cfg.caption}
    else:
        s["caption"] = {"model": models.refs["caption"]}
    return json.loads(json.dumps(s))


# ------------------------------------------------------------------------------------- files


@dataclass
class OutputPaths:
    rgba: str
    depth: str
    normal: str
    caption: str
    sheet: str
    sidecar: str

    @classmethod
    def of(cls, out_dir: str, name: str) -> "OutputPaths":
        j = lambda suffix: os.path.join(out_dir, name + suffix)  # noqa: E731
        return cls(
            j("_rgba.png"),
            j("_depth.png"),
            j("_normal.png"),
            j("_caption.txt"),
            j("_sheet.png"),
            j("_preprocess.json"),
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    d = os.path.dirname(path)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}-", suffix=ext, dir=d)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_array_png(path: str, arr: np.ndarray, mode: str) -> None:
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), mode=None)
    assert img.mode == mode, (img.mode, mode)
    _atomic_write(path, lambda p: img.save(p, format="PNG"))


def _write_text(path: str, text: str) -> None:
    def w(p):
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, w)


def is_up_to_date(input_path: str, paths: OutputPaths, settings: dict) -> bool:
    try:
        with open(paths.sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if meta.get("settings") != settings:
        return False
    st = os.stat(input_path)
    if meta.get("input", {}).get("size") != st.st_size:
        return False
    outs = meta.get("outputs") or []
    if not outs:
        return False
    for name in outs + [os.path.basename(paths.sidecar)]:
        p = os.path.join(os.path.dirname(paths.sidecar), name)
        if not os.path.isfile(p) or os.stat(p).st_mtime < st.st_mtime:
            return False
    return True


# ------------------------------------------------------------------------------------- sheet


def contact_sheet(rgba_u8: np.ndarray, depth_u8: np.ndarray, normal_u8: np.ndarray) -> np.ndarray:
    """uint8 [H, 3W + 4 pad, 3]: rgba on a checkerboard | depth | normals as (n + 1) / 2
    (x,y,z = RGB)."""
    from ..core.normals import decode_normal_png

    h, w = depth_u8.shape
    a = rgba_u8[..., 3:4].astype(np.float32) / 255.0
    cell = max(4, h // 16)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where(((yy // cell + xx // cell) % 2 == 0)[..., None], 0.85, 0.65).astype(
        np.float32
    )
    rgb = rgba_u8[..., :3].astype(np.float32) / 255.0 * a + checker * (1 - a)
    mask = rgba_u8[..., 3] > 127
    d = np.repeat(depth_u8[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    n = decode_normal_png(normal_u8)
    nv = np.where(mask[..., None], (n + 1.0) * 0.5, 1.0)
    pad = 4
    sheet = np.ones((h + 2 * pad, 3 * w + 4 * pad, 3), np.float32)
    for k, im in enumerate((rgb, d, nv)):
        x = pad + k * (w + pad)
        sheet[pad : pad + h, x : x + w] = im
    return (np.clip(sheet, 0, 1) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------- one image


@dataclass
class ImageResult:
    input: str
    name: str
    paths: OutputPaths
    skipped: bool = False
    caption: Optional[str] = None
    caption_source: str = ""
    notes: List[str] = field(default_factory=list)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (what `hifi123 run` compares to know a photo changed)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _object_alpha(img: InputImage, cfg: PreprocessConfig, models: Models):
    """The object's alpha [H, W] in [0, 1] (the input's, or segmented) and where it came from."""
    if img.alpha is not None:
        return img.alpha, "input alpha"
    seg = models.get("seg")
    mask = seg.mask(img.rgb, cfg.seg_threshold)
    if not mask.any():
        raise InputError(
            f"input {img.path}: the segmentation found no foreground ({seg.description}, "
            f"threshold {cfg.seg_threshold})",
            "an object in front of a background",
            "cut the object out yourself and pass an RGBA image, or try a lower --seg-threshold, "
            "another --seg-prompt or another --seg-model",
        )
    return mask.astype(
        np.float32
    ), f"segmentation: {seg.description}, threshold {cfg.seg_threshold}"


def _depth_and_normals(cfg: PreprocessConfig, models: Models, mask, on_white, disp_given):
    """(depth PNG, normal PNG, where the depth came from): camera z from the given disparity or
    DPT under the camera assumptions (normals.py), normals from that depth."""
    box = object_bbox(mask)
    extent = max(box[2] - box[0], box[3] - box[1]) / float(cfg.size)
    if disp_given is not None:
        disp = np.where(np.isfinite(disp_given), disp_given, np.nan)
        fill = np.nanmin(disp[mask]) if np.isfinite(disp[mask]).any() else 1.0
        disp = np.where(mask & np.isfinite(disp), disp, fill)
        z = np.where(mask, 1.0 / np.maximum(disp, 1e-12), 0.0)
        depth_source = "given depth (recentred)"
    else:
        est = models.get("depth")
        disp = est.disparity(on_white)
        z = disparity_to_depth(disp, mask, extent, cfg.camera)
        depth_source = f"DPT {est.ref} (relative disparity; camera assumptions for the normals)"
    n_cam = normals_from_depth(z, mask, cfg.fovy_deg)
    return (
        encode_depth(z, mask),
        encode_normals(camera_to_world(n_cam, cfg.camera), mask),
        depth_source,
    )


def _caption(
    cfg: PreprocessConfig, models: Models, on_white, path: str, log: Callable[[str], None]
):
    """(caption or None, where it came from): --caption, BLIP-2, or none with --no-caption."""
    if cfg.no_caption:
        return None, "none (--no-caption): no caption file written"
    if cfg.caption is not None:
        from .caption import clean_user_caption

        return clean_user_caption(cfg.caption), "--caption"
    from .caption import PLACEHOLDER_CAPTION

    cap = models.get("caption")
    caption = cap(on_white)
    source = f"BLIP-2 {cap.ref}"
    if cfg.tiny and not cfg.caption_model:
        source += " (tiny random model: the caption is noise; pass --caption TEXT)"
    if not caption:
        log(
            f"warning: {path}: BLIP-2 returned an empty caption; wrote the placeholder "
            f"{PLACEHOLDER_CAPTION!r} (pass --caption TEXT)"
        )
        return PLACEHOLDER_CAPTION, f"placeholder: BLIP-2 {cap.ref} returned an empty caption"
    return caption, source


def _unused_segmentation(cfg: PreprocessConfig) -> List[str]:
    """A note naming the segmentation options that were set but do not apply: the image keeps
    its own alpha channel, so no segmenter runs for it."""
    default = PreprocessConfig()
    given = [
        flag
        for flag, key in (
            ("--seg-model", "seg_model"),
            ("--seg-prompt", "seg_prompt"),
            ("--seg-threshold", "seg_threshold"),
            ("--foreground-labels", "foreground_labels"),
        )
        if tuple(np.atleast_1d(getattr(cfg, key))) != tuple(np.atleast_1d(getattr(default, key)))
    ]
    if not given:
        return []
    return [
        f"{', '.join(given)} not used: the input's alpha channel is the mask "
        "(pass --ignore-alpha to segment it instead)"
    ]


def _input_image(image, cfg: PreprocessConfig, depth_z: Optional[np.ndarray]) -> InputImage:
    """The image (read when given a path), checked against the size of the given depth."""
    if isinstance(image, InputImage):
        img = image
    else:
        img = read_image(image, cfg.ignore_alpha, max(MAX_WORKING_SIDE, 2 * cfg.size))
    if depth_z is not None and tuple(np.shape(depth_z)) != tuple(img.shape):
        raise InputError(
            f"the given depth is {np.shape(depth_z)} but the image {img.path} is "
            f"{tuple(img.shape)}",
            "a depth map of the image's size",
            "resize the depth map",
        )
    return img


def _recentred(img: InputImage, alpha, cfg: PreprocessConfig, depth_z: Optional[np.ndarray]):
    """Step 2: (the recentring, 8-bit RGBA, the object mask, the RGB on white, the recentred
    disparity of the given depth or None). An object that vanishes at --size is an error."""
    t = plan_recentring(
        alpha > ALPHA_THRESHOLD, cfg.size, cfg.border_ratio, source=f"input {img.path}"
    )
    extra = extra_mask = None
    if depth_z is not None:
        dz = np.asarray(depth_z, dtype=np.float64)
        ok = (alpha > ALPHA_THRESHOLD) & np.isfinite(dz) & (dz > 0)
        extra = np.where(ok, 1.0 / np.where(ok, dz, 1.0), 0.0)  # recentre disparity, not depth
        extra_mask = ok.astype(np.float32)
    rgba, disp_given = recenter(img.rgb, alpha, t, extra, extra_mask)
    rgba_u8 = _to_u8(rgba)
    # what threestudio will read back (8-bit alpha / 255 > 0.5) is the mask of depth and normals
    mask = rgba_u8[..., 3].astype(np.float32) / 255.0 > ALPHA_THRESHOLD
    if not mask.any():
        raise InputError(
            f"input {img.path}: the object vanished when resized to {cfg.size} px",
            "a larger object or a larger --size",
            "increase --size",
        )
    on_white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return t, rgba_u8, mask, on_white, disp_given


def _write_images(paths: OutputPaths, rgba_u8, depth_u8, normal_u8, caption: Optional[str]):
    """Step 5 up to the sidecar: the images, the caption (else a stale one is removed) and the
    contact sheet; returns the paths written, in order."""
    _save_array_png(paths.rgba, rgba_u8, "RGBA")
    _save_array_png(paths.depth, depth_u8, "L")
    _save_array_png(paths.normal, normal_u8, "RGB")
    written = [paths.rgba, paths.depth, paths.normal]
    if caption is not None:
        _write_text(paths.caption, caption + "\n")
        written.append(paths.caption)
    elif os.path.exists(paths.caption):
        os.remove(paths.caption)  # a stale caption from an earlier run would be misleading
    _save_array_png(paths.sheet, contact_sheet(rgba_u8, depth_u8, normal_u8), "RGB")
    written.append(paths.sheet)
    return written


def preprocess_image(
    image,
    out_dir: str,
    cfg: Optional[PreprocessConfig] = None,
    models: Optional[Models] = None,
    *,
    name: Optional[str] = None,
    depth_z: Optional[np.ndarray] = None,
    settings: Optional[dict] = None,
    log: Callable[[str], None] = print,
) -> ImageResult:
    """Preprocess one image (a path or an `InputImage`) into `out_dir` (created if missing).

    `depth_z`: optional camera z-depth of the INPUT image (same H x W, > 0 on the object; e.g. a
    synthetic ground truth); it replaces DPT and is recentred with the image.
    """
    cfg = cfg or PreprocessConfig()
    cfg.validate()
    img = _input_image(image, cfg, depth_z)
    out_dir = check_output_dir(out_dir)
    models = models or Models(cfg, log)
    need_seg = img.alpha is None
    name = name or output_name(img.path)
    paths = OutputPaths.of(out_dir, name)
    notes = list(img.notes) + ([] if need_seg else _unused_segmentation(cfg))

    # 1. the object's alpha
    alpha, alpha_source = _object_alpha(img, cfg, models)

    # 2. recentring
    t, rgba_u8, mask, on_white, disp_given = _recentred(img, alpha, cfg, depth_z)

    # 3. depth -> camera z under the assumptions -> normals
    depth_u8, normal_u8, depth_source = _depth_and_normals(cfg, models, mask, on_white, disp_given)

    # 4. caption
    caption, caption_source = _caption(cfg, models, on_white, img.path, log)

    # 5. files (sidecar last)
    written = _write_images(paths, rgba_u8, depth_u8, normal_u8, caption)
    st = os.stat(img.path)
    meta = {
        "input": {
            "path": img.path,
            "size": st.st_size,
            "mtime": st.st_mtime,
            "sha256": file_sha256(img.path),
        },
        "settings": settings if settings is not None else settings_of(cfg, models, need_seg),
        "outputs": [os.path.basename(p) for p in written],
        "alpha_source": alpha_source,
        "depth_source": depth_source,
        "normal_source": "derived from depth (normals.py): world frame of a threestudio camera at "
        f"elevation {cfg.elevation_deg}, azimuth {cfg.azimuth_deg}, fovy {cfg.fovy_deg} deg"
        + ("" if disp_given is not None else f", relief {cfg.relief}"),
        "caption": caption,
        "caption_source": caption_source,
        "recentring": t.as_dict(),
        "conversions": notes,
    }
    _write_text(paths.sidecar, json.dumps(meta, indent=2) + "\n")
    return ImageResult(img.path, name, paths, False, caption, caption_source, notes)


# --------------------------------------------------------------------------------- batch


@dataclass
class Summary:
    out_dir: str
    done: List[ImageResult] = field(default_factory=list)
    skipped: List[ImageResult] = field(default_factory=list)
    failed: List[tuple] = field(default_factory=list)  # (input path, Hifi123Error)

    @property
    def ok(self) -> bool:
        return not self.failed


def default_out_dir(target: str) -> str:
    target = os.path.abspath(os.path.expanduser(target))
    base = target if os.path.isdir(target) else os.path.dirname(target)
    return os.path.join(base, "preprocessed")


def _check_output_names(files: List[str], out_dir: str, target: str) -> None:
    """One output set per input (distinct output names), and no output path over an input."""
    by_name: Dict[str, str] = {}
    inputs = {os.path.realpath(f) for f in files}
    for f in files:
        n = output_name(f)
        if n in by_name:
            raise InputError(
                f"{os.path.basename(by_name[n])} and {os.path.basename(f)} would both write "
                f"{n}_rgba.png",
                "inputs with distinct names (the extension and a trailing _rgba are dropped)",
                "rename one of them",
            )
        by_name[n] = f
        outputs = asdict(OutputPaths.of(out_dir, n)).values()
        clash = [p for p in outputs if os.path.realpath(p) in inputs]
        if clash:
            raise InputError(
                f"writing the outputs of {f} into {out_dir} would overwrite the input {clash[0]}",
                "an output folder that does not hold the inputs' output names",
                f"pass another folder: hifi123 preprocess {target} --out DIR",
            )


def _read_inputs(
    files: List[str],
    cfg: PreprocessConfig,
    single: bool,
    record_failure: Callable[[str, Hifi123Error], None],
) -> list:
    """Step 1: (path, needs segmentation, the decoded image for a single input) per readable
    input; an unreadable one goes to `record_failure`. A batch's images are not kept."""
    readable = []
    for f in files:
        try:
            img = read_image(f, cfg.ignore_alpha, max(MAX_WORKING_SIDE, 2 * cfg.size))
        except Hifi123Error as err:
            record_failure(f, err)
            continue
        readable.append((f, img.alpha is None, img if single else None))
        del img
    return readable


def _outdated(
    readable: list,
    cfg: PreprocessConfig,
    models: Models,
    out_dir: str,
    force: bool,
    summary: Summary,
    say: Callable[[str], None],
) -> list:
    """Step 2: (path, settings, image or None) per input to process; the inputs whose outputs
    are up to date (and not `force`d) go to `summary.skipped`."""
    todo = []
    for f, need_seg, img in readable:
        name = output_name(f)
        paths = OutputPaths.of(out_dir, name)
        settings = settings_of(cfg, models, need_seg)
        if not force and is_up_to_date(f, paths, settings):
            summary.skipped.append(ImageResult(f, name, paths, skipped=True))
            say(f"{os.path.basename(f)}: up to date, skipped ({paths.rgba}; --force redoes it)")
        else:
            todo.append((f, settings, img))
    return todo


def preprocess(
    target: str,
    out: Optional[str] = None,
    cfg: Optional[PreprocessConfig] = None,
    *,
    force: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> Summary:
    """Preprocess a file or every image in a folder. A single bad file raises; in a folder, bad
    files are collected in `Summary.failed` and the others are processed."""
    cfg = cfg or PreprocessConfig()
    cfg.validate()
    files = discover(target)
    single = os.path.isfile(os.path.expanduser(target))
    out_dir = check_output_dir(out or default_out_dir(target))
    summary = Summary(out_dir)

    # names: one output set per input, never over an input
    _check_output_names(files, out_dir, target)

    # 1. read and check every input before any model loads (decoded again when processed, so a
    #    large folder is never held in memory)
    say = (lambda m: None) if quiet else log

    def record_failure(f: str, err: Hifi123Error) -> None:
        """A single input fails the command; in a batch the file is listed and the rest go on."""
        if single:
            raise err
        summary.failed.append((f, err))
        say(f"{os.path.basename(f)}: FAILED: {err.what}")

    readable = _read_inputs(files, cfg, single, record_failure)

    # 2. outputs that are up to date are skipped
    models = Models(cfg, say)
    todo = _outdated(readable, cfg, models, out_dir, force, summary, say)

    # 3. models: every reference checked now, weights loaded on first use
    if todo:
        models.preflight(need_seg=any("seg_model" in t[1] for t in todo))

    from tqdm.auto import tqdm

    bar = tqdm(todo, desc="preprocess", unit="image", disable=quiet or single or not todo)
    if not single and not quiet:
        say = models.log = tqdm.write
    for f, settings, img in bar:
        name = output_name(f)
        try:
            res = preprocess_image(
                img or f, out_dir, cfg, models, name=name, settings=settings, log=say
            )
        except Hifi123Error as err:
            record_failure(f, err)
            continue
        summary.done.append(res)
        for note in res.notes:
            say(f"{os.path.basename(f)}: {note}")
        cap = "no caption" if res.caption is None else f"caption {res.caption!r}"
        say(f"{os.path.basename(f)} -> {res.paths.rgba} ({cap}; from {res.caption_source})")
    bar.close()
    return summary
