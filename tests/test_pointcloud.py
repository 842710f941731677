"""Make-It-3D refine: textured point-cloud building (hifi123.core.makeit3d.pointcloud) on the
synthetic sample object, whose exact geometry (`sample_sdf`) and renders (`render_sample`) are
known.

Brute-force checks use the sample module's own numpy camera code (`project_points`), independent of
the torch code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.core.cameras import ViewCamera
from hifi123.core.makeit3d import pointcloud as pc_mod
from hifi123.core.makeit3d.point_raster import (
    PointRasterSettings,
    rasterize_fragments,
    rasterize_points,
)
from hifi123.core.makeit3d.pointcloud import (
    PointCloudConfig,
    build_cameras,
    build_point_cloud,
    zbuffer_filter,
)
from hifi123.sample import make_sample as ms

SIZE = 64
AZIMUTHS = 6


def _render(cam: ViewCamera, depth_type: str = "z"):
    r = ms.render_sample(
        cam.elevation_deg, cam.azimuth_deg, cam.distance, cam.fovy_deg, cam.height, supersample=1
    )
    depth = r["depth_z"]
    if depth_type == "distance":  # the distance along the unit pixel ray
        d = ms.ray_directions(cam.height, cam.width, cam.fovy_deg)
        depth = depth * np.linalg.norm(d, axis=-1)
    return {"rgb": r["rgb"], "depth": depth, "opacity": r["alpha"].astype(np.float32)}


def _reference():
    ref = ms.render_sample(0.0, 0.0, size=SIZE)
    return ViewCamera.orbit(0.0, 0.0, ms.REF_DISTANCE, ms.REF_FOVY_DEG, SIZE), ref


def _cfg(**kw):
    return PointCloudConfig(resolution=SIZE, n_azimuths=AZIMUTHS, **kw)


pytestmark = pytest.mark.usefixtures("one_thread")  # small index-heavy tensors (conftest)


@pytest.fixture(scope="module")
def built():
    cam, ref = _reference()
    cloud = build_point_cloud(_render, cam, ref["rgb"], ref["alpha"], _cfg())
    return cam, ref, cloud


def test_cameras_cover_360_degrees_without_the_reference():
    cam, _ = _reference()
    views = build_cameras(cam, _cfg())
    assert len(views) == 3 * AZIMUTHS - 1  # the reference (elevation 0, azimuth 0) is not rebuilt
    azims = sorted({round(v.azimuth_deg % 360.0, 6) for v in views})
    assert azims == [round(360.0 * k / AZIMUTHS, 6) for k in range(AZIMUTHS)]
    assert {v.elevation_deg for v in views} == {-10.0, 0.0, 10.0}
    # front first
    assert abs(views[0].azimuth_deg) < 1e-9 and abs(views[-1].azimuth_deg % 360 - 180) < 1e-9


def test_points_lie_on_the_ground_truth_surface(built):
    _, ref, cloud = built
    sdf = np.abs(ms.sample_sdf(cloud.positions.double().numpy()))
    assert len(cloud) > 1000
    assert sdf.max() < 1e-4 * ms.OBJECT_SIZE, sdf.max()
    ref_pts = cloud.positions[cloud.source_view == 0]
    # the reference points are the eroded reference mask back-projected: most of the object's pixels
    assert 0.6 * ref["alpha"].sum() < len(ref_pts) <= ref["alpha"].sum()
    # and every source view contributes points lying on the surface it saw
    assert int(cloud.source_view.max()) >= 1 and set(cloud.source_view.unique().tolist()) >= {0}


def test_reference_points_carry_the_reference_colours(built):
    cam, ref, cloud = built
    sel = cloud.source_view == 0
    u, v, _ = ms.project_points(
        cloud.positions[sel].double().numpy(), cam.c2w, cam.fovy_deg, SIZE, SIZE
    )
    i, j = np.floor(u).astype(int), np.floor(v).astype(int)
    # pixel centres
    assert np.allclose(u - i, 0.5, atol=1e-3) and np.allclose(v - j, 0.5, atol=1e-3)
    assert np.allclose(cloud.colors[sel].numpy(), ref["rgb"][j, i], atol=1e-6)
    assert bool(cloud.reference_visible[sel].all())


def _seen_from(cam: ViewCamera, points: np.ndarray) -> np.ndarray:
    """Exact visibility: the ray from the camera centre towards the point first hits the object at
    the point (sphere tracing the ground-truth SDF)."""
    origin = cam.c2w[:3, 3]
    dirs = points - origin
    hit, t = ms.cast_rays(origin, dirs)
    return hit & (t >= np.linalg.norm(dirs, axis=1) - 1e-3 * ms.OBJECT_SIZE)


def _earlier_visible_near(cloud, view_index, cam, radius):
    """Brute force: for each point first added by `view_index`, is there a point added EARLIER that
    the view truly sees (exact ray cast) and that duplicates it: projected within the coverage
    `radius` (pixels) and closer in 3D than two pixel footprints (so a point across a depth edge,
    i.e. another surface, does not count)?"""
    pos = cloud.positions.double().numpy()
    src = cloud.source_view.numpy()
    new, old = pos[src == view_index], pos[src < view_index]
    old = old[_seen_from(cam, old)]
    u, v, _ = ms.project_points(old, cam.c2w, cam.fovy_deg, SIZE, SIZE)
    un, vn, zn = ms.project_points(new, cam.c2w, cam.fovy_deg, SIZE, SIZE)
    d2 = (un[:, None] - u[None]) ** 2 + (vn[:, None] - v[None]) ** 2
    dist = np.linalg.norm(new[:, None] - old[None], axis=-1)
    return ((d2 <= radius**2) & (dist <= 2.0 * zn[:, None] / cam.focal)).any(1)


def test_no_point_is_added_twice(built):
    _, _, cloud = built
    cfg = _cfg()
    checked = 0
    for k, cam in enumerate(cloud.cameras, start=1):
        if (cloud.source_view == k).any():
            dup = _earlier_visible_near(cloud, k, cam, cfg.coverage_radius_px)
            assert not dup.any(), (
                f"view {k}: {int(dup.sum())} points re-added over existing surface"
            )
            checked += 1
    assert checked >= 5


def test_coverage_is_what_keeps_the_cloud_small(built, monkeypatch):
    """Without the coverage test every view re-adds the whole surface it sees: the same surface
    shows up from many views (points from different views closer than a quarter pixel)."""
    cam, ref, cloud = built

    def close_pairs(c):
        from scipy.spatial import cKDTree

        pos = c.positions.double().numpy()
        eps = 0.25 * ms.REF_DISTANCE / cam.focal  # a quarter of a pixel's footprint
        pairs = cKDTree(pos).query_pairs(eps, output_type="ndarray")
        src = c.source_view.numpy()
        return int((src[pairs[:, 0]] != src[pairs[:, 1]]).sum()) / len(pos)

    monkeypatch.setattr(
        pc_mod, "coverage_mask", lambda points, camera, depth, mask, cfg: torch.zeros_like(mask)
    )
    naive = build_point_cloud(_render, cam, ref["rgb"], ref["alpha"], _cfg())
    assert len(naive) > 3 * len(cloud)
    assert close_pairs(cloud) < 0.02 < 0.2 < close_pairs(naive)


def test_zbuffer_keeps_the_nearest_point():
    cam, ref = _reference()
    pts = torch.from_numpy(ref["position"][ref["alpha"]]).float()
    # a second copy of every point pushed back along its ray (well beyond the same-surface
    # tolerance, ~0.12 at 64 px), interleaved with the originals
    behind = pts + 0.3 * (pts - cam.c2w_tensor()[:3, 3]) / (pts - cam.c2w_tensor()[:3, 3]).norm(
        dim=1, keepdim=True
    )
    both = torch.stack([behind, pts], 1).reshape(-1, 3)
    keep = zbuffer_filter(both, cam, 1.0, _cfg())
    # a point just behind a depth edge goes, copy or not
    alone = zbuffer_filter(pts, cam, 1.0, _cfg())
    assert not keep[0::2].any() and torch.equal(keep[1::2], alone) and alone.float().mean() > 0.9
    # the rasteriser's 1-nearest selection returns the front point of every pixel
    frags = rasterize_fragments(
        both, cam.c2w_tensor(), cam.fovy, SIZE, SIZE, 0.5, points_per_pixel=1
    )
    assert (frags.point % 2 == 1).all() and len(frags.pix) == int(ref["alpha"].sum())


def test_depth_as_ray_distance_gives_the_same_cloud(built):
    cam, ref, cloud = built
    other = build_point_cloud(
        lambda c: _render(c, "distance"),
        cam,
        ref["rgb"],
        ref["alpha"],
        _cfg(),
        depth_type="distance",
    )
    assert len(other) == len(cloud)
    assert torch.allclose(other.positions, cloud.positions, atol=1e-5)


def test_reference_visible_flags_follow_the_reference_view(built):
    cam, ref, cloud = built
    flagged = (cloud.reference_visible & (cloud.source_view > 0)).numpy()
    novel = (~cloud.reference_visible).numpy()
    assert flagged.sum() > 0 and novel.sum() > 0
    pos = cloud.positions.double().numpy()
    # flagged novel points: on the reference's visible surface
    assert _seen_from(cam, pos[flagged]).mean() > 0.95
    # the rest: hidden from it, but for grazing silhouette points that fail the strict depth test
    assert _seen_from(cam, pos[novel]).mean() < 0.2
    # flagged points take the reference colours at their projection
    u, v, _ = ms.project_points(pos[flagged], cam.c2w, cam.fovy_deg, SIZE, SIZE)
    i, j = np.floor(u).astype(int), np.floor(v).astype(int)
    assert np.abs(cloud.colors.numpy()[flagged] - ref["rgb"][j, i]).mean() < 0.1


def test_point_budget_is_a_seeded_subset_keeping_reference_points(built):
    cam, ref, _ = built

    def build(**kw):  # 3 azimuths: a quicker cloud, the same mechanism
        return build_point_cloud(
            _render,
            cam,
            ref["rgb"],
            ref["alpha"],
            PointCloudConfig(resolution=SIZE, n_azimuths=3, **kw),
        )

    cloud = build()
    n_ref = int((cloud.source_view == 0).sum())
    budget = n_ref + 100
    a, b, c = (
        build(max_points=budget, seed=1),
        build(max_points=budget, seed=1),
        build(max_points=budget, seed=2),
    )
    assert len(cloud) > budget and len(a) == budget and int((a.source_view == 0).sum()) == n_ref
    assert torch.equal(a.positions, b.positions) and not torch.equal(a.positions, c.positions)
    full = {tuple(p) for p in cloud.positions.tolist()}
    assert all(tuple(p) in full for p in a.positions.tolist())  # a subset of the full cloud
    small = build(max_points=n_ref // 2)  # fewer than the reference points: a subset of those
    assert len(small) == n_ref // 2 and bool((small.source_view == 0).all())


def test_rasterising_at_the_reference_camera_reproduces_the_reference(built):
    cam, ref, cloud = built
    sel = cloud.source_view == 0
    pts, cols = cloud.positions[sel], cloud.colors[sel]
    # radius 0.5 px: each pixel holds exactly its own point -> colour * alpha_max, exactly
    settings = PointRasterSettings(radius_px=0.5, n_scales=1)

    def raster(p, c):
        return rasterize_points(p, c, cam.c2w_tensor(), cam.fovy, SIZE, SIZE, settings)[0]

    out = raster(pts, cols)
    cov = out.coverage[0, 0]
    covered = cov > 0.5
    assert int(covered.sum()) == len(pts)
    img = (out.features[0] / cov.clamp_min(1e-8)).permute(1, 2, 0)
    assert torch.allclose(img[covered], torch.from_numpy(ref["rgb"]).float()[covered], atol=1e-5)
    # the whole 360 deg cloud at the same radius: the far side hides behind
    # (weight <= 1 - alpha_max)
    full = raster(cloud.positions, cloud.colors)
    c = full.coverage[0, 0] > 0.9
    err = (
        (
            (full.features[0] / full.coverage[0]).permute(1, 2, 0)
            - torch.from_numpy(ref["rgb"]).float()
        )[c]
        .abs()
        .mean()
    )
    assert int(c.sum()) > 0.9 * ref["alpha"].sum() and float(err) < 0.05


def test_refine_contextual_loss_is_the_evaluation_distance_and_reaches_the_render(tiny_models):
    """The Make-It-3D refine stage's contextual term: -log CX (the paper's formula, written as loops
    in the test) of the VGG19 features, lowest for the reference itself, with a gradient."""
    from hifi123.core.makeit3d.point_refine import contextual_loss
    from hifi123.core.makeit3d.reference import reference_on_white
    from hifi123.evaluation.models import load_vgg19_features
    from test_eval_metrics import _cx_reference

    vgg = load_vgg19_features(tiny_models["vgg19"], "system.refine.contextual_model", "relu5_4")
    sample = str(
        Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "assets" / "sample_rgba.png"
    )
    ref = torch.nn.functional.interpolate(
        reference_on_white(sample), (64, 64), mode="bilinear", align_corners=False
    )
    ref_feats = vgg(ref)
    noise = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(
        True
    )
    loss = contextual_loss(noise, ref_feats, vgg)
    with torch.no_grad():
        x = vgg(noise.detach().permute(0, 3, 1, 2))[0].flatten(1)
    want = -np.log(_cx_reference(x, ref_feats.detach()[0].flatten(1), h=0.5))
    assert abs(float(loss) - want) < 1e-4
    loss.backward()
    assert noise.grad.abs().sum() > 0
    same = contextual_loss(ref.permute(0, 2, 3, 1), ref_feats, vgg)
    assert float(same) < float(loss)
