"""Evaluation metrics: each test fails if the metric were computed wrongly."""

import math

import numpy as np
import pytest
import torch
from hifi123.evaluation import geometry as G
from hifi123.evaluation import metrics as M


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    from hifi123.evaluation.models import ensure_tiny_eval_models

    return ensure_tiny_eval_models(str(tmp_path_factory.mktemp("tiny-eval")))


def _smooth_image(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False
    )


# ------------------------------------------------------------------------------------ images


def test_psnr_matches_gaussian_noise_variance():
    torch.manual_seed(0)
    gt = 0.3 + 0.4 * _smooth_image(1, 256)  # in [0.3, 0.7]: sigma 0.01 noise never clips
    for sigma in (0.01, 0.03):
        pred = gt + sigma * torch.randn_like(gt)
        assert pred.min() > 0 and pred.max() < 1
        expected = 10 * math.log10(1.0 / sigma**2)
        got = float(M.psnr(pred, gt)[0])
        assert abs(got - expected) < 0.05, (sigma, got, expected)


def test_psnr_is_per_image_and_ssim_is_one_for_identical():
    a = _smooth_image(2)
    b = torch.cat([a, (a + 0.1).clamp(0, 1)])
    vals = M.psnr(b, torch.cat([a, a]))
    assert vals.shape == (2,) and math.isinf(float(vals[0])) and float(vals[1]) < 25
    s = M.ssim(b, torch.cat([a, a]))
    assert s.shape == (2,) and abs(float(s[0]) - 1) < 1e-6 and float(s[1]) < 1 - 1e-3


def test_lpips_zero_for_identical_positive_otherwise(tiny_eval):
    from hifi123.evaluation.models import load_lpips

    for net, size in (("alex", 64), ("vgg", 32)):
        x = torch.cat([_smooth_image(3, size), _smooth_image(4, size)])
        lp = load_lpips(tiny_eval["lpips"], net)
        d_same = M.lpips_distance(lp, x, x)
        d_diff = M.lpips_distance(lp, x, x.flip(0))
        assert torch.all(d_same.abs() < 1e-7), net
        assert torch.all(d_diff > 1e-3), net
    # the real linear heads were loaded (they are non-negative and not the random init)
    assert all(float(p.min()) >= 0 for n, p in lp.named_parameters() if n.startswith("lin"))


def test_clip_similarity_is_one_for_identical_images(tiny_eval, tmp_path):
    from hifi123.evaluation.models import load_clip_embedder
    from hifi123.models.tiny import write_clip

    write_clip(str(tmp_path / "clip"))
    x = torch.cat([_smooth_image(5), _smooth_image(6)])
    for ref in (tiny_eval["open-clip"], str(tmp_path / "clip")):
        emb = load_clip_embedder(ref)
        e = emb.encode(x)
        same = M.cosine_similarity(e, e)
        assert torch.allclose(same, torch.ones(2), atol=1e-5), ref
        diff = M.cosine_similarity(e[:1], e[1:])
        assert float(diff) < 1 - 1e-4, ref
    assert emb.backend == "transformers"


def _cx_reference(x, y, h=0.5, eps=1e-5):
    """The paper's formula, written as plain loops over features (x: [C,N], y: [C,M])."""
    x = x.double().numpy()
    y = y.double().numpy()
    mu = y.mean(axis=1, keepdims=True)
    xs, ys = x - mu, y - mu
    N, Mn = x.shape[1], y.shape[1]
    d = np.zeros((N, Mn))
    for i in range(N):
        for j in range(Mn):
            d[i, j] = 1 - xs[:, i] @ ys[:, j] / (
                np.linalg.norm(xs[:, i]) * np.linalg.norm(ys[:, j])
            )
    cx = np.zeros((N, Mn))
    for i in range(N):
        dt = d[i] / (d[i].min() + eps)
        w = np.exp((1 - dt) / h)
        cx[i] = w / w.sum()
    return np.mean([cx[:, j].max() for j in range(Mn)])


def test_contextual_similarity_matches_the_papers_definition():
    torch.manual_seed(1)
    x, y = torch.randn(1, 6, 3, 4), torch.randn(1, 6, 3, 4)
    got = float(M.contextual_similarity(x, y))
    want = _cx_reference(x[0].flatten(1), y[0].flatten(1))
    assert abs(got - want) < 1e-10
    # not symmetric: the target (y) defines the centring and the normalisation
    assert abs(float(M.contextual_similarity(y, x)) - got) > 1e-6


