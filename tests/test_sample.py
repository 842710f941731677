"""Tests of the procedural sample object and its threestudio-convention assets.

The camera / ray conventions are re-implemented here independently (from the threestudio
formulas), so a convention slip in ``hifi123.sample.make_sample`` breaks these tests.
"""

import math

import numpy as np
import pytest
from hifi123.sample import make_sample as ms
from PIL import Image

ASSETS = ms.DEFAULT_ASSETS_DIR
PNGS = (
    "sample_coarse_az090_rgba.png",
    "sample_rgba.png",
    "sample_depth.png",
    "sample_normal.png",
    "bg_texture.png",
)


def _png(name, root=ASSETS):
    with Image.open(root / name) as im:
        return im.mode, np.asarray(im).copy()


@pytest.fixture(scope="module")
def geo():
    return ms.load_sample_geometry()


@pytest.fixture(scope="module")
def mask():
    mode, rgba = _png("sample_rgba.png")
    assert mode == "RGBA"
    return rgba[..., 3] > 127  # threestudio: alpha / 255 > 0.5


# ------------------------------------------------------------------------ independent conventions
def _ts_c2w(elev_deg, azim_deg, dist):
    """threestudio: position on the orbit, lookat/right/up from world +z, [right, up, -lookat]."""
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    pos = dist * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    lookat = -pos / np.linalg.norm(pos)
    right = np.cross(lookat, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, lookat)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -lookat], axis=1)
    c2w[:3, 3] = pos
    return c2w


def _ts_ray_world(c2w, fovy_deg, H, W, i, j):
    """World ray direction through pixel (col i, row j), threestudio's get_ray_directions."""
    f = 0.5 * H / math.tan(0.5 * math.radians(fovy_deg))
    d = np.stack([(i + 0.5 - W / 2) / f, -(j + 0.5 - H / 2) / f, -np.ones_like(i, float)], -1)
    return d @ c2w[:3, :3].T


def _march(origin, dirs, steps=600):
    """Plain sphere tracing with sample_sdf; returns hit mask and t along unit directions."""
    u = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    far = np.linalg.norm(origin) + 0.7
    t = np.full(len(u), np.linalg.norm(origin) - 0.7)
    hit = np.zeros(len(u), bool)
    for _ in range(steps):
        d = ms.sample_sdf(origin + t[:, None] * u)
        hit |= d < 1e-6
        gone = t > far
        if np.all(hit | gone):
            break
        t = np.where(hit | gone, t, t + d)
    return hit, t


def _backproject_shipped(geo, mask):
    _, dpng = _png("sample_depth.png")
    v = dpng.astype(np.float64) / 255.0  # what threestudio sees
    disp = geo["disparity_min"] + v * (geo["disparity_max"] - geo["disparity_min"])
    z = np.where(mask, 1.0 / disp, 0.0)
    H, W = z.shape
    jj, ii = np.nonzero(mask)
    d = _ts_ray_world(geo["c2w"], geo["fovy_deg"], H, W, ii.astype(float), jj.astype(float))
    pts = geo["c2w"][:3, 3] + z[jj, ii][:, None] * d  # dir_cam has z = -1 -> scale by z-depth
    # the module's helper must agree with the independent formula
    pts_mod = ms.backproject_depth(z, geo["c2w"], geo["fovy_deg"])[mask]
    np.testing.assert_allclose(pts_mod, pts, atol=1e-9)
    return pts, jj, ii


# -------------------------------------------------------------------------------------- tests
def test_regeneration_is_bit_identical(tmp_path):
    ms.write_sample_assets(tmp_path)
    for name in PNGS:
        m_new, a_new = _png(name, tmp_path)
        m_old, a_old = _png(name, ASSETS)
        assert m_new == m_old, name
        assert a_new.dtype == a_old.dtype and a_new.shape == a_old.shape, name
        assert np.array_equal(a_new, a_old), f"{name} differs: regenerate the assets"
    assert (tmp_path / "sample_caption.txt").read_text() == (
        ASSETS / "sample_caption.txt"
    ).read_text()
    new, old = ms.load_sample_geometry(tmp_path), ms.load_sample_geometry()
    assert sorted(new) == sorted(old)
    for k in old:
        assert np.array_equal(np.asarray(new[k]), np.asarray(old[k])), k
    # the npz is written with fixed zip timestamps: the whole file is bit-identical
    assert (tmp_path / "sample_geometry.npz").read_bytes() == (
        ASSETS / "sample_geometry.npz"
    ).read_bytes()


