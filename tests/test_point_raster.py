"""Make-It-3D refine: the pure-PyTorch multi-scale point rasteriser, the gated U-Net, the refine losses,
the exports, and (threestudio-marked) the registered geometry/renderer and makeit3d-refine.yaml.

The rasteriser is checked against a per-pixel brute force written here from the formulas
(algorithms.md D.4): the K nearest points within the radius, alpha = 1 - sqrt(clamp(0.1 d^2/r^2,
1e-3, 1)), front-to-back compositing, background with the residual transmittance."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.core.makeit3d.deferred_unet import DeferredUNet
from hifi123.core.makeit3d.point_export import (
    load_renderer_weights,
    read_ply,
    save_renderer_weights,
    write_orbit_video,
    write_ply,
)
from hifi123.core.makeit3d.point_raster import (
    PointRasterSettings,
    focal_from_fovy,
    rasterize_points,
)
from hifi123.core.makeit3d.point_refine import (
    REFINE_TERMS,
    background_loss,
    reference_l1_loss,
    texture_regularizer,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "custom" / "hifi123" / "configs"
REFINE_YAMLS = ("makeit3d-refine.yaml", "makeit3d-refine-lowvram.yaml")
FOV = math.radians(30.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # small index-heavy tensors (conftest)


def _camera(distance=3.0):
    """A camera on +z looking at the origin (threestudio axes: right +x, up +y, looks along -z)."""
    c2w = torch.eye(4)
    c2w[2, 3] = distance
    return c2w


def _brute_force(points, feats, c2w, fovy, H, W, radius, K=8, eps=1e-4, bg=None):
    """Per pixel: the K nearest points (camera z) within `radius` px, composited front to back."""
    p = points.double().numpy()
    m = c2w.double().numpy()
    q = p - m[:3, 3]
    cam = q @ m[:3, :3]
    z = -cam[:, 2]
    f = 0.5 * H / math.tan(0.5 * fovy)
    u = cam[:, 0] / z * f + 0.5 * W
    v = -cam[:, 1] / z * f + 0.5 * H
    out = np.zeros((H, W, feats.shape[1]))
    weights = np.zeros(len(p))  # total weight of every point over the image
    residual = np.zeros((H, W))
    trans = np.zeros((H, W))
    fe = feats.double().numpy()
    for j in range(H):
        for i in range(W):
            d2 = (i + 0.5 - u) ** 2 + (j + 0.5 - v) ** 2
            idx = np.nonzero((d2 <= radius * radius) & (z > 1e-3))[0]
            idx = idx[np.argsort(z[idx], kind="stable")][:K]
            T = 1.0
            for k in idx:
                if eps > 0 and T < eps:
                    break
                a = 1.0 - math.sqrt(min(max(0.1 * d2[k] / radius**2, 1e-3), 1.0))
                out[j, i] += a * T * fe[k]
                weights[k] += a * T
                T *= 1.0 - a
            residual[j, i] = 0.0 if (eps > 0 and T < eps) else T
            trans[j, i] = T
    if bg is not None:
        out += residual[..., None] * bg.double().numpy()
    return out, weights, residual, trans


def _scene(n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 3, generator=g) * 0.35
    pts[:20, 2] = 3.5  # behind the camera
    pts[20:40, 0] = 5.0  # outside the view
    return pts, torch.randn(n, 4, generator=g)


# ------------------------------------------------------------------------------- rasteriser
@pytest.mark.parametrize("eps,slabs,chunk,spread", [
    (1e-4, 4, 1 << 22, 1.0), (0.0, 1, 1 << 22, 1.0), (1e-4, 4, 700, 1.0),
    (1e-4, 4, 1 << 22, 0.4),  # every footprint inside the image (no border tests needed)
])
def test_every_scale_matches_the_brute_force(eps, slabs, chunk, spread):
    pts, feats = _scene()
    if spread != 1.0:  # a compact cloud in front of the camera, nothing off-screen or behind
        pts = pts[40:] * spread
        feats = feats[40:]
    bg = torch.tensor([0.3, -1.0, 2.0, 0.5])
    H = W = 24
    s = PointRasterSettings(radius_px=2.0, min_transmittance=eps, depth_slabs=slabs, max_fragments_per_chunk=chunk,
                            min_slab_points=1)  # small clouds: still several slabs, so culling is exercised
    outs = rasterize_points(pts, feats, _camera(), FOV, H, W, s, bg)
    assert [tuple(o.features.shape) for o in outs] == [(1, 4, 24, 24), (1, 4, 12, 12), (1, 4, 6, 6)]
    for k, o in enumerate(outs):  # the same NDC radius at every scale: 2, 1, 0.5 px
        h = H >> k
        ref, _, _, trans = _brute_force(pts, feats, _camera(), FOV, h, h, 2.0 / 2**k, eps=eps, bg=bg)
        assert np.allclose(o.features[0].permute(1, 2, 0).double().numpy(), ref, atol=2e-5), k
        assert np.allclose(o.coverage[0, 0].double().numpy(), 1.0 - trans, atol=2e-5), k


@pytest.mark.parametrize("size,n_slabs", [(256, 1), (512, 3)])
def test_32_bit_keys_sorted_as_unsigned_match_64_bit_keys(monkeypatch, size, n_slabs):
    """40k points: at 256x256 one slab, whose (pixel, depth position) keys need exactly 32 bits; at
    512x512 the slabs are cut to 2^14 points so that they fit 32 bits (3 slabs, with culling). On
    CPU such keys are int32 bit patterns sorted as uint32 (pixels in the lower half of the image
    give negative int32 keys). Same fragments and weights as with int64 keys."""
    from hifi123.core.makeit3d import point_raster as pr

    g = torch.Generator().manual_seed(3)
    n = 40000
    u = torch.rand(n, generator=g) * (size + 2) - 1.0  # some footprints cross the border
    v = torch.rand(n, generator=g) * (size + 2) - 1.0
    z = torch.rand(n, generator=g) + 1.0

    order = pr.depth_order(u, v, z, size, size, 2.0)

    def select():
        return pr.select_fragments(u, v, z, size, size, 2.0, 8, 1e-4, depth_slabs=1, order=order)

    modes = []
    sort = pr._sort_distinct
    monkeypatch.setattr(pr, "_sort_distinct", lambda key, unsigned=False: modes.append((key.dtype, unsigned)) or sort(key, unsigned))
    fast = select()
    assert modes == [(torch.int32, True)] * n_slabs
    monkeypatch.setattr(pr, "_UNSIGNED_KEYS", False)
    wide = select()
    assert modes[n_slabs:] == [(torch.int64, False)] * n_slabs
    assert fast.pix.numel() > 100000 and int(fast.pix.max()) >= size * size // 2  # keys >= 2^31 occurred
    for a, b in zip(fast[:7], wide[:7]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("unsigned", [True, False])
def test_group_by_is_a_stable_argsort(monkeypatch, unsigned):
    from hifi123.core.makeit3d import point_raster as pr

    monkeypatch.setattr(pr, "_UNSIGNED_KEYS", unsigned)
    values = torch.randint(0, 3000, (50000,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(pr._group_by(values, 3000).long(), torch.sort(values, stable=True)[1])


def test_focal_length_follows_threestudio():
    assert math.isclose(focal_from_fovy(512, math.radians(20.0)), 256.0 / math.tan(math.radians(10.0)))


def test_gradients_reach_exactly_the_contributing_points():
    """A dense opaque wall in front, a cloud hidden behind it, points off-screen and behind the
    camera: only points with a compositing weight get a gradient, and all of them do."""
    H = W = 20
    lin = torch.linspace(-0.6, 0.6, 41)
    wall = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)
    wall = torch.cat([wall, torch.zeros(len(wall), 1)], 1)  # z = 0 plane, camera at z = 3
    g = torch.Generator().manual_seed(1)
    hidden = torch.rand(300, 3, generator=g) * torch.tensor([0.4, 0.4, 0.5]) - torch.tensor([0.2, 0.2, 1.0])
    side = torch.randn(300, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, -1.0])  # some visible around the wall
    off = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, -7.0, 0.5]])
    pts = torch.cat([wall, hidden, side, off])
    feats = torch.randn(len(pts), 5, generator=g).requires_grad_(True)
    bg = torch.randn(5, generator=g).requires_grad_(True)
    fov = math.radians(40.0)
    out = rasterize_points(pts, feats, _camera(), fov, H, W, PointRasterSettings(n_scales=1, min_slab_points=1), bg)[0]
    upstream = torch.randn(out.features.shape, generator=g)
    (out.features * upstream).sum().backward()
    _, weights, residual, _ = _brute_force(pts, feats.detach(), _camera(), fov, H, W, 2.0)
    has_grad = (feats.grad != 0).any(1).numpy()
    assert np.array_equal(has_grad, weights > 0)
    n_wall, n_hid = len(wall), len(hidden)
    assert not has_grad[n_wall:n_wall + n_hid].any()  # occluded: exactly zero
    assert not has_grad[-3:].any()  # off-screen / behind the camera: exactly zero
    assert has_grad[n_wall + n_hid:-3].any() and has_grad[:n_wall].any()
    # the background: d/db = sum over pixels of T_res * upstream, T_res = 0 on saturated pixels
    expected = (torch.from_numpy(residual).float()[None, None] * upstream).sum((0, 2, 3))
    assert torch.allclose(bg.grad, expected, atol=1e-5)
    assert (residual == 0).sum() > 0.3 * H * W and (residual == 1).sum() > 0


def test_background_gets_no_gradient_under_full_coverage():
    lin = torch.linspace(-1.2, 1.2, 81)
    wall = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)
    pts = torch.cat([wall, torch.zeros(len(wall), 1)], 1)
    feats = torch.randn(len(pts), 3, requires_grad=True)
    bg = torch.ones(3, requires_grad=True)
    outs = rasterize_points(pts, feats, _camera(), FOV, 16, 16, PointRasterSettings(), bg)
    assert all(bool((o.coverage > 1 - 1e-4).all()) for o in outs[:2])
    sum(o.features.sum() for o in outs[:2]).backward()
    assert torch.equal(bg.grad, torch.zeros(3))
    # no point at all: the image is the background, which gets every pixel's gradient
    bg.grad = None
    empty = rasterize_points(torch.zeros(0, 3), torch.zeros(0, 3, requires_grad=True), _camera(), FOV, 8, 8, PointRasterSettings(), bg)
    assert torch.allclose(empty[0].features[0].permute(1, 2, 0), torch.ones(8, 8, 3))
    empty[0].features.sum().backward()
    assert torch.equal(bg.grad, torch.full((3,), 64.0))


def test_size_not_divisible_by_the_scales_is_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        rasterize_points(torch.zeros(1, 3), torch.zeros(1, 3), _camera(), FOV, 30, 30)


@pytest.mark.parametrize("field,value,needle", [
    ("min_transmittance", 1.0, "min_transmittance must be in \\[0, 1\\)"),
    ("min_transmittance", -0.1, "min_transmittance must be in"),
    ("znear", 0.0, "znear must be positive"),
    ("min_slab_points", 0, "min_slab_points must be >= 1"),
    ("radius_px", 0.0, "radius_px must be positive"),
])
def test_bad_settings_are_refused(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        PointRasterSettings(**{field: value})


def test_a_camera_batch_equals_one_camera_at_a_time():
    """Several cameras share one sparse product: images, coverage, depth and the gradients must be
    exactly those of separate calls (also without a background)."""
    pts, feats = _scene()
    cams = torch.stack([_camera(3.0), _camera(2.5)])
    cams[1, :3, :3] = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # looks along +x
    cams[1, :3, 3] = torch.tensor([-2.5, 0.1, 0.0])
    s = PointRasterSettings(radius_px=2.0)
    for bg in (torch.tensor([0.3, -1.0, 2.0, 0.5]), None):
        f_all = feats.clone().requires_grad_(True)
        outs = rasterize_points(pts, f_all, cams, FOV, 16, 16, s, bg)
        ups = [torch.randn_like(o.features) for o in outs]
        torch.autograd.backward([o.features for o in outs], ups)
        grad_sum = torch.zeros_like(feats)
        for b in range(2):
            f_one = feats.clone().requires_grad_(True)
            one = rasterize_points(pts, f_one, cams[b], FOV, 16, 16, s, bg)
            torch.autograd.backward([o.features for o in one], [u[b:b + 1] for u in ups])
            grad_sum += f_one.grad
            for o_all, o_one in zip(outs, one):
                assert torch.allclose(o_all.features[b:b + 1], o_one.features, atol=1e-6)
                assert torch.equal(o_all.coverage[b:b + 1], o_one.coverage)
                assert torch.allclose(o_all.depth[b:b + 1], o_one.depth, atol=1e-6)
        assert torch.allclose(f_all.grad, grad_sum, atol=1e-5)
        assert float(outs[0].coverage[1].mean()) > 0.05  # the second camera sees the scene too


def test_bench_raster_measures_at_the_refine_render_size_by_default():
    """The ratio that matters is the refine stage's: the default size is makeit3d-refine.yaml's."""
    from hifi123.bench import REFINE_RENDER_SIZE
    from hifi123.cli import build_parser
    from omegaconf import OmegaConf

    data = OmegaConf.load(CONFIG_DIR / "makeit3d-refine.yaml").data
    assert REFINE_RENDER_SIZE == data.height == data.width
    assert build_parser().parse_args(["bench", "raster"]).size == REFINE_RENDER_SIZE


def test_bench_raster_reports_the_ratio(capsys):
    """`hifi123 bench raster` on a tiny render: it runs end to end and its last line is the ratio
    the issue asks for (no timing is asserted)."""
    from hifi123.bench import bench_raster

    res = bench_raster(size=32, repeats=1, threads=1, azimuths=4)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"raster/unet ratio: \d+\.\d\d", last) and res["finite"] and res["points"] > 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - no GPU in CI
    pts, feats = _scene()
    cpu = rasterize_points(pts, feats, _camera(), FOV, 24, 24)
    gpu = rasterize_points(pts.cuda(), feats.cuda(), _camera().cuda(), FOV, 24, 24)
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a.features, b.features.cpu(), atol=1e-5)


# -------------------------------------------------------------------------------- the U-Net
def test_gated_unet_shapes_range_and_gradients_to_every_scale():
    torch.manual_seed(0)
    net = DeferredUNet()  # 19 channels, widths 16/32/64
    assert [b.out_channels for b in net.down] == [13, 45]  # gated(16 -> 13), gated(32 -> 45)
    xs = [torch.randn(2, 19, 32 >> k, 48 >> k, requires_grad=True) for k in range(3)]
    y = net(xs)
    assert y.shape == (2, 3, 32, 48) and bool((y > 0).all() and (y < 1).all())
    y.mean().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    net.eval()  # batch statistics also in eval (the official U-Net never leaves train mode)
    with torch.no_grad():
        assert torch.allclose(net(xs), y, atol=1e-6)
    with pytest.raises(ValueError):
        net(xs[:2])
    with pytest.raises(ValueError):
        net([torch.randn(1, 18, 8, 8), torch.randn(1, 19, 4, 4), torch.randn(1, 19, 2, 2)])


# ------------------------------------------------------------------------------------ losses
def test_refine_losses():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 20, 20, 3, generator=g, requires_grad=True)
    target = torch.rand(1, 20, 20, 3, generator=g)
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[:, 5:15, 5:15] = True
    loss = reference_l1_loss(pred, target, mask, erosion_px=2)
    loss.backward()
    inner = torch.zeros(20, 20, dtype=torch.bool)
    inner[7:13, 7:13] = True  # the mask eroded by 2 px
    assert torch.equal(pred.grad[0].abs().sum(-1) > 0, inner)
    assert torch.isclose(loss, (pred - target)[0][inner].abs().sum() / pred.numel())

    colors = torch.rand(10, 3, generator=g, requires_grad=True)
    init = torch.rand(10, 3, generator=g)
    refvis = torch.tensor([True] * 4 + [False] * 6)
    t = texture_regularizer(colors, init, refvis)
    assert torch.isclose(t["texture_reference"], ((colors - init)[:4] ** 2).mean())
    assert torch.isclose(t["texture_novel"], ((colors - init)[4:] ** 2).mean())
    assert float(texture_regularizer(colors, init, torch.zeros(10, dtype=torch.bool))["texture_reference"].detach()) == 0.0

    coverage = torch.zeros(1, 20, 20, 1)
    coverage[:, 8:12, 8:12] = 1.0
    pred.grad = None
    bl = background_loss(pred, coverage, dilation_px=2)
    bl.backward()
    near = torch.zeros(20, 20, dtype=torch.bool)
    near[6:14, 6:14] = True  # the coverage dilated by 2 px: no background loss there
    assert torch.equal(pred.grad[0].abs().sum(-1) == 0, near)
    assert torch.isclose(bl, (1 - pred)[0][~near].sum())
    assert set(REFINE_TERMS) == {"ref_l1", "texture_novel", "texture_reference", "background", "contextual"}


# ----------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("binary", [True, False])
def test_ply_round_trip(tmp_path, binary):
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(257, 3, generator=g)
    col = torch.rand(257, 3, generator=g)
    path = write_ply(str(tmp_path / "cloud.ply"), pos, col, binary=binary)
    header = Path(path).read_bytes().split(b"end_header")[0].decode()
    assert ("binary_little_endian" if binary else "ascii") in header and "element vertex 257" in header
    p2, c2 = read_ply(path)
    assert p2.dtype == np.float32 and np.array_equal(p2, pos.numpy())
    assert c2.dtype == np.uint8 and np.array_equal(c2, np.round(col.numpy() * 255).astype(np.uint8))


def test_renderer_weights_round_trip_and_orbit_video(tmp_path):
    torch.manual_seed(0)
    net = DeferredUNet()
    bg = torch.randn(19)
    desc = torch.randn(5, 19)
    path = save_renderer_weights(str(tmp_path / "r.pt"), net, bg, desc, torch.randn(5, 3), torch.ones(5, dtype=torch.bool))
    other = DeferredUNet()
    payload = load_renderer_weights(path, other)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert torch.equal(payload["background"], bg) and torch.equal(payload["descriptors"], desc)
    assert payload["unet_widths"] == [16, 32, 64]

    import imageio.v2 as imageio

    seen = []

    def render(elev, azim):
        seen.append(azim)
        return torch.full((32, 32, 3), (azim % 360) / 360.0)

    video = write_orbit_video(str(tmp_path / "orbit.mp4"), render, n_frames=4, fps=25)
    assert seen == [0.0, 90.0, 180.0, 270.0]
    frames = imageio.mimread(video)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3)


# -------------------------------------------------------------------------- threestudio
def _tiny_cloud(size=32):
    from hifi123.sample import make_sample as ms

    pts, cols = [], []
    for az in (0, 120, 240):
        r = ms.render_sample(0.0, az, size=size, supersample=1)
        pts.append(r["position"][r["alpha"]])
        cols.append(r["rgb"][r["alpha"]])
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.float32)


@pytest.mark.threestudio
def test_names_registered(threestudio_env):
    import hifi123

    assert threestudio_env.ok, threestudio_env.output
    for name in ("makeit3d-point-cloud", "makeit3d-deferred-renderer"):
        assert name in threestudio_env.threestudio.__modules__ and name in hifi123.REGISTERED_NAMES


@pytest.mark.threestudio
@pytest.mark.parametrize("name", REFINE_YAMLS)
def test_refine_config_parses_with_no_unknown_keys(name, tmp_path, threestudio_env, monkeypatch):
    from dataclasses import fields

    from hifi123.core.makeit3d.point_refine import RefineConfig
    from hifi123.core.makeit3d.pointcloud import PointCloudConfig
    from threestudio.data.uncond import RandomCameraDataModuleConfig
    from threestudio.systems.utils import parse_optimizer, parse_scheduler
    from threestudio.utils.config import load_config, parse_structured

    find = threestudio_env.threestudio.find
    monkeypatch.chdir(REPO)
    cfg = load_config(str(CONFIG_DIR / name), cli_args=[f"exp_root_dir={tmp_path}", "system.geometry_convert_from=coarse/ckpts/last.ckpt"])
    assert cfg.system.stage == "refine" and cfg.system.geometry_convert_from == "coarse/ckpts/last.ckpt"
    parse_structured(find(cfg.data_type).Config, cfg.data)
    parse_structured(RandomCameraDataModuleConfig, cfg.data.random_camera)
    # the system section: makeit3d-system's fields plus the refine-stage keys it will read
    system_cls = find(cfg.system_type)
    known = {f.name for f in fields(system_cls.Config)}
    assert set(cfg.system.keys()) <= known, set(cfg.system.keys()) - known
    refine = RefineConfig(**cfg.system.refine)
    PointCloudConfig(**refine.point_cloud)
    assert refine.reference_image_path == cfg.data.image_path and refine.fovy_deg == cfg.data.default_fovy_deg
    parts = {}
    for part in ("geometry", "material", "background", "renderer", "guidance"):
        parts[part] = parse_structured(find(cfg.system[f"{part}_type"]).Config, cfg.system[part])
    # every lambda the system reads (coarse terms at 0 plus the refine terms), each with a comment
    read = {f"lambda_{t}" for t in system_cls.loss_terms_for(False)} | {f"lambda_{t}" for t in REFINE_TERMS}
    assert read <= set(cfg.system.loss.keys()), read - set(cfg.system.loss.keys())
    text = (CONFIG_DIR / name).read_text()
    for key in cfg.system.loss:
        assert re.search(rf"^\s+{key}: .*#", text, re.M) or re.search(rf"#.*\n\s+{key}:", text), key
    assert cfg.system.loss.lambda_texture_reference == 1e5 and cfg.system.loss.lambda_texture_novel == 1e3
    assert cfg.trainer.max_steps == 5000 and cfg.data.height % 4 == 0
    # the build resolution is the render size, and the NDC radius is Make-It-3D's (2 px at 800)
    assert refine.point_cloud["resolution"] == cfg.data.height == cfg.data.random_camera.height
    assert math.isclose(cfg.system.renderer.point_radius_px / cfg.data.height, 2.0 / 800.0)
    # optimiser groups resolve on the real modules; lr 1e-3 -> 1e-4 over 1000 steps, then constant
    geo = find(cfg.system.geometry_type)(cfg.system.geometry)
    ren = find(cfg.system.renderer_type)(cfg.system.renderer, geometry=geo, material=None, background=None)
    holder = torch.nn.Module()
    holder.geometry, holder.renderer = geo, ren
    opt = parse_optimizer(cfg.system.optimizer, holder)
    assert [len(list(g["params"])) > 0 for g in opt.param_groups] == [True] * 3
    sched = parse_scheduler(cfg.system.scheduler, opt)["scheduler"]
    lrs = []
    for _ in range(1500):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert math.isclose(lrs[0], 1e-3) and math.isclose(lrs[500], 10**-3.5, rel_tol=1e-6)
    assert math.isclose(lrs[1000], 1e-4, rel_tol=1e-6) and math.isclose(lrs[1499], 1e-4, rel_tol=1e-6)


@pytest.mark.threestudio
def test_lowvram_refine_changes_only_memory_settings(tmp_path, threestudio_env):
    from threestudio.utils.config import load_config

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    from omegaconf import OmegaConf

    cli = [f"exp_root_dir={tmp_path}", "system.geometry_convert_from=x.ckpt"]
    a, b = (
        flat({k: OmegaConf.to_container(c[k], resolve=True) for k in ("data", "system")})
        for c in (load_config(str(CONFIG_DIR / n), cli_args=cli) for n in REFINE_YAMLS)
    )
    diff = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    sizes = {f"data.{k}" for k in ("height", "width")} | {
        f"data.random_camera.{k}" for k in ("height", "width", "eval_height", "eval_width")
    }
    assert diff == sizes | {
        "system.refine.point_cloud.resolution", "system.refine.point_cloud.max_points", "system.renderer.point_radius_px",
        "system.guidance.half_precision_weights", "system.guidance.vae_gradient_checkpointing",
    }
    text = (CONFIG_DIR / REFINE_YAMLS[1]).read_text()
    for key in ("resolution", "max_points", "point_radius_px", "half_precision_weights", "vae_gradient_checkpointing"):
        assert re.search(rf"{key}: .*# lowvram", text), key


@pytest.mark.threestudio
def test_geometry_and_renderer_forward_on_cpu(threestudio_env, tmp_path):
    from hifi123.core.makeit3d.pointcloud import ViewCamera
    from hifi123.threestudio_ext.point_cloud import MakeIt3DPointCloud, camera_batch

    find = threestudio_env.threestudio.find
    torch.manual_seed(0)
    pos, col = _tiny_cloud()
    geo = find("makeit3d-point-cloud").from_arrays(pos, col, np.arange(len(pos)) % 2 == 0)
    assert isinstance(geo, MakeIt3DPointCloud) and geo.descriptors.shape == (len(pos), 19)
    assert torch.allclose(geo.colors, torch.from_numpy(col)) and torch.equal(geo.initial_colors, geo.colors.detach())
    ren = find("makeit3d-deferred-renderer")({"point_radius_px": 1.0}, geometry=geo, material=None, background=None)
    batch = camera_batch(ViewCamera.orbit(10.0, 30.0, 3.8, 20.0, 32))
    out = ren(**batch)
    assert out["comp_rgb"].shape == (1, 32, 32, 3) and bool(((out["comp_rgb"] > 0) & (out["comp_rgb"] < 1)).all())
    assert out["opacity"].shape == (1, 32, 32, 1) and 0.1 < float((out["opacity"] > 0.5).float().mean()) < 0.6
    assert [tuple(c.shape) for c in out["coverage_scales"]] == [(1, 32, 32, 1), (1, 16, 16, 1), (1, 8, 8, 1)]
    out["comp_rgb"].mean().backward()
    assert geo.descriptors.grad.abs().sum() > 0 and geo.background.grad is not None
    assert all(p.grad is not None for p in ren.unet.parameters())
    # eval batches pass height/width as 1-element tensors; a checkpoint of unknown size reloads
    ren.eval()
    with torch.no_grad():
        ref = ren(**{**batch, "height": torch.tensor([32]), "width": torch.tensor([32])})["comp_rgb"]
        geo2 = find("makeit3d-point-cloud")({})
        ren2 = find("makeit3d-deferred-renderer")({"point_radius_px": 1.0}, geometry=geo2, material=None, background=None)
        geo2.load_state_dict(geo.state_dict())
        ren2.load_state_dict(ren.state_dict())
        ren2.eval()
        assert geo2.n_points == len(pos) and torch.allclose(ren2(**batch)["comp_rgb"], ref)
    with pytest.raises(TypeError, match="makeit3d-system"):
        MakeIt3DPointCloud.create_from(geo)
    # `hifi123 run`'s PLY stage finds the cloud in a refine checkpoint (positions, descriptors[:, :3])
    from hifi123.run.export import load_point_cloud

    torch.save({"state_dict": {f"geometry.{k}": v for k, v in geo.state_dict().items()}}, tmp_path / "last.ckpt")
    p2, c2 = load_point_cloud(str(tmp_path / "last.ckpt"))
    assert np.allclose(p2, pos) and np.array_equal(c2, np.round(np.clip(geo.colors.detach().numpy(), 0, 1) * 255).astype(np.uint8))


@pytest.mark.threestudio
@pytest.mark.parametrize("field,value", [("min_slab_points", 0), ("min_transmittance", 1.5), ("point_radius_px", -1.0)])
def test_renderer_refuses_bad_raster_settings(threestudio_env, field, value):
    from hifi123.errors import InputError

    geo = threestudio_env.threestudio.find("makeit3d-point-cloud")({})
    with pytest.raises(InputError, match=f"system.renderer: .*{field.replace('point_', '')}"):
        threestudio_env.threestudio.find("makeit3d-deferred-renderer")(
            {field: value}, geometry=geo, material=None, background=None)


@pytest.mark.threestudio
def test_point_cloud_from_a_coarse_checkpoint(tmp_path, threestudio_env):
    """The chain the refine stage uses: a coarse threestudio checkpoint (+ its parsed.yaml) ->
    geometry/material/background/renderer -> renders -> point cloud (CPU test renderer)."""
    from hifi123.core.makeit3d.pointcloud import PointCloudConfig, ViewCamera
    from hifi123.testing.torch_renderer import register_torch_volume_renderer
    from hifi123.threestudio_ext.point_cloud import build_point_cloud_from_checkpoint

    renderer_name = register_torch_volume_renderer()
    from hifi123.testing.coarse_trial import write_coarse_trial

    ckpt = write_coarse_trial(tmp_path)
    ref = np.ones((32, 32, 4), np.float32)
    cloud = build_point_cloud_from_checkpoint(
        str(ckpt), ref, ViewCamera.orbit(0.0, 0.0, 3.0, 40.0, 32),
        PointCloudConfig(resolution=32, n_azimuths=3, elevations_deg=(0.0,)),
        renderer_type=renderer_name, renderer_override={"radius": 1.0, "num_samples_per_ray": 32},
    )
    assert len(cloud) > 50 and cloud.positions.norm(dim=1).max() < 1.0  # inside the coarse bounding sphere
    assert int(cloud.source_view.max()) >= 1 and bool(cloud.reference_visible.any())


@pytest.mark.parametrize("argv,needle", [
    (["bench", "raster", "--size", "30"], "--size: expected an integer >= 16 and a multiple of 4, got 30"),
    (["bench", "raster", "--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
    (["bench", "rgsd", "--iterations", "x"], "--iterations: expected an integer, got 'x'"),
    (["bench", "rgnv", "--steps", "10", "--inject-steps", "20"], "fix: hifi123 bench rgnv --steps 10 --inject-steps 10"),
])
def test_bench_arguments_are_checked_before_any_work(argv, needle, capsys, monkeypatch):
    from hifi123 import bench, cli

    def no_work(*a, **k):
        raise AssertionError("a benchmark ran despite a bad argument")

    for name in ("bench_raster", "bench_rgnv", "bench_rgsd"):
        monkeypatch.setattr(bench, name, no_work)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    assert code == 2 and needle in capsys.readouterr().err


def test_gated_block_gate_modulates_and_a_zero_gate_halves_the_elu_features():
    """y = ELU(conv_f(x)) * sigmoid(conv_g(x)): with the gate's weights and bias at 0 the gate is
    sigmoid(0) = 1/2 everywhere; with them restored the output changes (the gate is live), and the
    gate is not the feature branch (swapping the two halves changes the output)."""
    from hifi123.core.makeit3d.deferred_unet import GatedBlock

    torch.manual_seed(0)
    block = GatedBlock(5, 4, norm=False)
    x = torch.randn(2, 5, 9, 9)
    w, b = block.conv.weight.detach().clone(), block.conv.bias.detach().clone()
    feat = torch.nn.functional.conv2d(x, w[:4], b[:4], padding=1)
    gate = torch.nn.functional.conv2d(x, w[4:], b[4:], padding=1)
    with torch.no_grad():
        y = block(x)
        np.testing.assert_allclose(y.numpy(), (torch.nn.functional.elu(feat) * torch.sigmoid(gate)).numpy(), atol=1e-6)
        swapped = torch.nn.functional.elu(gate) * torch.sigmoid(feat)
        assert (y - swapped).abs().max() > 1e-2
        block.conv.weight[4:] = 0.0
        block.conv.bias[4:] = 0.0
        np.testing.assert_allclose(block(x).numpy(), (0.5 * torch.nn.functional.elu(feat)).numpy(), atol=1e-6)
        assert (block(x) - y).abs().max() > 1e-2
