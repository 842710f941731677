"""`hifi123 preprocess`: file names and value conventions as threestudio's single-image datamodule
reads them, recentring geometry, depth / normal conventions against the synthetic sample's ground
truth, captions, batch + up-to-date skipping, conversions and bad inputs.

cv2 may be missing, so the unmarked tests emulate its reads with PIL: `cv2.imread(p,
IMREAD_UNCHANGED)` returns BGR(A) channel order, i.e. PIL's array with the colour channels reversed.
The `threestudio`-marked test reads the outputs with threestudio's own loading code.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
from hifi123.errors import Hifi123Error, InputError
from hifi123.models import loader
from hifi123.preprocess import cli as pp_cli
from hifi123.preprocess import pipeline as pp
from hifi123.preprocess.caption import postprocess_caption
from hifi123.preprocess.inputs import read_image
from hifi123.preprocess.normals import camera_to_world, normals_from_depth
from hifi123.preprocess.segment import Segmenter, foreground_ids
from hifi123.sample import make_sample as ms
from PIL import Image

SAMPLE = str(ms.DEFAULT_ASSETS_DIR / "sample_rgba.png")


# ------------------------------------------------------------------------------ helpers


def cfg_for(dirs, **kw):
    kw.setdefault("caption", "a toy")
    kw.setdefault("depth_model", dirs["dpt"])
    kw.setdefault("seg_model", dirs["clipseg"])
    kw.setdefault("caption_model", dirs["blip2"])
    return pp.PreprocessConfig(device="cpu", **kw)


def cv2_read_unchanged(path):
    """What cv2.imread(path, cv2.IMREAD_UNCHANGED) returns, emulated with PIL."""
    with Image.open(path) as im:
        a = np.asarray(im).copy()
    if a.ndim == 3:
        a = a[..., ::-1] if a.shape[-1] == 3 else a[..., [2, 1, 0, 3]]
    return a


def sidecar(out_dir, name):
    with open(os.path.join(out_dir, f"{name}_preprocess.json")) as f:
        return json.load(f)


def out_to_in(meta, n):
    """Input pixel indices (nearest) of output pixel centres 0..n-1, from the sidecar transform."""
    r = meta["recentring"]
    xs = r["x0"] + (np.arange(n) + 0.5) * r["side"] / r["size"]
    ys = r["y0"] + (np.arange(n) + 0.5) * r["side"] / r["size"]
    return np.floor(ys).astype(int), np.floor(xs).astype(int)


def bbox(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def write_png16(path, arr):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB(A))."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    with open(path, "wb") as f:
        f.write(
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b"")
        )
    return str(path)


def object_rgba(h, w, box, colour=(200, 60, 40)):
    """uint8 RGBA [h, w, 4]: an ellipse filling `box` = (x0, y0, x1, y1), transparent elsewhere."""
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    inside = ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + (
        (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    ) ** 2 <= 1
    a = np.zeros((h, w, 4), np.uint8)
    a[inside] = (*colour, 255)
    return a


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    for fn in ("load_dpt", "load_segmenter", "load_blip2"):
        monkeypatch.setattr(loader, fn, boom)


def run_cli(capsys, *argv):
    code = pp_cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ conventions


def test_files_have_threestudio_names_and_encodings(tiny, tmp_path):
    geo = ms.load_sample_geometry()
    res = pp.preprocess_image(
        SAMPLE, str(tmp_path), cfg_for(tiny, size=128), depth_z=geo["depth_z"]
    )
    image_path = res.paths.rgba
    assert os.path.basename(image_path) == "sample_rgba.png"
    for p in (
        image_path.replace("_rgba.png", "_depth.png"),
        image_path.replace("_rgba.png", "_normal.png"),
    ):
        assert os.path.isfile(p)  # the datamodule derives these paths from image_path
    for suffix in ("_caption.txt", "_sheet.png", "_preprocess.json"):
        assert os.path.isfile(os.path.join(tmp_path, "sample" + suffix))

    # image: cv2 reads BGRA, the datamodule converts BGRA->RGBA, mask = alpha/255 > 0.5
    bgra = cv2_read_unchanged(image_path)
    assert bgra.shape == (128, 128, 4) and bgra.dtype == np.uint8
    rgba = bgra[..., [2, 1, 0, 3]].astype(np.float32) / 255.0
    mask = rgba[..., 3] > 0.5
    assert 0.1 < mask.mean() < 0.6
    with Image.open(image_path) as im:
        assert im.mode == "RGBA"

    # depth: one channel, uint8, /255; min-max inside the mask, 0 outside
    depth = cv2_read_unchanged(res.paths.depth)
    assert depth.shape == (128, 128) and depth.dtype == np.uint8
    assert depth[~mask].max() == 0
    assert depth[mask].min() == 0 and depth[mask].max() == 255

    # normal: 3 channels in cv2 order; threestudio's loss uses 1 - 2 * v as the world normal
    v = cv2_read_unchanged(res.paths.normal).astype(np.float32) / 255.0
    assert v.shape == (128, 128, 3)
    n = 1.0 - 2.0 * v[mask]
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=0.02)
    assert v[~mask].max() == 0

    meta = sidecar(tmp_path, "sample")
    assert meta["alpha_source"] == "input alpha"
    assert open(res.paths.caption).read() == "a toy\n"


def test_dpt_path_writes_valid_depth_and_normals(tiny, tmp_path):
    res = pp.preprocess_image(SAMPLE, str(tmp_path), cfg_for(tiny, size=96))
    mask = cv2_read_unchanged(res.paths.rgba)[..., 3] > 127
    depth = cv2_read_unchanged(res.paths.depth)
    assert depth[~mask].max() == 0 and depth[mask].max() == 255
    n = 1.0 - 2.0 * cv2_read_unchanged(res.paths.normal)[mask].astype(np.float32) / 255.0
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0, atol=0.02)
    # normals face the reference camera at azimuth 0 (on +x): world x component >= 0
    assert (n[:, 0] > -0.02).all()
    assert "DPT" in sidecar(tmp_path, "sample")["depth_source"]


@pytest.mark.parametrize(
    "shape,box,border",
    [
        ((200, 300), (40, 70, 160, 130), 0.2),  # wide object, off-centre
        ((300, 180), (100, 20, 160, 260), 0.1),  # tall object
        ((160, 160), (0, 0, 160, 100), 0.3),  # touching the image border
    ],
)
def test_recentring_keeps_aspect_ratio_and_border(tiny, tmp_path, shape, box, border):
    h, w = shape
    src = tmp_path / "obj.png"
    Image.fromarray(object_rgba(h, w, box)).save(src)
    size = 128
    res = pp.preprocess_image(
        str(src), str(tmp_path / "out"), cfg_for(tiny, size=size, border_ratio=border)
    )
    out = cv2_read_unchanged(res.paths.rgba)
    x0, y0, x1, y1 = bbox(out[..., 3] > 127)
    bw, bh = x1 - x0, y1 - y0
    iw, ih = box[2] - box[0], box[3] - box[1]
    # longer side fills 1 - 2 border
    assert max(bw, bh) == pytest.approx((1 - 2 * border) * size, abs=1.5)
    assert bw / bh == pytest.approx(iw / ih, rel=0.03)  # aspect ratio kept
    assert (x0 + x1) / 2 == pytest.approx(size / 2, abs=1.0)  # centred
    assert (y0 + y1) / 2 == pytest.approx(size / 2, abs=1.0)
    assert min(x0, y0, size - x1, size - y1) >= border * size - 1.5  # the border is empty
    rgb = out[..., [2, 1, 0]][out[..., 3] == 255]
    assert np.abs(rgb.astype(int) - (200, 60, 40)).max() <= 1  # no halo from the background colour


def test_sample_round_trip_keeps_alpha_bbox_and_border(tiny, tmp_path):
    geo = ms.load_sample_geometry()
    size, border = 512, 0.2
    res = pp.preprocess_image(
        SAMPLE, str(tmp_path), cfg_for(tiny, size=size, border_ratio=border), depth_z=geo["depth_z"]
    )
    in_mask = geo["mask"]
    out_mask = cv2_read_unchanged(res.paths.rgba)[..., 3] > 127
    meta = sidecar(tmp_path, "sample")
    iy, ix = out_to_in(meta, size)
    inside = (
        (iy[:, None] >= 0)
        & (iy[:, None] < in_mask.shape[0])
        & (ix[None] >= 0)
        & (ix[None] < in_mask.shape[1])
    )
    expect = np.zeros_like(out_mask)
    expect[inside] = in_mask[np.clip(iy, 0, 511)[:, None], np.clip(ix, 0, 511)[None]][inside]
    iou = (expect & out_mask).sum() / (expect | out_mask).sum()
    assert iou > 0.97, iou  # the given alpha, up to resampling
    ib, ob = bbox(in_mask), bbox(out_mask)
    iw, ih = ib[2] - ib[0], ib[3] - ib[1]
    ow, oh = ob[2] - ob[0], ob[3] - ob[1]
    assert max(ow, oh) == pytest.approx((1 - 2 * border) * size, abs=1.5)
    assert ow / oh == pytest.approx(iw / ih, rel=0.02)
    assert ((ob[0] + ob[2]) / 2, (ob[1] + ob[3]) / 2) == pytest.approx(
        (size / 2, size / 2), abs=1.0
    )

    # depth: near = bright, and it is the sample's true disparity (recentred)
    depth = cv2_read_unchanged(res.paths.depth).astype(np.float64)
    core = out_mask & expect
    true_z = geo["depth_z"][np.clip(iy, 0, 511)[:, None], np.clip(ix, 0, 511)[None]]
    disp = 1.0 / true_z[core]
    assert np.corrcoef(depth[core], disp)[0, 1] > 0.99
    near, far = np.argmin(true_z[core]), np.argmax(true_z[core])
    assert depth[core][near] > 245 and depth[core][far] < 10

    # normals: derived from the given depth, they match the sample's world normals
    n = 1.0 - 2.0 * cv2_read_unchanged(res.paths.normal)[core].astype(np.float64) / 255.0
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    gt = geo["normal_world"][np.clip(iy, 0, 511)[:, None], np.clip(ix, 0, 511)[None]][core]
    ang = np.degrees(np.arccos(np.clip((n * gt).sum(-1), -1, 1)))
    assert np.median(ang) < 3.0 and np.percentile(ang, 90) < 10.0


def test_normals_from_true_depth_match_the_sample():
    geo = ms.load_sample_geometry()
    n = camera_to_world(
        normals_from_depth(geo["depth_z"].astype(np.float64), geo["mask"], geo["fovy_deg"]),
        pp.PreprocessConfig().camera,
    )
    ang = np.degrees(np.arccos(np.clip((n * geo["normal_world"]).sum(-1), -1, 1)))[geo["mask"]]
    assert np.median(ang) < 1.5 and np.percentile(ang, 90) < 5.0
    # the file encoding decodes with threestudio's formula (cv2 BGR read, 1 - 2 v) to the normals
    from hifi123.preprocess.normals import encode_normals

    png = encode_normals(n, geo["mask"])  # PIL RGB order, as written to disk
    back = 1.0 - 2.0 * png[..., ::-1].astype(np.float64) / 255.0
    back /= np.linalg.norm(back, axis=-1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip((back * n).sum(-1), -1, 1)))[geo["mask"]]
    assert ang.max() < 1.0  # 8-bit quantisation only
    assert np.all(png[~geo["mask"]] == 0)


# ------------------------------------------------------------------------------ segmentation


def test_foreground_label_selection():
    labels = {0: "background", 1: "person", 2: "cat"}
    assert foreground_ids(labels, (), "m") == [1, 2]
    assert foreground_ids(labels, ("Cat",), "m") == [2]
    assert foreground_ids(labels, ("1", "cat"), "m") == [1, 2]
    with pytest.raises(Hifi123Error, match="no label 'dog'.*0=background"):
        foreground_ids(labels, ("dog",), "m")
    with pytest.raises(Hifi123Error, match="no label called 'background'"):
        foreground_ids({0: "wall", 1: "floor"}, (), "m")


@pytest.mark.parametrize("kind", ["clipseg", "segformer"])
def test_photo_without_alpha_is_segmented(tiny, tmp_path, kind):
    rgb = np.full((80, 100, 3), 235, np.uint8)
    rgb[20:60, 30:70] = (30, 90, 200)
    src = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(src, quality=95)
    seg = Segmenter.load(tiny[kind], prompt="a blue square")
    p = seg.probability(rgb.astype(np.float32) / 255.0)
    assert p.shape == (80, 100) and p.min() >= 0 and p.max() <= 1
    # a tiny random model: threshold ~0 makes the whole frame the object, ~1 finds nothing
    cfg = cfg_for(tiny, size=64, seg_model=tiny[kind], seg_threshold=1e-6)
    res = pp.preprocess_image(str(src), str(tmp_path / "out"), cfg)
    assert "segmentation" in sidecar(tmp_path / "out", "photo")["alpha_source"]
    assert (cv2_read_unchanged(res.paths.rgba)[..., 3] > 127).any()
    with pytest.raises(InputError, match="no foreground") as e:
        pp.preprocess_image(
            str(src),
            str(tmp_path / "out"),
            cfg_for(tiny, size=64, seg_model=tiny[kind], seg_threshold=1 - 1e-7),
        )
    assert "RGBA" in e.value.fix


def test_opaque_alpha_is_ignored_and_transparent_alpha_is_kept(tmp_path):
    a = object_rgba(64, 64, (10, 10, 50, 40))
    Image.fromarray(a).save(tmp_path / "cut.png")
    img = read_image(str(tmp_path / "cut.png"))
    assert img.alpha is not None and np.array_equal(img.alpha > 0.5, a[..., 3] > 127)
    a[..., 3] = 255
    Image.fromarray(a).save(tmp_path / "opaque.png")
    img = read_image(str(tmp_path / "opaque.png"))
    assert img.alpha is None and any("fully opaque" in n for n in img.notes)


# ------------------------------------------------------------------------------ captions


def test_caption_postprocessing_follows_make_it_3d():
    assert (
        postprocess_caption("there is a close up of a cat on a black background")
        == "a photo of a cat on a ground"
    )
    assert (
        postprocess_caption("  a  red\nmug on a white background\x00 ") == "a red mug on a ground"
    )


def test_caption_sources_are_stated(tiny, tmp_path):
    img = str(tmp_path / "mug.png")
    Image.fromarray(object_rgba(64, 64, (8, 8, 56, 48))).save(img)
    # --no-caption: no file, and the sidecar says so
    pp.preprocess_image(img, str(tmp_path), cfg_for(tiny, size=64, caption=None, no_caption=True))
    assert not os.path.exists(tmp_path / "mug_caption.txt")
    assert sidecar(tmp_path, "mug")["caption_source"].startswith("none (--no-caption)")
    # tiny BLIP-2 through the loader: a (noise) caption, labelled as such
    res = pp.preprocess_image(
        img, str(tmp_path), cfg_for(tiny, size=64, caption=None, caption_model=None, tiny=True)
    )
    text = open(tmp_path / "mug_caption.txt").read()
    assert text.endswith("\n") and text.strip() == res.caption and "\n" not in res.caption
    assert "BLIP-2" in res.caption_source
    with pytest.raises(Hifi123Error, match="--caption and --no-caption"):
        cfg_for(tiny, caption="x", no_caption=True).validate()


# ------------------------------------------------------------------------------ batch + CLI


def test_folder_batch_skips_up_to_date_and_reports_bad_files(tiny, tmp_path, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    Image.fromarray(object_rgba(64, 64, (5, 10, 60, 50))).save(d / "a.png")
    Image.fromarray(object_rgba(72, 64, (10, 5, 40, 70), (20, 180, 30))).save(d / "b_rgba.png")
    (d / "broken.jpg").write_text("not an image")
    (d / "notes.txt").write_text("ignored: not an image extension")
    out = tmp_path / "out"
    args = [
        str(d),
        "--out",
        str(out),
        "--size",
        "64",
        "--caption",
        "a thing",
        "--depth-model",
        tiny["dpt"],
    ]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 2  # one file failed, the others were written
    assert "broken.jpg" in err and "not a readable image" in err
    assert "2 written, 0 up to date, 1 failed" in stdout
    for n in ("a", "b"):
        assert os.path.isfile(out / f"{n}_rgba.png") and os.path.isfile(out / f"{n}_sheet.png")
    (d / "broken.jpg").unlink()

    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "0 written, 2 up to date" in stdout

    st = os.stat(d / "a.png")  # a newer input is redone
    os.utime(d / "a.png", (st.st_atime, os.stat(out / "a_rgba.png").st_mtime + 10))
    code, stdout, _ = run_cli(capsys, *args)
    assert "1 written, 1 up to date" in stdout

    code, stdout, _ = run_cli(capsys, *args[:-4], "--caption", "another thing", *args[-2:])
    assert "2 written, 0 up to date" in stdout  # other settings: redone
    assert open(out / "b_caption.txt").read() == "another thing\n"

    # our outputs are never taken as inputs, and an input is never overwritten
    code, _, err = run_cli(capsys, str(out), "--size", "64", "--caption", "x")
    assert code == 2 and "holds no images" in err
    code, _, err = run_cli(capsys, str(d), "--out", str(d), "--size", "64", "--caption", "x")
    assert code == 2 and "would overwrite the input" in err and "b_rgba.png" in err


def test_cli_tiny_end_to_end(tiny, tmp_path, capsys):
    code, stdout, err = run_cli(
        capsys, SAMPLE, "--out", str(tmp_path), "--size", "64", "--tiny", "--quiet"
    )
    assert code == 0, err
    assert "1 written" in stdout and f"data.image_path={tmp_path / 'sample_rgba.png'}" in stdout
    meta = sidecar(tmp_path, "sample")
    assert "tiny random model: the caption is noise" in meta["caption_source"]
    with Image.open(tmp_path / "sample_sheet.png") as im:
        assert im.size == (3 * 64 + 16, 64 + 8)


def test_segmentation_options_unused_on_a_cutout_are_named(tiny, tmp_path, capsys):
    """The sample has its own alpha: no segmenter runs, and segmentation options that were set
    are named as unused (with the way to use them) instead of being dropped silently."""
    code, stdout, err = run_cli(
        capsys, SAMPLE, "--out", str(tmp_path / "a"), "--size", "64", "--tiny",
        "--foreground-labels", "cat", "--seg-threshold", "0.3",
    )  # fmt: skip
    assert code == 0, err
    (note,) = [n for n in sidecar(tmp_path / "a", "sample")["conversions"] if "not used" in n]
    assert "--seg-threshold, --foreground-labels not used" in note and "--ignore-alpha" in note
    assert note in stdout
    code, stdout, err = run_cli(
        capsys, SAMPLE, "--out", str(tmp_path / "b"), "--size", "64", "--tiny"
    )
    assert code == 0 and "not used" not in stdout
    assert not [n for n in sidecar(tmp_path / "b", "sample")["conversions"] if "not used" in n]


# ------------------------------------------------------------------------------ conversions


def _cmyk(path):
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    return str(path)


def _gray16(path):
    a = np.full((48, 48), 40000, np.uint16)
    Image.fromarray(a).save(path)
    return str(path)


def _rgba16(path):
    a = np.zeros((48, 48, 4), np.uint16)
    a[10:40, 8:30] = (65535, 32768, 0, 65535)
    return write_png16(path, a)


def _gray(path):
    Image.fromarray(np.full((48, 48), 90, np.uint8), "L").save(path)
    return str(path)


def _palette(path):
    im = Image.fromarray(object_rgba(48, 48, (6, 6, 40, 30))).convert("P")
    im.info["transparency"] = 0
    im.save(path, transparency=0)
    return str(path)


@pytest.mark.parametrize("case", ["cmyk", "gray16", "rgba16", "gray", "palette"])
def test_conversions(case, tiny, tmp_path):
    ext = "jpg" if case == "cmyk" else "png"
    path = {
        "cmyk": _cmyk,
        "gray16": _gray16,
        "rgba16": _rgba16,
        "gray": _gray,
        "palette": _palette,
    }[case](tmp_path / f"in.{ext}")
    img = read_image(path)
    assert img.rgb.shape == (48, 48, 3) and img.rgb.dtype == np.float32
    if case == "cmyk":
        assert img.rgb[24, 24] == pytest.approx([1.0, 0.0, 0.0], abs=0.05)
        assert any("CMYK" in n for n in img.notes)
    elif case == "gray16":
        assert img.rgb[0, 0] == pytest.approx([40000 / 65535] * 3, abs=1e-4)  # scaled, not clipped
        assert any("16-bit" in n for n in img.notes)
    elif case == "rgba16":
        assert img.alpha is not None and img.rgb[20, 20] == pytest.approx([1.0, 0.5, 0.0], abs=0.01)
    elif case == "gray":
        assert img.rgb[0, 0] == pytest.approx([90 / 255] * 3) and img.alpha is None
    else:
        assert img.alpha is not None and (img.alpha > 0.5).sum() > 100
    # and each goes through the whole pipeline (with a segmenter when there is no alpha)
    cfg = cfg_for(tiny, size=48, seg_threshold=1e-6)
    res = pp.preprocess_image(path, str(tmp_path / "out"), cfg)
    assert cv2_read_unchanged(res.paths.rgba).shape == (48, 48, 4)


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not_image",
        "tiny_image",
        "empty_alpha",
        "unwritable_out",
        "out_is_file",
        "empty_folder",
        "bad_border",
        "seg_labels",
    ],
)
def test_bad_inputs_fail_early_with_clear_errors(case, tiny, tmp_path, capsys, no_model_loading):
    good = tmp_path / "good.png"
    Image.fromarray(object_rgba(64, 64, (8, 8, 56, 40))).save(good)
    args = [
        str(good),
        "--out",
        str(tmp_path / "out"),
        "--depth-model",
        tiny["dpt"],
        "--caption",
        "x",
    ]
    if case == "missing":
        args[0], expect = str(tmp_path / "nope.png"), ("input not found", "nope.png", "fix:")
    elif case == "not_image":
        (tmp_path / "fake.png").write_text("hello")
        args[0], expect = (
            str(tmp_path / "fake.png"),
            ("not a readable image", "fake.png", "re-export"),
        )
    elif case == "tiny_image":
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "small.png")
        args[0], expect = (
            str(tmp_path / "small.png"),
            ("30x20 pixels: too small", "at least 32x32", "larger"),
        )
    elif case == "empty_alpha":
        a = np.zeros((64, 64, 4), np.uint8)
        a[..., 3] = 40
        Image.fromarray(a).save(tmp_path / "ghost.png")
        args[0], expect = (
            str(tmp_path / "ghost.png"),
            ("empty foreground", "alpha", "--ignore-alpha"),
        )
    elif case == "unwritable_out":
        (tmp_path / "afile").write_text("x")
        args[2], expect = (
            str(tmp_path / "afile" / "sub"),
            ("cannot write to the output folder", "afile", "--out DIR"),
        )
    elif case == "out_is_file":
        (tmp_path / "afile").write_text("x")
        args[2], expect = str(tmp_path / "afile"), ("is a file", "afile", "--out DIR")
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args[0], expect = str(tmp_path / "empty"), ("holds no images", "empty", "fix:")
    elif case == "bad_border":
        args += ["--border-ratio", "0.6"]
        expect = ("--border-ratio", "[0, 0.5)", "fix:")
    else:  # a semantic-segmentation label that does not exist: found from config.json alone
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "photo.png")
        args[0] = str(tmp_path / "photo.png")
        args += ["--seg-model", tiny["segformer"], "--foreground-labels", "dog"]
        expect = ("no label 'dog'", "1=foreground", "--foreground-labels")
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert "Traceback" not in err
    for e in expect:
        assert e in err, (e, err)


def test_missing_model_is_named_before_loading(tmp_path, capsys, no_model_loading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(
        capsys,
        SAMPLE,
        "--out",
        str(tmp_path),
        "--caption",
        "x",
        "--depth-model",
        "nobody/not-cached-dpt",
    )
    assert (
        code == 2
        and "nobody/not-cached-dpt" in err
        and "--depth-model" in err
        and "tiny-models" in err
    )


# ------------------------------------------------------------------------------ threestudio


def test_dpt_disparity_to_depth_is_affine_invariant_and_near_is_small():
    from hifi123.preprocess.normals import CameraAssumptions, disparity_to_depth

    geo = ms.load_sample_geometry()
    m = geo["mask"]
    disp = np.where(m, 1.0 / np.where(m, geo["depth_z"], 1.0), 0.0)
    cam = CameraAssumptions(relief=0.5)
    z1 = disparity_to_depth(disp, m, 0.6, cam)
    # MiDaS disparity: unknown scale and shift
    z2 = disparity_to_depth(3.0 * disp - 7.0, m, 0.6, cam)
    assert np.allclose(z1, z2) and (z1[~m] == 0).all()
    # nearest = brightest
    assert np.argmin(np.where(m, z1, np.inf)) == np.argmax(np.where(m, disp, -np.inf))
    extent = 0.6 * 2 * np.tan(np.radians(10.0))
    # relief * object extent
    assert z1[m].max() - z1[m].min() == pytest.approx(0.5 * extent, rel=1e-6)


def test_a_large_photo_is_downsized_before_any_work(tmp_path):
    """A photo far larger than the outputs is brought down to the working size first (aspect kept,
    said in the notes), so preprocessing time and memory do not grow with the camera's
    megapixels."""
    from hifi123.preprocess.inputs import MAX_WORKING_SIDE, read_image

    big = tmp_path / "big.png"
    arr = np.zeros((3000, 4500, 3), np.uint8)
    arr[1000:2000, 1500:3000] = (200, 50, 50)
    Image.fromarray(arr).save(big)
    img = read_image(str(big))
    assert img.rgb.shape[:2] == (MAX_WORKING_SIDE * 2 // 3, MAX_WORKING_SIDE)
    assert any("downsized from 4500x3000" in n for n in img.notes)
    small = read_image(str(big), max_side=6000)  # a --size large enough keeps the photo whole
    assert small.rgb.shape[:2] == (3000, 4500) and not any("downsized" in n for n in small.notes)