def test_shipped_depth_backprojects_onto_surface(geo, mask):
    assert np.array_equal(mask, geo["mask"])
    pts, _, _ = _backproject_shipped(geo, mask)
    err = np.abs(ms.sample_sdf(pts)) / geo["object_size"]
    p50, p99 = np.percentile(err, [50, 99])
    assert p99 < 0.01, p99
    assert p50 < 0.002, p50
    # the float32 depth map is (nearly) exact
    exact = ms.backproject_depth(geo["depth_z"], geo["c2w"], geo["fovy_deg"])[mask]
    assert np.abs(ms.sample_sdf(exact)).max() < 1e-3 * geo["object_size"]
    np.testing.assert_allclose(geo["position"][mask], exact, atol=1e-5)
    # a near = dark (inverted) reading lands far off the surface
    _, dpng = _png("sample_depth.png")
    v = 1.0 - dpng.astype(np.float64) / 255.0
    disp = geo["disparity_min"] + v * (geo["disparity_max"] - geo["disparity_min"])
    wrong = ms.backproject_depth(np.where(mask, 1.0 / disp, 0.0), geo["c2w"], geo["fovy_deg"])
    assert np.median(np.abs(ms.sample_sdf(wrong[mask]))) / geo["object_size"] > 0.01


def test_mask_matches_recast_rays_and_is_centred(geo, mask):
    H, W = mask.shape
    assert (H, W) == (geo["height"], geo["width"]) == (512, 512)
    c2w = _ts_c2w(0.0, 0.0, 3.8)
    np.testing.assert_allclose(geo["c2w"], c2w, atol=1e-12)
    # boundary pixels (3x3 neighbourhood not uniform) and random pixels elsewhere
    pad = np.pad(mask, 1, mode="edge")
    neigh = [
        pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ]
    boundary = np.any([n != mask for n in neigh], axis=0)
    rng = np.random.default_rng(0)
    bj, bi = np.nonzero(boundary)
    sel = rng.choice(len(bj), 200, replace=False)
    bj, bi = bj[sel], bi[sel]
    rj = rng.integers(60, H - 60, 300)
    ri = rng.integers(60, W - 60, 300)
    keep = ~boundary[rj, ri]
    rj, ri = rj[keep], ri[keep]
    for jj, ii, min_agree in ((rj, ri, 1.0), (bj, bi, 0.97)):
        dirs = _ts_ray_world(c2w, 20.0, H, W, ii.astype(float), jj.astype(float))
        hit, _ = _march(c2w[:3, 3], dirs)
        agree = np.mean(hit == mask[jj, ii])
        assert agree >= min_agree, agree
    assert 0.2 < mask[rj, ri].mean() < 0.8  # the random set sees both object and background
    # centred, ~60% of the frame, with a 10-30% margin on each side
    rows, cols = np.nonzero(mask)
    margins = np.array([rows.min(), H - 1 - rows.max(), cols.min(), W - 1 - cols.max()]) / H
    assert np.all(margins > 0.10) and np.all(margins < 0.30), margins
    assert 0.5 < (rows.max() - rows.min() + 1) / H < 0.7
    assert abs((rows.min() + rows.max()) / 2 - H / 2) < 0.05 * H
    assert abs((cols.min() + cols.max()) / 2 - W / 2) < 0.05 * W


def test_normal_png_matches_sdf_gradient(geo, mask):
    pts, jj, ii = _backproject_shipped(geo, mask)
    mode, raw = _png("sample_normal.png")
    assert mode == "RGB"
    ref_normal = raw[..., ::-1].astype(np.float64) / 255.0  # cv2.imread gives BGR
    assert np.all(ref_normal[~mask] == 0)
    gt = 1.0 - 2.0 * ref_normal[jj, ii]  # threestudio: valid_gt_normal = 1 - 2 * ref_normal
    # analytic gradient by central differences of the SDF
    h = 1e-5
    grad = np.stack(
        [ms.sample_sdf(pts + h * e) - ms.sample_sdf(pts - h * e) for e in np.eye(3)], axis=-1
    )
    grad /= np.linalg.norm(grad, axis=-1, keepdims=True)
    # threestudio: valid_pred_normal = 2 * comp_normal - 1, comp_normal = (n_world + 1) / 2
    pred = 2.0 * ((grad + 1.0) / 2.0) - 1.0
    cos = np.sum(pred * gt, -1) / np.linalg.norm(gt, axis=-1)
    assert cos.mean() > 0.98, cos.mean()
    assert np.median(cos) > 0.995
    to_cam = geo["c2w"][:3, 3] - pts
    assert np.mean(np.sum(gt * to_cam, -1) > 0) > 0.995
    # reading the channels in PIL order (the wrong one) must NOT match
    wrong = 1.0 - 2.0 * raw[jj, ii].astype(np.float64) / 255.0
    assert np.mean(np.sum(pred * wrong, -1)) < 0.9


