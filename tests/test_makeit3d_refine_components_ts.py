"""Make-It-3D refine in threestudio (marked): the registered point-cloud geometry and deferred
renderer, makeit3d-refine.yaml parsed by threestudio, and the point cloud from a coarse
checkpoint."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hifi123.core.makeit3d.point_refine import (
    REFINE_TERMS,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "custom" / "hifi123" / "configs"
REFINE_YAMLS = ("makeit3d-refine.yaml", "makeit3d-refine-lowvram.yaml")


# threestudio-marked; small index-heavy tensors run on one thread (conftest)
pytestmark = [pytest.mark.threestudio, pytest.mark.usefixtures("one_thread")]


# -------------------------------------------------------------------------- threestudio
def _tiny_cloud(size=32):
    from hifi123.sample import make_sample as ms

    pts, cols = [], []
    for az in (0, 120, 240):
        r = ms.render_sample(0.0, az, size=size, supersample=1)
        pts.append(r["position"][r["alpha"]])
        cols.append(r["rgb"][r["alpha"]])
    return np.concatenate(pts).astype(np.float32), np.concatenate(cols).astype(np.float32)


def test_names_registered(threestudio_env):
    import hifi123

    assert threestudio_env.ok, threestudio_env.output
    for name in ("makeit3d-point-cloud", "makeit3d-deferred-renderer"):
        assert name in threestudio_env.threestudio.__modules__ and name in hifi123.REGISTERED_NAMES


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
    cfg = load_config(
        str(CONFIG_DIR / name),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            "system.geometry_convert_from=coarse/ckpts/last.ckpt",
        ],
    )
    assert (
        cfg.system.stage == "refine"
        and cfg.system.geometry_convert_from == "coarse/ckpts/last.ckpt"
    )
    parse_structured(find(cfg.data_type).Config, cfg.data)
    parse_structured(RandomCameraDataModuleConfig, cfg.data.random_camera)
    # the system section: makeit3d-system's fields plus the refine-stage keys it will read
    system_cls = find(cfg.system_type)
    known = {f.name for f in fields(system_cls.Config)}
    assert set(cfg.system.keys()) <= known, set(cfg.system.keys()) - known
    refine = RefineConfig(**cfg.system.refine)
    PointCloudConfig(**refine.point_cloud)
    assert (
        refine.reference_image_path == cfg.data.image_path
        and refine.fovy_deg == cfg.data.default_fovy_deg
    )
    parts = {}
    for part in ("geometry", "material", "background", "renderer", "guidance"):
        parts[part] = parse_structured(find(cfg.system[f"{part}_type"]).Config, cfg.system[part])
    # every lambda the system reads (coarse terms at 0 plus the refine terms), each with a comment
    read = {f"lambda_{t}" for t in system_cls.loss_terms_for(False)} | {
        f"lambda_{t}" for t in REFINE_TERMS
    }
    assert read <= set(cfg.system.loss.keys()), read - set(cfg.system.loss.keys())
    text = (CONFIG_DIR / name).read_text()
    for key in cfg.system.loss:
        assert re.search(rf"^\s+{key}: .*#", text, re.M) or re.search(rf"#.*\n\s+{key}:", text), key
    assert (
        cfg.system.loss.lambda_texture_reference == 1e5
        and cfg.system.loss.lambda_texture_novel == 1e3
    )
    assert cfg.trainer.max_steps == 5000 and cfg.data.height % 4 == 0
    # the build resolution is the render size, and the NDC radius is Make-It-3D's (2 px at 800)
    assert refine.point_cloud["resolution"] == cfg.data.height == cfg.data.random_camera.height
    assert math.isclose(cfg.system.renderer.point_radius_px / cfg.data.height, 2.0 / 800.0)
    # optimiser groups resolve on the real modules; lr 1e-3 -> 1e-4 over 1000 steps, then constant
    geo = find(cfg.system.geometry_type)(cfg.system.geometry)
    ren = find(cfg.system.renderer_type)(
        cfg.system.renderer, geometry=geo, material=None, background=None
    )
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
    assert math.isclose(lrs[1000], 1e-4, rel_tol=1e-6) and math.isclose(
        lrs[1499], 1e-4, rel_tol=1e-6
    )


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
        "system.refine.point_cloud.resolution",
        "system.refine.point_cloud.max_points",
        "system.renderer.point_radius_px",
        "system.guidance.half_precision_weights",
        "system.guidance.vae_gradient_checkpointing",
    }
    text = (CONFIG_DIR / REFINE_YAMLS[1]).read_text()
    for key in (
        "resolution",
        "max_points",
        "point_radius_px",
        "half_precision_weights",
        "vae_gradient_checkpointing",
    ):
        assert re.search(rf"{key}: .*# lowvram", text), key


def test_geometry_and_renderer_forward_on_cpu(threestudio_env, tmp_path):
    from hifi123.core.cameras import ViewCamera
    from hifi123.threestudio_ext.cameras import camera_batch
    from hifi123.threestudio_ext.geometry.point_cloud import MakeIt3DPointCloud

    find = threestudio_env.threestudio.find
    torch.manual_seed(0)
    pos, col = _tiny_cloud()
    geo = find("makeit3d-point-cloud").from_arrays(pos, col, np.arange(len(pos)) % 2 == 0)
    assert isinstance(geo, MakeIt3DPointCloud) and geo.descriptors.shape == (len(pos), 19)
    assert torch.allclose(geo.colors, torch.from_numpy(col)) and torch.equal(
        geo.initial_colors, geo.colors.detach()
    )
    ren = find("makeit3d-deferred-renderer")(
        {"point_radius_px": 1.0}, geometry=geo, material=None, background=None
    )
    batch = camera_batch(ViewCamera.orbit(10.0, 30.0, 3.8, 20.0, 32))
    out = ren(**batch)
    assert out["comp_rgb"].shape == (1, 32, 32, 3) and bool(
        ((out["comp_rgb"] > 0) & (out["comp_rgb"] < 1)).all()
    )
    assert (
        out["opacity"].shape == (1, 32, 32, 1)
        and 0.1 < float((out["opacity"] > 0.5).float().mean()) < 0.6
    )
    assert [tuple(c.shape) for c in out["coverage_scales"]] == [
        (1, 32, 32, 1),
        (1, 16, 16, 1),
        (1, 8, 8, 1),
    ]
    out["comp_rgb"].mean().backward()
    assert geo.descriptors.grad.abs().sum() > 0 and geo.background.grad is not None
    assert all(p.grad is not None for p in ren.unet.parameters())
    # eval batches pass height/width as 1-element tensors; a checkpoint of unknown size reloads
    ren.eval()
    with torch.no_grad():
        ref = ren(**{**batch, "height": torch.tensor([32]), "width": torch.tensor([32])})[
            "comp_rgb"
        ]
        geo2 = find("makeit3d-point-cloud")({})
        ren2 = find("makeit3d-deferred-renderer")(
            {"point_radius_px": 1.0}, geometry=geo2, material=None, background=None
        )
        geo2.load_state_dict(geo.state_dict())
        ren2.load_state_dict(ren.state_dict())
        ren2.eval()
        assert geo2.n_points == len(pos) and torch.allclose(ren2(**batch)["comp_rgb"], ref)
    with pytest.raises(TypeError, match="makeit3d-system"):
        MakeIt3DPointCloud.create_from(geo)
    # `hifi123 run`'s PLY stage finds the cloud in a refine checkpoint (positions,
    # descriptors[:, :3])
    from hifi123.run.export import load_point_cloud

    torch.save(
        {"state_dict": {f"geometry.{k}": v for k, v in geo.state_dict().items()}},
        tmp_path / "last.ckpt",
    )
    p2, c2 = load_point_cloud(str(tmp_path / "last.ckpt"))
    assert np.allclose(p2, pos) and np.array_equal(
        c2, np.round(np.clip(geo.colors.detach().numpy(), 0, 1) * 255).astype(np.uint8)
    )


@pytest.mark.parametrize(
    "field,value", [("min_slab_points", 0), ("min_transmittance", 1.5), ("point_radius_px", -1.0)]
)
def test_renderer_refuses_bad_raster_settings(threestudio_env, field, value):
    from hifi123.errors import InputError

    geo = threestudio_env.threestudio.find("makeit3d-point-cloud")({})
    with pytest.raises(
        InputError, match=rf"system\.renderer\.{field} = "
    ):  # before anything is built
        threestudio_env.threestudio.find("makeit3d-deferred-renderer")(
            {field: value}, geometry=geo, material=None, background=None
        )


def test_point_cloud_from_a_coarse_checkpoint(tmp_path, threestudio_env):
    """The chain the refine stage uses: a coarse threestudio checkpoint (+ its parsed.yaml) ->
    geometry/material/background/renderer -> renders -> point cloud (CPU test renderer)."""
    from hifi123.core.cameras import ViewCamera
    from hifi123.core.makeit3d.pointcloud import PointCloudConfig
    from hifi123.testing.torch_renderer import register_torch_volume_renderer
    from hifi123.threestudio_ext.systems.makeit3d_refine import build_point_cloud_from_checkpoint

    renderer_name = register_torch_volume_renderer()
    from hifi123.testing.coarse_trial import write_coarse_trial

    ckpt = write_coarse_trial(tmp_path)
    ref = np.ones((32, 32, 4), np.float32)
    cloud = build_point_cloud_from_checkpoint(
        str(ckpt),
        ref,
        ViewCamera.orbit(0.0, 0.0, 3.0, 40.0, 32),
        PointCloudConfig(resolution=32, n_azimuths=3, elevations_deg=(0.0,)),
        renderer_type=renderer_name,
        renderer_override={"radius": 1.0, "num_samples_per_ray": 32},
    )
    # inside the coarse bounding sphere
    assert len(cloud) > 50 and cloud.positions.norm(dim=1).max() < 1.0
    assert int(cloud.source_view.max()) >= 1 and bool(cloud.reference_visible.any())
