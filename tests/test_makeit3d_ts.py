"""Make-It-3D inside a real threestudio (GPU-only modules stubbed), on CPU: configs, registration,
the guidance, the progressive-camera datamodule and a few training steps of the system."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hifi123.testing.coarse_trial import torch_field
from hifi123.testing.cpu_threestudio import quiet_cpu_trainer

pytestmark = pytest.mark.threestudio

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "custom" / "hifi123" / "configs"
CONFIGS = ("makeit3d-coarse.yaml", "makeit3d-coarse-lowvram.yaml")
SAMPLE = REPO / "custom" / "hifi123" / "assets" / "sample_rgba.png"
NAMES = ("makeit3d-guidance", "makeit3d-system", "makeit3d-single-image-datamodule")
LOWVRAM_KEYS = {
    "name",
    "data.height",
    "data.width",
    "data.random_camera.height",
    "data.random_camera.width",
    "data.random_camera.eval_height",
    "data.random_camera.eval_width",
    "system.renderer.num_samples_per_ray",
    "system.guidance.half_precision_weights",
    "system.guidance.vae_gradient_checkpointing",
}


def _load(name, tmp_path, *cli):
    from threestudio.utils.config import load_config

    return load_config(str(CONFIG_DIR / name), cli_args=[f"exp_root_dir={tmp_path}", *cli])


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_with_no_unknown_keys_and_every_lambda(
    name, tmp_path, threestudio_env, monkeypatch
):
    from threestudio.data.uncond import RandomCameraDataModuleConfig
    from threestudio.systems.optimizers import Adan
    from threestudio.utils.config import parse_structured

    find = threestudio_env.threestudio.find
    # image_path is relative to the root (ours mirrors threestudio's custom/)
    monkeypatch.chdir(REPO)
    cfg = _load(name, tmp_path)
    assert (
        cfg.data.image_path == "custom/hifi123/assets/sample_rgba.png"
        and Path(cfg.data.image_path).is_file()
    )
    # every section through the Config of the class that reads it (unknown keys raise TypeError)
    data = parse_structured(find(cfg.data_type).Config, cfg.data)
    parse_structured(RandomCameraDataModuleConfig, cfg.data.random_camera)
    system_cls = find(cfg.system_type)
    sys_cfg = parse_structured(system_cls.Config, cfg.system)
    for part in ("geometry", "material", "background", "renderer", "guidance"):
        parse_structured(find(sys_cfg[f"{part}_type"]).Config, sys_cfg[part])
    Adan([torch.nn.Parameter(torch.zeros(1))], **sys_cfg.optimizer.args)
    assert set(sys_cfg.optimizer.params) <= {
        "geometry.encoding",
        "geometry.density_network",
        "geometry.feature_network",
    }
    # the lambdas: exactly the ones the system reads, each with a comment in the file
    read = {f"lambda_{t}" for t in system_cls.loss_terms_for(sys_cfg.refinement)}
    assert set(sys_cfg.loss) == read
    lines = [
        ln
        for ln in (CONFIG_DIR / name).read_text().splitlines()
        if ln.strip().startswith("lambda_")
    ]
    assert len(lines) == len(read) and all("#" in ln for ln in lines)
    # interpolations tie the sections together
    assert cfg.system.guidance.cond_image_path == cfg.data.image_path
    assert cfg.system.guidance.reference_azimuth_deg == cfg.data.default_azimuth_deg
    assert cfg.system.guidance.back_threshold_deg == cfg.system.back_threshold_deg
    assert data.max_steps == cfg.trainer.max_steps == 5000
    assert data.requires_depth and not data.requires_normal
    assert cfg.system.renderer.return_normal_perturb is True
    assert tuple(cfg.data.random_camera.fovy_range) == (15, 25)


def test_lowvram_changes_only_memory_settings(tmp_path, threestudio_env):
    from omegaconf import OmegaConf

    a, b = (
        _flat(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / n), resolve=False))
        for n in CONFIGS
    )
    assert a.keys() == b.keys()
    assert {k for k in a if a[k] != b[k]} == LOWVRAM_KEYS


# ------------------------------------------------------------------------------- registration
def test_names_are_registered(threestudio_env):
    import hifi123
    from hifi123.threestudio_ext.systems.base import ImageConditionedSystem
    from hifi123.threestudio_ext.systems.makeit3d import MakeIt3DSystem
    from threestudio.systems.base import BaseLift3DSystem

    ts = threestudio_env.threestudio
    assert threestudio_env.ok, threestudio_env.output
    for name in NAMES:
        assert name in ts.__modules__ and name in hifi123.REGISTERED_NAMES, name
    assert ts.find("makeit3d-system") is MakeIt3DSystem
    assert issubclass(MakeIt3DSystem, ImageConditionedSystem) and issubclass(
        ImageConditionedSystem, BaseLift3DSystem
    )
    # the shared base is not registered
    assert ImageConditionedSystem not in ts.__modules__.values()


# ---------------------------------------------------------------------------------- guidance
def _guidance_cfg(tiny, **kw):
    cfg = {
        "pretrained_model_name_or_path": tiny["sd2-base"],
        "clip_backend": "transformers",
        "clip_model": tiny["clip"],
        "clip_pretrained": None,
        "cond_image_path": str(SAMPLE),
        "half_precision_weights": False,
    }
    cfg.update(kw)
    return cfg


def test_guidance_call_on_cpu(threestudio_env, tiny_models):
    find = threestudio_env.threestudio.find
    torch.set_num_threads(2)
    g = find("makeit3d-guidance")(
        _guidance_cfg(tiny_models, min_step_percent=0.3, max_step_percent=0.3)
    )
    # the caption file; nothing loaded yet
    assert g.prior is None and g.prompt.startswith("a toy made of")
    rgb = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    batch = {
        "elevation": torch.tensor([5.0]),
        "azimuth": torch.tensor([30.0]),
        "camera_distances": torch.tensor([3.8]),
        "height": 16,
        "width": 16,
        "shading": "albedo",
    }
    # a positional prompt_utils is ignored
    out = g(rgb, object(), **batch, rgb_as_latents=False, guidance_eval=True)
    assert {k for k in out if k.startswith("loss_")} == {
        f"loss_{t}" for t in ("sds", "clip_d", "clip_d_txt", "clip_img", "clip_txt")
    }
    assert out["timesteps"].tolist() == [300] and out["use_clip_d"].tolist() == [True]
    assert g.device == torch.device("cpu") and out["min_step"] == out["max_step"] == 300
    assert out["loss_sds"].item() == 0.0
    out["loss_clip_d"].backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    ev = out["eval"]
    assert ev["bs"] == 1 and all(
        ev[k].shape[-1] == 3 and ev[k].dim() == 4
        for k in ("imgs_noisy", "imgs_1step", "imgs_1orig", "imgs_final")
    )

    # a back view (relative to the reference azimuth passed by the system) uses SDS
    rgb.grad = None
    out = g(
        rgb,
        **{**batch, "azimuth": torch.tensor([170.0])},
        terms=["sds", "clip_d"],
        reference_azimuth_deg=-10.0,
    )
    assert out["is_back"].tolist() == [True] and out["use_clip_d"].tolist() == [False]
    assert set(k for k in out if k.startswith("loss_")) == {"loss_sds", "loss_clip_d"}
    out["loss_sds"].backward()
    assert rgb.grad.abs().sum() > 0

    # timestep ranges are threestudio schedules, re-evaluated in update_step
    s = find("makeit3d-guidance")(
        _guidance_cfg(tiny_models, min_step_percent=[0, 0.3, 0.5, 100], max_step_percent=0.6)
    )
    s.update_step(0, 100)
    assert s.core_config.min_step_percent == pytest.approx(0.5)


def test_guidance_errors_before_loading_a_model(threestudio_env, tiny_models, tmp_path):
    from hifi123.errors import InputError, ModelNotFoundError

    find = threestudio_env.threestudio.find
    with pytest.raises(InputError, match="cond_image_path"):
        find("makeit3d-guidance")(_guidance_cfg(tiny_models, cond_image_path=""))
    lone = tmp_path / "lone_rgba.png"
    shutil.copy(SAMPLE, lone)  # no caption file next to it
    with pytest.raises(InputError, match="prompt"):
        find("makeit3d-guidance")(_guidance_cfg(tiny_models, cond_image_path=str(lone)))
    assert (
        find("makeit3d-guidance")(
            _guidance_cfg(tiny_models, cond_image_path=str(lone), prompt="a red toy")
        ).prompt
        == "a red toy"
    )
    with pytest.raises(ModelNotFoundError, match="pretrained_model_name_or_path"):
        find("makeit3d-guidance")(
            _guidance_cfg(tiny_models, pretrained_model_name_or_path=str(tmp_path / "nope"))
        )
    with pytest.raises(InputError, match=r"system\.guidance\.weighting_strategy"):
        find("makeit3d-guidance")(_guidance_cfg(tiny_models, weighting_strategy="fantasia"))
    with pytest.raises(
        InputError, match=r"system\.guidance\.not_a_field"
    ) as err:  # not a bare TypeError
        find("makeit3d-guidance")(_guidance_cfg(tiny_models, not_a_field=1))
    assert "cond_image_path" in str(err.value)  # the valid keys are listed


# -------------------------------------------------------------------------------- datamodule
def _small_data(cfg, size=16):
    for key in ("height", "width"):
        cfg.data[key] = size
        cfg.data.random_camera[key] = size
        cfg.data.random_camera[f"eval_{key}"] = size
    cfg.data.random_camera.n_val_views = 2
    cfg.data.image_path = str(SAMPLE)
    return cfg


def test_progressive_camera_datamodule_on_cpu(threestudio_env, tmp_path):
    cfg = _small_data(
        _load(CONFIGS[0], tmp_path, "data.default_azimuth_deg=30.0", "trainer.max_steps=100")
    )
    dm = threestudio_env.threestudio.find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    ds = dm.train_dataset
    for step, half in ((0, 45.0), (39, 45.0), (40, 180.0), (99, 180.0)):
        ds.update_step(0, step)
        views = [ds.collate(None) for _ in range(300)]
        rc = [v["random_camera"] for v in views]
        az = torch.cat([v["azimuth"] for v in rc])
        assert az.min() >= 30 - half - 1e-4 and az.max() <= 30 + half + 1e-4, step
        assert az.min() < 30 - half + 0.2 * half and az.max() > 30 + half - 0.2 * half, step
        fov = torch.rad2deg(torch.cat([v["fovy"] for v in rc]))
        assert fov.min() >= 15 - 1e-4 and fov.max() <= 25 + 1e-4 and fov.max() - fov.min() > 8
        el = torch.cat([v["elevation"] for v in rc])
        assert el.min() >= -20 - 1e-4 and el.max() <= 20 + 1e-4
        dist = torch.cat([v["camera_distances"] for v in rc])
        assert dist.min() >= 3.8 - 1e-4 and dist.max() <= 5.7 + 1e-4
    ref = views[0]
    assert (
        ref["azimuth"].item() == 30.0
        and ref["rgb"].device.type == "cpu"
        and ref["ref_depth"] is not None
    )
    dm.setup("validate")
    assert len(dm.val_dataset) == 2
    from hifi123.errors import Hifi123Error

    with pytest.raises(Hifi123Error, match=r"data\.azimuth_sampling"):
        threestudio_env.threestudio.find(cfg.data_type)(
            {**dict(cfg.data), "azimuth_sampling": "normal"}
        )


# ------------------------------------------------------------------------------------ system
def _cpu_system_cfg(tmp_path, tiny, *cli):
    """The shipped config, shrunk to CPU: 16 px, pure-torch geometry and renderer, tiny models."""
    from hifi123.testing.torch_renderer import register_torch_volume_renderer
    from omegaconf import OmegaConf

    cfg = _small_data(_load(CONFIGS[0], tmp_path, *cli))
    s = cfg.system
    s.geometry.update(torch_field(n_frequencies=4))
    s.renderer_type = register_torch_volume_renderer()
    s.renderer = OmegaConf.create(
        {"radius": 2.0, "num_samples_per_ray": 8, "return_normal_perturb": True}
    )
    s.guidance.update(
        pretrained_model_name_or_path=tiny["sd2-base"],
        clip_backend="transformers",
        clip_model=tiny["clip"],
        clip_pretrained=None,
    )
    del s.optimizer.params["geometry.encoding"]  # the frequency encoding has no parameters
    return cfg


def _logging(system):
    logged = {}
    system.log = lambda name, value, *a, **k: logged.__setitem__(name, value)
    return logged


def test_training_steps_on_cpu(threestudio_env, tiny_models, tmp_path):
    from hifi123.errors import InputError

    torch.set_num_threads(2)
    find = threestudio_env.threestudio.find
    cfg = _cpu_system_cfg(
        tmp_path,
        tiny_models,
        "system.reference_schedule.mode=every_n",
        "system.reference_schedule.n_ref=2",
        "system.guidance.min_step_percent=0.3",
        "system.guidance.max_step_percent=0.3",
    )
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    logged = _logging(system)
    params = [p for p in system.geometry.parameters() if p.requires_grad]

    def step(i, **lambdas):
        system.set_resume_status(0, i)  # true_global_step = i without a Trainer
        for k, v in lambdas.items():
            system.cfg.loss[k] = v
        system.do_update_step(0, i)
        dm.train_dataset.update_step(0, i)
        logged.clear()
        loss = system.training_step(dm.train_dataset.collate(None), 0)["loss"]
        return loss, dict(logged)

    # iteration 0: the reference view; only the terms with a positive lambda are computed
    loss, log = step(0)
    ref_terms = {
        k.split("/")[-1] for k in log if k.startswith("train/ref/loss_") and not k.endswith("_w")
    }
    assert ref_terms == {
        "loss_rgb",
        "loss_depth",
        "loss_opacity",
        "loss_opaque",
        "loss_orient",
        "loss_3d_normal_smooth",
    }
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert system.guidance is None  # nothing loaded outside fit

    # before step 400 the diffusion lambdas are 0: a novel step runs no guidance at all
    system.build_guidance()
    loss, log = step(101)
    assert (
        not any("loss_sds" in k or "loss_clip" in k for k in log) and system.guidance.prior is None
    )

    # after step 400: CLIP-D at t = 300 on a front view, with gradient to the geometry
    loss, log = step(401, lambda_clip_img=1.0)
    assert log["train/clip_d_fraction"].item() == 1.0
    novel = {
        k.split("/")[-1] for k in log if k.startswith("train/novel/loss_") and not k.endswith("_w")
    }
    assert {"loss_sds", "loss_clip_d", "loss_clip_img"} <= novel and "loss_clip_txt" not in novel
    g_clip = torch.autograd.grad(
        log["train/novel/loss_clip_d"], params, retain_graph=True, allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in g_clip)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in params)

    # validation saves a grid on CPU
    system.eval()
    dm.setup("validate")
    with torch.no_grad():
        system.validation_step(next(iter(dm.val_dataloader())), 0)
    assert list((tmp_path / "save").glob("it401-val/*.png"))

    # a missing lambda is named at configure time
    bad = _cpu_system_cfg(tmp_path, tiny_models)
    del bad.system.loss["lambda_opacity"]
    with pytest.raises(InputError, match="lambda_opacity"):
        find(bad.system_type)(bad.system)


def test_fit_a_few_steps_with_a_trainer(threestudio_env, tiny_models, tmp_path):

    torch.set_num_threads(2)
    find = threestudio_env.threestudio.find
    cfg = _cpu_system_cfg(
        tmp_path,
        tiny_models,
        "trainer.max_steps=3",
        "system.loss.lambda_sds=1.0",
        "system.loss.lambda_clip_d=10.0",
    )
    dm = find(cfg.data_type)(cfg.data)
    system = find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    before = [p.detach().clone() for p in system.geometry.parameters()]
    trainer = quiet_cpu_trainer(
        3,
        limit_val_batches=1,
        val_check_interval=3,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
    )
    trainer.fit(system, datamodule=dm)
    # novel steps ran the guidance
    assert trainer.global_step == 3 and system.guidance.prior is not None
    assert (tmp_path / "save" / "all_training_images.png").is_file()
    assert list((tmp_path / "save").glob("it3-val.*"))  # the video (gif without imageio-ffmpeg)
    assert any((p - b).abs().max() > 0 for p, b in zip(system.geometry.parameters(), before))


def test_novel_views_are_albedo_only_in_the_official_two_windows(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.errors import InputError
    from hifi123.testing.smoke import smoke_args

    monkeypatch.chdir(REPO)
    cfg = _load(
        "makeit3d-coarse.yaml",
        tmp_path,
        *smoke_args("makeit3d-coarse.yaml", str(Path(tiny_models["sd2-base"]).parent)),
    )
    assert [list(w) for w in cfg.system.albedo_only_windows] == [[0, 1000], [2000, 3500]]
    assert cfg.system.material.ambient_only_steps == 0  # the windows decide, not the material's one
    find = threestudio_env.threestudio.find
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = find(cfg.system_type)(cfg.system)
    batch = dm.train_dataset.collate(None)
    seen = {}
    for step in (0, 999, 1000, 1999, 2000, 3499, 3500, 4999):
        system.set_resume_status(0, step)
        seen[step] = system.substep_batch(batch, "novel").get("shading")
    assert seen == {
        0: "albedo",
        999: "albedo",
        1000: None,
        1999: None,
        2000: "albedo",
        3499: "albedo",
        3500: None,
        4999: None,
    }
    system.set_resume_status(0, 10)
    assert (
        "shading" not in system.substep_batch(batch, "ref")
        or system.cfg.reference_shading == "albedo"
    )
    cfg.system.albedo_only_windows = [[5, 2]]
    with pytest.raises(InputError, match="albedo_only_windows"):
        find(cfg.system_type)(cfg.system)


def _bare_system(threestudio_env, tiny_models, tmp_path, *cli):
    """A makeit3d-system with every lambda 0 except those set afterwards (no model is loaded)."""
    find = threestudio_env.threestudio.find
    system = find("makeit3d-system")(_cpu_system_cfg(tmp_path, tiny_models, *cli).system)
    for k in list(system.cfg.loss.keys()):
        system.cfg.loss[k] = 0.0
    return system


def test_back_views_pay_the_configured_opacity_factor(threestudio_env, tiny_models, tmp_path):
    system = _bare_system(
        threestudio_env, tiny_models, tmp_path, "system.back_view_opacity_factor=7.0"
    )
    system.cfg.loss.lambda_opacity = 1.0
    ref_az = 30.0
    full = {"azimuth": torch.tensor([ref_az])}
    # one view 40 deg from the reference (front), one 170 deg away (back: >= 135)
    batch = {"azimuth": torch.tensor([ref_az + 40.0, ref_az + 170.0])}
    a, b = 0.3, 0.5
    opacity = torch.stack([torch.full((4, 4, 1), a), torch.full((4, 4, 1), b)])
    losses = system.regularizer_losses("novel", batch, {"opacity": opacity}, full)
    assert float(losses["loss_opacity"]) == pytest.approx((a**2 + 7.0 * b**2) / 2, rel=1e-6)
    # the reference sub-step is never a back view
    losses = system.regularizer_losses("ref", batch, {"opacity": opacity}, full)
    assert float(losses["loss_opacity"]) == pytest.approx((a**2 + b**2) / 2, rel=1e-6)


def test_depth_loss_compares_disparity_inside_the_eroded_mask(
    threestudio_env, tiny_models, tmp_path
):
    """The rendered z-depth D against a disparity map 1/D whose outermost 2-pixel ring of the mask
    is garbage: zero only if the loss inverts D and erodes the mask 5x5 at 512."""
    system = _bare_system(threestudio_env, tiny_models, tmp_path)
    assert system.cfg.depth_kind == "disparity" and system.cfg.depth_erosion == 5
    n = 512
    yy, xx = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    mask = ((yy - 256) ** 2 + (xx - 256) ** 2 < 150**2)[None]
    depth = (2.0 + 1.5 * torch.sin(xx / 40.0) * torch.cos(yy / 55.0))[None]  # in [0.5, 3.5]
    disparity = 0.2 / depth + 0.1  # any affine map of 1/D
    # 2 px inside the edge
    ring = mask & (F.max_pool2d((~mask).float()[:, None], 5, 1, 2)[:, 0] > 0)
    assert ring.sum() > 1000
    disparity = torch.where(
        ring, torch.rand(disparity.shape, generator=torch.Generator().manual_seed(0)) * 5, disparity
    )
    batch = {"ref_depth": disparity[..., None], "mask": mask[..., None]}
    loss = system.reference_depth_loss(batch, {"depth": depth[..., None]})
    assert float(loss) < 1e-4
    # the same data without the erosion, or compared as depth, is far from zero
    system.cfg.depth_erosion = 0
    assert float(system.reference_depth_loss(batch, {"depth": depth[..., None]})) > 0.05
    system.cfg.depth_erosion, system.cfg.depth_kind = 5, "depth"
    assert float(system.reference_depth_loss(batch, {"depth": depth[..., None]})) > 1.0


def test_one_stage_switch_for_every_system(threestudio_env, tiny_models, tmp_path):
    """`stage` and `refinement` are one switch on the shared base: either selects the refine
    stage, a contradiction or an unknown stage is an error naming the keys."""
    from hifi123.errors import InputError

    system = _bare_system(threestudio_env, tiny_models, tmp_path)
    assert system.stage == "coarse" and not system.refining
    system.cfg.refinement = True  # threestudio's name selects the refine stage too
    assert system.stage == "refine" and system.refining
    system.cfg.stage = "coarse"
    with pytest.raises(InputError, match="system.stage=coarse contradicts system.refinement=true"):
        system.stage
    system.cfg.refinement, system.cfg.stage = False, "refine"
    assert system.refining
    # the point-cloud refine stage keeps the NeRF regularisers' lambdas (DMTet's are for meshes)
    assert "orient" in type(system).loss_terms_for(True)
    system.cfg.stage = "refined"
    with pytest.raises(InputError, match="system.stage='refined'"):
        system.stage
    with pytest.raises(InputError, match="system.stage"):
        threestudio_env.threestudio.find("makeit3d-system")(
            _cpu_system_cfg(tmp_path, tiny_models, "system.stage=fine").system
        )


@pytest.mark.parametrize(
    "where,key,value,range_text",
    [
        ("system", "back_view_opacity_factor", -1.0, ">= 0.0"),
        ("system", "depth_min", 0.0, "> 0.0"),
        ("system", "ambient_ratio_max", 1.5, "<= 1.0"),
        ("data", "progressive_fraction", 1.5, "<= 1.0"),
        ("data", "max_steps", 0, ">= 1"),
        ("system.renderer", "points_per_pixel", 0, ">= 1"),
        ("system.renderer", "point_radius_px", -2.0, "> 0.0"),
        ("system.geometry", "feature_init_std", -1.0, ">= 0.0"),
    ],
)
def test_declared_ranges_are_checked_on_every_component(
    threestudio_env, tiny_models, tmp_path, where, key, value, range_text
):
    """Every numeric field of our systems, data modules, renderers and geometry declares its range;
    a value outside it is one error naming the config path, the range and the default."""
    from hifi123.errors import InputError
    from hifi123.threestudio_ext.geometry.point_cloud import MakeIt3DPointCloud
    from hifi123.threestudio_ext.renderers.deferred import MakeIt3DDeferredRenderer

    find = threestudio_env.threestudio.find
    cfg = _cpu_system_cfg(tmp_path, tiny_models)
    with pytest.raises(InputError) as err:
        if where == "system":
            cfg.system[key] = value
            find("makeit3d-system")(cfg.system)
        elif where == "data":
            find(cfg.data_type)({**dict(cfg.data), key: value})
        elif where == "system.renderer":
            MakeIt3DDeferredRenderer({key: value}, None, None, None)
        else:
            MakeIt3DPointCloud({key: value})
    e = err.value
    assert (
        f"{where}.{key} = {value!r}" in e.what and range_text in e.expected and "default" in e.fix
    )


def test_unknown_keys_of_our_renderer_and_geometry_are_named(threestudio_env):
    from hifi123.errors import InputError
    from hifi123.threestudio_ext.geometry.point_cloud import MakeIt3DPointCloud
    from hifi123.threestudio_ext.renderers.deferred import MakeIt3DDeferredRenderer

    with pytest.raises(InputError, match=r"system\.renderer\.points_per_pixle.*points_per_pixel"):
        MakeIt3DDeferredRenderer({"points_per_pixle": 4}, None, None, None)
    with pytest.raises(InputError, match=r"system\.geometry\.bogus"):
        MakeIt3DPointCloud({"bogus": 1})
