"""Make-It-3D refine: the pure-PyTorch multi-scale point rasteriser and its bench.

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
from hifi123.core.makeit3d.point_raster import (
    PointRasterSettings,
    focal_from_fovy,
    rasterize_points,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "custom" / "hifi123" / "configs"
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
@pytest.mark.parametrize(
    "eps,slabs,chunk,spread",
    [
        (1e-4, 4, 1 << 22, 1.0),
        (0.0, 1, 1 << 22, 1.0),
        (1e-4, 4, 700, 1.0),
        (1e-4, 4, 1 << 22, 0.4),  # every footprint inside the image (no border tests needed)
    ],
)
def test_every_scale_matches_the_brute_force(eps, slabs, chunk, spread):
    pts, feats = _scene()
    if spread != 1.0:  # a compact cloud in front of the camera, nothing off-screen or behind
        pts = pts[40:] * spread
        feats = feats[40:]
    bg = torch.tensor([0.3, -1.0, 2.0, 0.5])
    H = W = 24
    s = PointRasterSettings(
        radius_px=2.0,
        min_transmittance=eps,
        depth_slabs=slabs,
        max_fragments_per_chunk=chunk,
        min_slab_points=1,
    )  # small clouds: still several slabs, so culling is exercised
    outs = rasterize_points(pts, feats, _camera(), FOV, H, W, s, bg)
    assert [tuple(o.features.shape) for o in outs] == [(1, 4, 24, 24), (1, 4, 12, 12), (1, 4, 6, 6)]
    for k, o in enumerate(outs):  # the same NDC radius at every scale: 2, 1, 0.5 px
        h = H >> k
        ref, _, _, trans = _brute_force(
            pts, feats, _camera(), FOV, h, h, 2.0 / 2**k, eps=eps, bg=bg
        )
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
    monkeypatch.setattr(
        pr,
        "_sort_distinct",
        lambda key, unsigned=False: modes.append((key.dtype, unsigned)) or sort(key, unsigned),
    )
    fast = select()
    assert modes == [(torch.int32, True)] * n_slabs
    monkeypatch.setattr(pr, "_UNSIGNED_KEYS", False)
    wide = select()
    assert modes[n_slabs:] == [(torch.int64, False)] * n_slabs
    # keys >= 2^31 occurred
    assert fast.pix.numel() > 100000 and int(fast.pix.max()) >= size * size // 2
    for a, b in zip(fast[:7], wide[:7]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("unsigned", [True, False])
def test_group_by_is_a_stable_argsort(monkeypatch, unsigned):
    from hifi123.core.makeit3d import point_raster as pr

    monkeypatch.setattr(pr, "_UNSIGNED_KEYS", unsigned)
    values = torch.randint(0, 3000, (50000,), generator=torch.Generator().manual_seed(4))
    assert torch.equal(pr._group_by(values, 3000).long(), torch.sort(values, stable=True)[1])


def test_focal_length_follows_threestudio():
    assert math.isclose(
        focal_from_fovy(512, math.radians(20.0)), 256.0 / math.tan(math.radians(10.0))
    )


def test_gradients_reach_exactly_the_contributing_points():
    """A dense opaque wall in front, a cloud hidden behind it, points off-screen and behind the
    camera: only points with a compositing weight get a gradient, and all of them do."""
    H = W = 20
    lin = torch.linspace(-0.6, 0.6, 41)
    wall = torch.stack(torch.meshgrid(lin, lin, indexing="ij"), -1).reshape(-1, 2)
    wall = torch.cat([wall, torch.zeros(len(wall), 1)], 1)  # z = 0 plane, camera at z = 3
    g = torch.Generator().manual_seed(1)
    hidden = torch.rand(300, 3, generator=g) * torch.tensor([0.4, 0.4, 0.5]) - torch.tensor(
        [0.2, 0.2, 1.0]
    )
    # some visible around the wall
    side = torch.randn(300, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, -1.0])
    off = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, -7.0, 0.5]])
    pts = torch.cat([wall, hidden, side, off])
    feats = torch.randn(len(pts), 5, generator=g).requires_grad_(True)
    bg = torch.randn(5, generator=g).requires_grad_(True)
    fov = math.radians(40.0)
    out = rasterize_points(
        pts, feats, _camera(), fov, H, W, PointRasterSettings(n_scales=1, min_slab_points=1), bg
    )[0]
    upstream = torch.randn(out.features.shape, generator=g)
    (out.features * upstream).sum().backward()
    _, weights, residual, _ = _brute_force(pts, feats.detach(), _camera(), fov, H, W, 2.0)
    has_grad = (feats.grad != 0).any(1).numpy()
    assert np.array_equal(has_grad, weights > 0)
    n_wall, n_hid = len(wall), len(hidden)
    assert not has_grad[n_wall : n_wall + n_hid].any()  # occluded: exactly zero
    assert not has_grad[-3:].any()  # off-screen / behind the camera: exactly zero
    assert has_grad[n_wall + n_hid : -3].any() and has_grad[:n_wall].any()
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
    empty = rasterize_points(
        torch.zeros(0, 3),
        torch.zeros(0, 3, requires_grad=True),
        _camera(),
        FOV,
        8,
        8,
        PointRasterSettings(),
        bg,
    )
    assert torch.allclose(empty[0].features[0].permute(1, 2, 0), torch.ones(8, 8, 3))
    empty[0].features.sum().backward()
    assert torch.equal(bg.grad, torch.full((3,), 64.0))


def test_size_not_divisible_by_the_scales_is_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        rasterize_points(torch.zeros(1, 3), torch.zeros(1, 3), _camera(), FOV, 30, 30)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("min_transmittance", 1.0, "min_transmittance must be in \\[0, 1\\)"),
        ("min_transmittance", -0.1, "min_transmittance must be in"),
        ("znear", 0.0, "znear must be positive"),
        ("min_slab_points", 0, "min_slab_points must be >= 1"),
        ("radius_px", 0.0, "radius_px must be positive"),
    ],
)
def test_bad_settings_are_refused(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        PointRasterSettings(**{field: value})


def test_a_camera_batch_equals_one_camera_at_a_time():
    """Several cameras share one sparse product: images, coverage, depth and the gradients must be
    exactly those of separate calls (also without a background)."""
    pts, feats = _scene()
    cams = torch.stack([_camera(3.0), _camera(2.5)])
    # looks along +x
    cams[1, :3, :3] = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
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
            torch.autograd.backward([o.features for o in one], [u[b : b + 1] for u in ups])
            grad_sum += f_one.grad
            for o_all, o_one in zip(outs, one):
                assert torch.allclose(o_all.features[b : b + 1], o_one.features, atol=1e-6)
                assert torch.equal(o_all.coverage[b : b + 1], o_one.coverage)
                assert torch.allclose(o_all.depth[b : b + 1], o_one.depth, atol=1e-6)
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
    assert (
        re.fullmatch(r"raster/unet ratio: \d+\.\d\d", last)
        and res["finite"]
        and res["points"] > 100
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - no GPU in CI
    pts, feats = _scene()
    cpu = rasterize_points(pts, feats, _camera(), FOV, 24, 24)
    gpu = rasterize_points(pts.cuda(), feats.cuda(), _camera().cuda(), FOV, 24, 24)
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a.features, b.features.cpu(), atol=1e-5)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["bench", "raster", "--size", "30"],
            "--size: expected an integer >= 16 and a multiple of 4, got 30",
        ),
        (["bench", "raster", "--repeats", "0"], "--repeats: expected an integer >= 1, got 0"),
        (["bench", "rgsd", "--iterations", "x"], "--iterations: expected an integer, got 'x'"),
        (
            ["bench", "rgnv", "--steps", "10", "--inject-steps", "20"],
            "fix: hifi123 bench rgnv --steps 10 --inject-steps 10",
        ),
    ],
)
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