def test_camera_and_ray_conventions():
    d = ms.ray_directions(5, 5, 20.0)
    assert d.shape == (5, 5, 3)
    np.testing.assert_allclose(d[2, 2], [0.0, 0.0, -1.0], atol=1e-15)
    assert d[0, 0, 0] < 0 and d[0, 0, 1] > 0  # top-left pixel looks left and up
    f = 0.5 * 5 / math.tan(math.radians(10.0))
    np.testing.assert_allclose(d[0, 4], [(4.5 - 2.5) / f, (2.5 - 0.5) / f, -1.0])
    d512 = ms.ray_directions(512, 512, 20.0)
    np.testing.assert_allclose(d512[255:257, 255:257].mean((0, 1)), [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(d512[0, 256, 1] * ms.focal_from_fovy(512, 20.0), 255.5)

    c2w = ms.look_at_c2w(0.0, 0.0, 3.8)
    np.testing.assert_allclose(c2w[:3, 3], [3.8, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 0], [0, 1, 0], atol=1e-12)  # right = +y
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, 1], atol=1e-12)  # up = +z
    np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0], atol=1e-12)  # camera looks along -x
    for e, a in ((30.0, 45.0), (-20.0, 200.0), (10.0, 90.0)):
        np.testing.assert_allclose(ms.look_at_c2w(e, a, 2.5), _ts_c2w(e, a, 2.5), atol=1e-12)
    np.testing.assert_allclose(
        ms.look_at_c2w(30.0, 90.0, 2.0)[:3, 3], [0, 2 * math.cos(math.pi / 6), 1.0], atol=1e-12
    )

    # projection: +y world appears on the image's right half, +z on the upper half
    H = W = 512
    u, v, z = ms.project_points(np.array([[0, 0.3, 0], [0, 0, 0.3], [0, 0, 0]]), c2w, 20.0, H, W)
    f = ms.focal_from_fovy(H, 20.0)
    np.testing.assert_allclose(u, [256 + 0.3 / 3.8 * f, 256, 256])
    np.testing.assert_allclose(v, [256, 256 - 0.3 / 3.8 * f, 256])
    np.testing.assert_allclose(z, [3.8, 3.8, 3.8])
    assert u[0] > W / 2 and v[1] < H / 2
    # project o backproject is the identity on pixel centres
    depth = np.full((8, 6), 3.0)
    pts = ms.backproject_depth(depth, ms.look_at_c2w(20.0, 30.0, 3.0), 30.0)
    u, v, z = ms.project_points(pts, ms.look_at_c2w(20.0, 30.0, 3.0), 30.0, 8, 6)
    jj, ii = np.mgrid[0:8, 0:6]
    np.testing.assert_allclose(u, ii + 0.5, atol=1e-9)
    np.testing.assert_allclose(v, jj + 0.5, atol=1e-9)
    np.testing.assert_allclose(z, 3.0, atol=1e-12)


def test_png_formats_depth_near_is_bright(geo, mask):
    mode, rgba = _png("sample_rgba.png")
    assert mode == "RGBA" and rgba.shape == (512, 512, 4)
    assert set(np.unique(rgba[..., 3])) == {0, 255}
    assert np.all(rgba[~mask][:, :3] == 0)
    mode, dpng = _png("sample_depth.png")
    assert mode == "L" and dpng.shape == (512, 512) and dpng.dtype == np.uint8
    assert np.all(dpng[~mask] == 0)
    z = np.where(mask, geo["depth_z"], np.inf)
    nearest = np.unravel_index(np.argmin(z), z.shape)
    assert dpng[nearest] == 255 == dpng.max()
    farthest = np.unravel_index(np.argmax(np.where(mask, geo["depth_z"], -np.inf)), z.shape)
    assert dpng[farthest] == 0
    corr = np.corrcoef(dpng[mask].astype(float), geo["depth_z"][mask])[0, 1]
    assert corr < -0.99  # brighter = nearer
    mode, nrm = _png("sample_normal.png")
    assert mode == "RGB" and nrm.shape == (512, 512, 3)
    # the texture is not left-right symmetric (novel views differ from mirrored ones)
    rgb = rgba[..., :3].astype(float)
    both = mask & mask[:, ::-1]
    assert both.mean() > 0.1
    assert np.abs(rgb - rgb[:, ::-1])[both].mean() > 40  # in 0..255 units


def test_background_texture():
    bg = ms.procedural_background(512, seed=0)
    assert bg.shape == (512, 512, 3) and bg.dtype == np.float64
    assert 0.0 <= bg.min() and bg.max() <= 1.0
    assert 0.4 <= bg.mean() <= 0.6
    assert 0.05 <= bg.std() <= 0.2
    assert np.ptp(bg) > 0.3
    assert bg[:256].std() > 0.05 and bg[:, :256].std() > 0.05  # textured everywhere
    assert np.array_equal(bg, ms.procedural_background(512, seed=0))
    assert not np.allclose(bg, ms.procedural_background(512, seed=1))
    small = ms.procedural_background((96, 128), seed=3)
    assert small.shape == (96, 128, 3) and 0.4 <= small.mean() <= 0.6
    mode, shipped = _png("bg_texture.png")
    assert mode == "RGB"
    assert np.array_equal(shipped, np.round(bg * 255.0).astype(np.uint8))
