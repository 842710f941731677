"""The reference normal loss in threestudio's own conventions, checked on the sample object.

threestudio's datamodule loads `sample_normal.png` and makes the reference rays; threestudio's
`implicit-volume` geometry (its density replaced by the sample's known SDF) gives the normals; the
volume renderer accumulates them into `comp_normal`; our loss compares the two. If the file's
frame, channel order or sign disagreed with threestudio's, the angle would be large."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.threestudio

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "custom" / "hifi123" / "assets" / "sample_rgba.png"
SIZE = 64


def _reference_batch(find):
    # threestudio's single-image-datamodule with a `device` field (it would pick cuda:<rank>)
    dm = find("hifi123-single-image-datamodule")(
        {
            "device": "cpu",
            "image_path": str(SAMPLE),
            "height": SIZE,
            "width": SIZE,
            "default_elevation_deg": 0.0,
            "default_azimuth_deg": 0.0,
            "default_camera_distance": 3.8,
            "default_fovy_deg": 20.0,
            "requires_depth": False,
            "requires_normal": True,
            "use_random_camera": False,
            "rays_noise_scale": 0.0,
        }  # threestudio jitters training rays by default
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _sample_geometry(find):
    from hifi123.sample import make_sample as ms

    geo = find("implicit-volume")(
        {
            "radius": 2.0,
            "normal_type": "finite_difference_laplacian",
            "finite_difference_normal_eps": 0.004,
        }
    )

    def sdf_density(points, raw_density):  # replaces the hash-grid density by the sample's surface
        sdf = torch.from_numpy(ms.sample_sdf(points.detach().double().cpu().numpy().reshape(-1, 3)))
        sdf = sdf.to(points).view(*points.shape[:-1], 1)
        # opaque inside, a 0.004-wide smooth edge (for finite-difference normals), empty from 0.006
        density = 2000.0 * torch.sigmoid(-sdf / 0.004) * (sdf < 0.006)
        return density, density

    geo.get_activated_density = sdf_density
    return geo


def _render(find, batch, geometry):
    from hifi123.testing.torch_renderer import register_torch_volume_renderer

    material = find("no-material")({"n_output_dims": 3, "requires_normal": True})
    background = find("solid-color-background")({"color": [1.0, 1.0, 1.0], "learned": False})
    renderer = find(register_torch_volume_renderer())(
        {
            "radius": 2.0,
            "num_samples_per_ray": 192,
            "randomized": False,
            "return_comp_normal": True,
        },
        geometry=geometry,
        material=material,
        background=background,
    )
    renderer.eval()
    with torch.no_grad():
        return renderer(batch["rays_o"], batch["rays_d"], batch["light_positions"])


def test_sample_normal_png_agrees_with_threestudio_rendered_normals(threestudio_env):
    from hifi123.core.normals import decode_file_normal, decode_render_normal, reference_normal_loss

    torch.set_num_threads(2)
    find = threestudio_env.threestudio.find
    batch = _reference_batch(find)
    out = _render(find, batch, _sample_geometry(find))
    # the known geometry, seen by threestudio's reference camera, covers threestudio's mask
    mask = batch["mask"][..., 0]
    rendered = out["opacity"][..., 0] > 0.5
    iou = (mask & rendered).sum() / (mask | rendered).sum()
    assert iou > 0.85, float(iou)  # 64² silhouettes: the thin ring and the edges cost ~0.1

    # angles where both see the object, away from the silhouette (the 512 -> 64 resize mixes
    # the file's normals with the zeros outside the mask there)
    inner = torch.nn.functional.max_pool2d((~mask).float()[:, None], 3, 1, 1)[:, 0] == 0
    m = inner & rendered
    gt = torch.nn.functional.normalize(decode_file_normal(batch["ref_normal"][m]), dim=-1)
    pred = torch.nn.functional.normalize(decode_render_normal(out["comp_normal"][m]), dim=-1)
    angle = torch.rad2deg(torch.arccos((gt * pred).sum(-1).clamp(-1, 1))).numpy()
    assert m.sum() > 500
    print("normal angle median / p90 (deg):", np.median(angle), np.percentile(angle, 90))
    assert np.median(angle) < 3.0, np.median(angle)  # measured 0.9
    assert np.percentile(angle, 90) < 12.0, np.percentile(angle, 90)  # measured 6.2
    loss = float(reference_normal_loss(batch["ref_normal"], out["comp_normal"], m))
    assert loss < 0.02, loss

    # each convention error the loss could make gives a large loss on the same data
    ref = batch["ref_normal"]
    for wrong in (1.0 - ref, ref[..., [2, 1, 0]], ref[..., [1, 0, 2]]):
        assert float(reference_normal_loss(wrong, out["comp_normal"], m)) > 0.3
