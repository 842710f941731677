"""`hifi123-system` refine stage on CPU: DMTet (texture only) through `hifi123-nvdiff-rasterizer`
(with the torch stand-in for nvdiffrast), the reference loss and RGSD alternating t = 0 fixed views
and t > 0 random views, fixed-view targets kept in the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hifi123.testing.coarse_trial import torch_field

pytestmark = pytest.mark.threestudio

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "custom" / "hifi123" / "configs"
SAMPLE = ROOT / "custom" / "hifi123" / "assets" / "sample_rgba.png"
T, S = 6, 4


def _refine_cfg(tmp_path, tiny):
    from threestudio.utils.config import load_config

    cfg = load_config(str(CONFIGS / "refine.yaml"), cli_args=[f"exp_root_dir={tmp_path}"])
    cfg.data.image_path = str(SAMPLE)
    cfg.data.device = "cpu"
    for key in ("height", "width"):
        cfg.data[key] = 32
        cfg.data.random_camera[key] = 32
    s = cfg.system
    # no coarse run here: the SDF is set from the sample's ground truth
    s.geometry_convert_from = None
    s.geometry.isosurface_resolution = 32
    s.geometry.update(torch_field(n_frequencies=4))
    s.image_path = str(SAMPLE)  # load_config resolved ${data.image_path} already
    s.guidance.update(
        pretrained_model_name_or_path=tiny["sd2-depth"],
        num_steps=T,
        inject_steps=S,
        cond_image_path=str(SAMPLE),
    )
    return cfg


def _system(find, cfg):
    from hifi123.sample.make_sample import sample_sdf
    from hifi123.testing.torch_rasterizer import TorchRasterizerContext
    from threestudio.utils.ops import scale_tensor

    system = find(cfg.system_type)(cfg.system)
    geo = system.geometry
    pts = scale_tensor(
        geo.isosurface_helper.grid_vertices, geo.isosurface_helper.points_range, geo.isosurface_bbox
    )
    # DMTet: positive inside
    geo.sdf.data = -torch.from_numpy(sample_sdf(pts.numpy())).float()[:, None]
    system.renderer.ctx = TorchRasterizerContext()
    return system


def test_refine_steps_alternate_fixed_and_random_views_and_checkpoint_targets(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.testing.counter import count_unet_evals

    torch.set_num_threads(2)
    monkeypatch.chdir(threestudio_env.root)  # DMTet loads load/tets/<res>_tets.npz from the cwd
    find = threestudio_env.threestudio.find
    cfg = _refine_cfg(tmp_path, tiny_models)
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = _system(find, cfg)
    system.set_save_dir(str(tmp_path / "save"))
    logged = {}
    system.log = lambda name, value, *a, **k: logged.__setitem__(name, value)
    assert system.substeps(0) == ("ref", "fixed") and system.substeps(1) == ("ref", "novel")

    system.build_guidance()
    batch = dm.train_dataset.collate(None)
    system.compute_fixed_targets(batch)  # refine start: both fixed views enhanced once
    g = system.guidance
    assert g.has_fixed_targets and g.core.fixed_targets.shape[0] == 2
    params = [p for p in system.parameters() if p.requires_grad]
    assert params and not system.geometry.sdf.requires_grad  # texture only

    def step(i):
        system.set_resume_status(0, i)
        system.do_update_step(0, i)
        logged.clear()
        with count_unet_evals(g.core.pipe.c.unet) as n:
            loss = system.training_step(dm.train_dataset.collate(None), 0)["loss"]
        return loss, dict(logged), n.calls

    loss, log, calls = step(0)  # t = 0 on fixed view 0: no UNet evaluation
    assert calls == 0 and float(log["train/fixed/rgsd_t"]) == 0.0
    assert {"train/ref/loss_rgb", "train/fixed/loss_rgsd"} <= set(log)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)
    loss, log, calls = step(1)  # t > 0 on a random view: S inversions + (S - t + 1) CFG evaluations
    t = int(log["train/novel/rgsd_t"])
    assert 1 <= t <= S and calls == S + (S - t + 1)
    assert torch.isfinite(loss) and g.core.reference_builds == 1

    # the targets travel in the checkpoint and are restored, not recomputed, on resume
    ckpt = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(ckpt)
    assert "hifi123_rgsd" in ckpt and not any(k.startswith("guidance.") for k in ckpt["state_dict"])
    from hifi123.core.hifi123.rgsd import RGSD

    def no_recompute(*a, **k):
        raise AssertionError("fixed-view targets recomputed on resume")

    monkeypatch.setattr(RGSD, "compute_fixed_targets", no_recompute)
    resumed = _system(find, cfg)
    resumed.on_load_checkpoint(ckpt)
    resumed.build_guidance()
    assert resumed.guidance.has_fixed_targets  # so on_fit_start will not compute them again
    rgb, opacity, depth = _fixed_render(resumed, dm)
    # loads the model lazily
    out = resumed.guidance(rgb, opacity=opacity, depth=depth, fixed_view_index=0)
    assert torch.equal(resumed.guidance.core.fixed_targets, g.core.fixed_targets)
    assert resumed.guidance.core.reference_builds == 1 and torch.isfinite(out["loss_rgsd"])


def _fixed_render(system, dm):
    with torch.no_grad():
        out = system.renderer(**system.fixed_batches(dm.train_dataset.collate(None))[0])
    return out["comp_rgb"], out["opacity"], out["depth"]


def test_a_render_has_depth_for_the_rgsd_condition(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    monkeypatch.chdir(threestudio_env.root)
    find = threestudio_env.threestudio.find
    cfg = _refine_cfg(tmp_path, tiny_models)
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = _system(find, cfg)
    system.build_guidance()  # configures RGSD (fixed cameras); loads no model
    assert system.guidance.core is None
    out = system.renderer(**system.fixed_batches(dm.train_dataset.collate(None))[1])
    hit = out["opacity"][..., 0] > 0.5
    assert (
        hit.any()
        and (out["depth"][..., 0][hit] > 3.0).all()
        and (out["depth"][..., 0][~hit] == 0).all()
    )


# ------------------------------------------------------------------------------------ coarse stage
def _register_fakes(ts):
    """Stand-ins for DeepFloyd IF (+ its prompt processor) and Zero123, with their call signatures:
    the 2D guidance takes prompt_utils positionally, the 3D one does not."""
    from dataclasses import dataclass

    from threestudio.utils.base import BaseObject

    if "hifi123-test-guidance-2d" in ts.__modules__:
        return

    class PromptOut:
        def __init__(self, prompt):
            self.prompt = prompt

    @dataclass
    class PPConfig(BaseObject.Config):
        prompt: str = ""
        pretrained_model_name_or_path: str = ""

    class FakePromptProcessor(BaseObject):
        Config = PPConfig

        def configure(self):
            pass

        def __call__(self):
            return PromptOut(self.cfg.prompt)

    class Fake2D(BaseObject):
        def configure(self):
            self.prompts = []

        def __call__(self, rgb, prompt_utils, **kw):
            assert isinstance(prompt_utils, PromptOut) and not kw["rgb_as_latents"]
            self.prompts.append(prompt_utils.prompt)
            return {"loss_sds": ((rgb - 0.3) ** 2).mean()}

    class Fake3D(BaseObject):
        def configure(self):
            pass

        def __call__(self, rgb, **kw):
            assert "elevation" in kw and "azimuth" in kw  # the camera comes as keywords
            return {"loss_sds": ((rgb - 0.7) ** 2).mean()}

    ts.register("hifi123-test-prompt-processor")(FakePromptProcessor)
    ts.register("hifi123-test-guidance-2d")(Fake2D)
    ts.register("hifi123-test-guidance-3d")(Fake3D)


def test_coarse_hybrid_sds_steps_on_cpu(threestudio_env, tmp_path):
    from hifi123.testing.torch_renderer import register_torch_volume_renderer
    from omegaconf import OmegaConf
    from threestudio.utils.config import load_config

    torch.set_num_threads(2)
    ts = threestudio_env.threestudio
    _register_fakes(ts)
    cfg = load_config(str(CONFIGS / "coarse.yaml"), cli_args=[f"exp_root_dir={tmp_path}"])
    cfg.data.update(
        image_path=str(SAMPLE), device="cpu", height=16, width=16, resolution_milestones=[]
    )
    cfg.data.random_camera.update(height=16, width=16, batch_size=1, resolution_milestones=[])
    s = cfg.system
    s.image_path = str(SAMPLE)
    s.geometry.update(torch_field(n_frequencies=4))
    s.renderer_type = register_torch_volume_renderer()
    s.renderer = OmegaConf.create(
        {
            "radius": 2.0,
            "num_samples_per_ray": 8,
            "return_comp_normal": True,
            "return_normal_perturb": True,
        }
    )
    s.prompt_processor_type, s.prompt_processor = (
        "hifi123-test-prompt-processor",
        OmegaConf.create({"prompt": ""}),
    )
    s.guidance_type, s.guidance = "hifi123-test-guidance-2d", OmegaConf.create({})
    s.guidance_3d_type, s.guidance_3d = "hifi123-test-guidance-3d", OmegaConf.create({})
    dm = ts.find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = ts.find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    logged = {}
    system.log = lambda name, value, *a, **k: logged.__setitem__(name, value)
    system.build_guidance()
    caption = " ".join((SAMPLE.parent / "sample_caption.txt").read_text().split())
    assert system.prompt_utils.prompt == caption  # empty prompt -> the caption file
    system.set_resume_status(0, 0)
    system.do_update_step(0, 0)
    loss = system.training_step(dm.train_dataset.collate(None), 0)["loss"]
    assert system.substeps(0) == ("ref", "novel")
    for key in ("loss_sds", "loss_3d_sds"):
        raw, w = logged[f"train/novel/{key}"], logged[f"train/novel/{key}_w"]
        assert torch.allclose(w, raw * float(cfg.system.loss[key.replace("loss_", "lambda_")]))
    assert {"train/ref/loss_rgb", "train/ref/loss_mask", "train/ref/loss_depth"} <= set(logged)
    grads = torch.autograd.grad(
        loss, [p for p in system.geometry.parameters() if p.requires_grad], allow_unused=True
    )
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_fixed_views_alternate_and_sit_at_plus_and_minus_90_degrees(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    """Fixed-view steps visit view 0, then view 1, then view 0 ...; each fixed camera is the
    reference camera turned about world +z by its relative azimuth (+90 deg, then -90 deg), in
    threestudio's convention, at the reference's elevation, distance and looking at the origin."""
    monkeypatch.chdir(threestudio_env.root)
    find = threestudio_env.threestudio.find
    cfg = _refine_cfg(tmp_path, tiny_models)
    # an off-axis reference: a mirrored view cannot pass by symmetry
    cfg.data.default_azimuth_deg = 30.0
    cfg.data.default_elevation_deg = 10.0
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    system = _system(find, cfg)
    system.build_guidance()
    batch = dm.train_dataset.collate(None)
    ref = batch["camera_positions"][0].double()
    assert abs(math.degrees(math.atan2(float(ref[1]), float(ref[0]))) - 30.0) < 1e-4

    def turned(deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) @ ref

    seen = []
    for step in range(8):
        system.set_resume_status(0, step)
        if "fixed" not in system.substeps(step):
            seen.append(None)
            continue
        sub = system.substep_batch(batch, "fixed")
        j = int(sub["fixed_view_index"])
        seen.append(j)
        pos = sub["camera_positions"][0].double()
        assert torch.allclose(pos, turned((90.0, -90.0)[j]), atol=1e-4), (j, pos)
        forward = -sub["c2w"][0, :3, 2].double()  # OpenGL camera: looks along -z
        assert torch.allclose(forward, -pos / pos.norm(), atol=1e-5)
    assert seen == [0, None, 1, None, 0, None, 1, None]


def test_resume_computes_no_fixed_view_target(threestudio_env, tiny_models, tmp_path, monkeypatch):
    """Count every UNet evaluation in the process across a checkpoint round trip: a fit start after
    resuming evaluates nothing (the targets come from the checkpoint), while the first fit start
    enhanced both fixed views."""
    from diffusers import UNet2DConditionModel
    from hifi123.threestudio_ext.systems.base import ImageConditionedSystem

    torch.set_num_threads(2)
    monkeypatch.chdir(threestudio_env.root)
    # no trainer here
    monkeypatch.setattr(ImageConditionedSystem, "on_fit_start", lambda self: None)
    find = threestudio_env.threestudio.find
    cfg = _refine_cfg(tmp_path, tiny_models)
    dm = find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    evals = [0]

    def count(module, args):
        evals[0] += isinstance(module, UNet2DConditionModel)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        first = _system(find, cfg)
        first._reference_camera = lambda: dm.train_dataset.collate(None)
        first.build_guidance()
        first.on_fit_start()
        enhanced = evals[0]
        ckpt = {"state_dict": first.state_dict()}
        first.on_save_checkpoint(ckpt)

        evals[0] = 0
        resumed = _system(find, cfg)
        resumed._reference_camera = lambda: dm.train_dataset.collate(None)
        resumed.on_load_checkpoint(ckpt)
        resumed.build_guidance()
        resumed.on_fit_start()
        after_resume = evals[0]
    finally:
        handle.remove()
    assert enhanced >= 2 * S  # two views, S inversion steps each at least
    assert after_resume == 0
    assert torch.equal(
        resumed.guidance.state_dict()["fixed_targets"], first.guidance.core.fixed_targets
    )