def test_contextual_distance_minimum_at_identity_and_ignores_layout(tiny_eval):
    from hifi123.evaluation.models import load_vgg19_features

    torch.manual_seed(2)
    f = torch.randn(1, 8, 5, 5)
    assert float(M.contextual_distance(f, f)) < 1e-3  # -log CX >= 0, 0 at the identity
    perm = torch.randperm(25)
    shuffled_feats = f.flatten(2)[:, :, perm]
    # a set-to-set measure: permuting the feature positions does not change it
    assert (
        abs(float(M.contextual_distance(shuffled_feats, f)) - float(M.contextual_distance(f, f)))
        < 1e-9
    )

    vgg = load_vgg19_features(tiny_eval["vgg19"])
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    pix = torch.randperm(128 * 128, generator=torch.Generator().manual_seed(4))
    shuffled = img.flatten(2)[:, :, pix].reshape(img.shape)
    other = _smooth_image(7, 128)
    with torch.no_grad():
        fi, fs, fo = vgg(img), vgg(shuffled), vgg(other)
    d_same = float(M.contextual_distance(fi, fi))
    assert d_same < 1e-3
    assert float(M.contextual_distance(fs, fi)) > d_same + 0.05
    assert float(M.contextual_distance(fo, fi)) > d_same + 0.05
    assert vgg.layer == "relu5_4" and vgg.layer_index == 35 and fi.shape[-1] == 128 // 16


# ------------------------------------------------------------------------------------ points


def _cube_face_grid(h, offset=(0.0, 0.0, 0.0)):
    """Points at the cell centres of an h-grid on each face of [0,1]^3 (+ offset)."""
    t = (np.arange(int(round(1 / h))) + 0.5) * h
    a, b = np.meshgrid(t, t, indexing="ij")
    a, b = a.ravel(), b.ravel()
    pts = []
    for axis in range(3):
        for val in (0.0, 1.0):
            p = np.zeros((len(a), 3))
            others = [k for k in range(3) if k != axis]
            p[:, axis] = val
            p[:, others[0]] = a
            p[:, others[1]] = b
            pts.append(p)
    return np.concatenate(pts) + np.asarray(offset)


def test_chamfer_of_translated_cube_surface_is_analytic():
    # A unit cube and its copy shifted by d along x (d <= 1/2), dense surface samples, Chamfer =
    # mean distance from one surface to the other (both directions agree by symmetry):
    #   face x=0: d; four side faces: mean over x of max(d - x, 0) = d^2/2 each;
    #   face x=1: mean over the square of min(d, distance to its border) = (1 - (1-2d)^3)/6;
    #   total / 6 faces = d/3 + 2 d^3 / 9.
    for d in (0.1, 0.3):
        a = _cube_face_grid(0.01)
        b = _cube_face_grid(0.01, (d, 0, 0))
        got = M.chamfer_distance(a, b)
        want = d / 3 + 2 * d**3 / 9
        assert abs(got["chamfer"] - want) < 2e-4, (d, got, want)
        assert abs(got["a_to_b"] - got["b_to_a"]) < 1e-9
    assert M.chamfer_distance(a, a)["chamfer"] == 0.0


def test_voxel_downsample_keeps_one_centroid_per_voxel_on_open3ds_grid():
    # Open3D anchors the grid at min - voxel/2 = (-0.005, -0.005, -0.005) here, so along x the
    # voxels are [-0.005, 0.005), [0.005, 0.015), ...: 0.0 alone, 0.0099 with 0.011 (an origin-
    # anchored grid would pair 0.0 with 0.0099 instead)
    pts = np.array([[0.0, 0.0, 0.0], [0.0099, 0.0, 0.0], [0.011, 0.0, 0.0], [0.5, 0.5, 0.5]])
    out = M.voxel_downsample(pts, 0.01)
    assert len(out) == 3
    assert (
        np.allclose(out[0], [0.0, 0, 0])
        and np.allclose(out[1], [0.01045, 0, 0])
        and np.allclose(out[2], 0.5)
    )
    dense = _cube_face_grid(0.005)
    assert len(M.voxel_downsample(dense, 0.01)) < len(dense) / 3


def _box(extents=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0)):
    import trimesh

    m = trimesh.creation.box(extents=extents)
    return np.asarray(m.vertices) + np.asarray(offset), np.asarray(m.faces)


def test_mesh_against_itself_gives_chamfer_zero_and_iou_one():
    v, f = _box()
    for points in ("depth", "surface"):
        info = G.mesh_metrics(v, f, v, f, points=points, depth_size=64, surface_samples=5000)
        assert info["chamfer"] == 0.0 and info["volume_iou"] == 1.0, points


def test_translated_cube_chamfer_from_mesh_samples_and_iou():
    v, f = _box(offset=(0.5, 0.5, 0.5))
    d = 0.25
    info = G.mesh_metrics(
        v, f, v + [d, 0, 0], f, points="surface", surface_samples=40_000, voxel_size=0.0
    )
    assert abs(info["chamfer"] - (d / 3 + 2 * d**3 / 9)) < 0.05 * (d / 3), info["chamfer"]
    assert abs(info["volume_iou"] - (1 - d) / (1 + d)) < 0.01
    # the protocol's depth points (visible surface only) see the shift too
    info = G.mesh_metrics(v, f, v + [d, 0, 0], f, points="depth", depth_size=64)
    assert 0.05 < info["chamfer"] < 0.15 and abs(info["volume_iou"] - 0.6) < 0.01


@pytest.mark.parametrize("s", [0.5, 0.8])
def test_scaled_cube_iou_is_s_cubed(s):
    v, f = _box()
    origin, cell = G.occupancy_grid_spec([np.stack([v.min(0), v.max(0)])], 64)
    a = G.occupancy(v, f, origin, cell, 64)
    b = G.occupancy(v * s, f, origin, cell, 64)
    assert abs(M.volume_iou(a, b) - s**3) < 0.01


def test_occupancy_of_a_sphere_has_its_volume_on_every_axis():
    import trimesh

    sph = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    origin, cell = G.occupancy_grid_spec([sph.bounds], 64)
    counts = [G._parity_along(sph.vertices, sph.faces, k, origin, cell, 64).sum() for k in range(3)]
    assert counts[0] == counts[1] == counts[2]
    assert abs(counts[0] * cell**3 - sph.volume) < 0.01 * sph.volume


def test_rasteriser_covers_each_pixel_once_with_shared_edges():
    # a 5x5 grid of quads (two triangles each, shared diagonals and edges through pixel centres)
    W = 20
    xs = np.linspace(0, W, 6)
    verts = np.array([[x, y] for y in xs for x in xs])
    faces = []
    for r in range(5):
        for c in range(5):
            i = r * 6 + c
            faces += [[i, i + 1, i + 7], [i, i + 7, i + 6]]
    xy = verts[np.array(faces)]
    cover = np.zeros((W, W), dtype=int)
    for fi, px, py, bary in G.rasterize_triangles(xy, W, W):
        np.add.at(cover, (py, px), 1)
        assert np.allclose(bary.sum(1), 1) and (bary >= -1e-12).all()
    assert (cover == 1).all()


def test_depth_render_and_backprojection_land_on_the_surface():
    from hifi123.core.cameras import look_at_c2w

    v, f = _box()
    c2w = look_at_c2w(0.0, 0.0, 3.0)
    depth = G.render_depth(v, f, c2w, 30.0, 64)
    assert abs(depth[32, 32] - 2.5) < 1e-9 and np.isinf(depth[0, 0])
    pts = G.depth_points(v, f, G.orbit_cameras(8, 30.0), np.zeros(3), 3.0, 30.0, 64)
    assert len(pts) > 1000
    assert np.abs(np.abs(pts).max(axis=1) - 0.5).max() < 1e-9  # every point on the cube's surface


def _literal_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM written out window by window: 11x11 Gaussian (sigma 1.5) weights, population
    statistics, every window position fully inside the image, averaged over positions/channels."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[ch, i : i + 11, j : j + 11], y[ch, i : i + 11, j : j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                vals.append(
                    ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
                )
    return float(np.mean(vals))


def test_ssim_equals_the_literal_cropped_border_definition():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 19, 23, generator=gen)
    b = (a + 0.2 * torch.randn(2, 3, 19, 23, generator=gen)).clamp(0, 1)
    got = M.ssim(a, b)
    for k in range(2):
        assert (
            abs(float(got[k]) - _literal_ssim(a[k].double().numpy(), b[k].double().numpy())) < 1e-6
        )
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(a[:, :, :10, :10], b[:, :, :10, :10])


def test_chamfer_is_symmetric_on_an_asymmetric_pair():
    """a = {0}, b = {0, (10, 0, 0)}: a->b is 0, b->a is 5; the Chamfer distance is the mean of
    both directions (2.5) whichever set comes first, not either one-sided value."""
    a = np.zeros((1, 3))
    b = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    ab, ba = M.chamfer_distance(a, b), M.chamfer_distance(b, a)
    assert (ab["a_to_b"], ab["b_to_a"]) == (0.0, 5.0)
    assert ab["chamfer"] == ba["chamfer"] == 2.5
