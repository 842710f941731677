"""Guidances across systems, both directions, as threestudio users mix them.

* ours in threestudio's systems: RGSD as magic123's `guidance_3d` (coarse NeRF and refine DMTet) and
  as zero123's guidance (`loss_name: sds`), including zero123's `freq.guidance_eval`;
* threestudio's in ours: `stable-diffusion-guidance`, `-unified-` and `-vsd-` in hifi123-system's
  coarse stage, `stable-diffusion-guidance` in makeit3d-system's coarse stage.

Each runs two Lightning training steps on CPU (tiny models, 16-32 px, the pure-torch renderers)
with every loss weight but the guidance's set to 0, and checks that the loss is finite and that
the geometry moved: the guidance's gradient reached it. Plus the clear errors around mixing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hifi123.testing.coarse_trial import torch_field
from hifi123.testing.cpu_threestudio import quiet_cpu_trainer
from omegaconf import OmegaConf

pytestmark = pytest.mark.threestudio

REPO = Path(__file__).resolve().parents[1]
SAMPLE = str(REPO / "custom" / "hifi123" / "assets" / "sample_rgba.png")
SIZE = 16


def _tiny_root(tiny_models):
    return str(Path(tiny_models["sd2-base"]).parent)


def _our_smoke(name, tiny_models, tmp_path, *extra):
    from hifi123.testing.smoke import smoke_args
    from threestudio.utils.config import load_config

    return load_config(
        str(REPO / "custom" / "hifi123" / "configs" / name),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            f"data.image_path={SAMPLE}",
            *smoke_args(name, _tiny_root(tiny_models)),
            *extra,
        ],
    )


def _theirs(ts_root, name, tmp_path, *extra):
    """threestudio's own config on our CPU-capable datamodule, the pure-torch renderer, 16 px."""
    from threestudio.utils.config import load_config

    return load_config(
        str(Path(ts_root) / "configs" / name),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            f"data.image_path={SAMPLE}",
            "data_type=hifi123-single-image-datamodule",
            "data.device=cpu",
            f"data.height={SIZE}",
            f"data.width={SIZE}",
            f"data.random_camera.height={SIZE}",
            f"data.random_camera.width={SIZE}",
            "data.random_camera.batch_size=1",
            "data.resolution_milestones=[]",
            "data.random_camera.resolution_milestones=[]",
            "trainer.max_steps=2",
            *extra,
        ],
    )


def _only(cfg, keep):
    """Every lambda 0 except those in `keep` (so only the guidance can move the geometry)."""
    for key in list(cfg.system.loss):
        if key not in keep:
            cfg.system.loss[key] = 0.0
    for key in keep:
        cfg.system.loss[key] = 1.0


def _small_nerf(cfg, renderer="hifi123-testing-torch-volume-renderer"):
    s = cfg.system
    s.geometry.update(torch_field(n_frequencies=2))
    s.renderer_type = renderer
    s.renderer = OmegaConf.create(
        {"radius": float(s.geometry.radius), "num_samples_per_ray": 8, "return_comp_normal": True}
    )
    if "optimizer" in s and "params" in s.optimizer:
        del s.optimizer["params"]
    s.optimizer = OmegaConf.create({"name": "Adam", "args": {"lr": 0.01}})


def _rgsd(tiny_models, **kw):
    block = {
        "pretrained_model_name_or_path": tiny_models["sd2-depth"],
        "half_precision_weights": False,
        "cond_image_path": SAMPLE,
        "num_steps": 4,
        "inject_steps": 2,
        "prompt": "a toy",
    }
    block.update(kw)
    return OmegaConf.create(block)


def fit_two_steps(ts, cfg, tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    dm = ts.find(cfg.data_type)(cfg.data)
    system = ts.find(cfg.system_type)(cfg.system)
    system.set_save_dir(str(tmp_path / "save"))
    before = {n: p.detach().clone() for n, p in system.geometry.named_parameters()}
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = quiet_cpu_trainer(2, callbacks=[Record()])
    trainer.fit(system, datamodule=dm)
    moved = [
        n for n, p in system.geometry.named_parameters() if not torch.equal(p.detach(), before[n])
    ]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert moved, "no geometry parameter moved: the guidance's gradient did not reach the geometry"
    return system, losses


# ------------------------------------------------------------------ ours in threestudio's systems
def test_rgsd_as_magic123s_3d_guidance_coarse(threestudio_env, tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(threestudio_env.root)
    ts = threestudio_env.threestudio
    cfg = _theirs(
        threestudio_env.root,
        "magic123-coarse-sd.yaml",
        tmp_path,
        "system.prompt_processor.prompt=a toy",
    )
    _small_nerf(cfg)
    # RGSD alone moves the geometry
    cfg.system.guidance_type, cfg.system.prompt_processor_type = ("", "")
    cfg.system.guidance_3d_type = "hifi123-rgsd-guidance"
    cfg.system.guidance_3d = _rgsd(tiny_models)  # the whole block replaced: zero123's keys are gone
    _only(cfg, ["lambda_3d_rgsd"])
    pytest.importorskip("threestudio.systems.magic123")
    # magic123 builds its 2D guidance unconditionally: give it the tiny one, weighted 0
    cfg.system.guidance_type = "stable-diffusion-unified-guidance"
    cfg.system.guidance = OmegaConf.create(
        {
            "pretrained_model_name_or_path": tiny_models["sd-x8"],
            "guidance_type": "sds",
            "use_img_loss": False,
            "half_precision_weights": False,
        }
    )
    cfg.system.prompt_processor_type = "stable-diffusion-prompt-processor"
    cfg.system.prompt_processor = OmegaConf.create(
        {"pretrained_model_name_or_path": tiny_models["sd-x8"], "prompt": "a toy", "spawn": False}
    )
    fit_two_steps(ts, cfg, tmp_path)


def test_rgsd_as_magic123s_3d_guidance_refine(threestudio_env, tiny_models, tmp_path, monkeypatch):
    from hifi123.testing.coarse_trial import write_coarse_trial

    monkeypatch.chdir(threestudio_env.root)  # load/tets/32_tets.npz
    ts = threestudio_env.threestudio
    ckpt = write_coarse_trial(tmp_path)
    cfg = _theirs(
        threestudio_env.root,
        "magic123-refine-sd.yaml",
        tmp_path,
        "system.prompt_processor.prompt=a toy",
        f"system.geometry_convert_from={ckpt}",
        "system.geometry_convert_inherit_texture=false",
        "system.geometry.isosurface_resolution=32",
        "system.geometry_convert_override.isosurface_threshold=5.0",
    )
    s = cfg.system
    s.geometry.pos_encoding_config = OmegaConf.create(
        {
            "otype": "HashGrid",
            "n_levels": 4,
            "n_features_per_level": 2,
            "log2_hashmap_size": 12,
            "base_resolution": 4,
            "per_level_scale": 2.0,
        }
    )
    s.geometry.mlp_network_config.n_neurons, s.geometry.mlp_network_config.n_hidden_layers = 16, 1
    s.guidance_3d_type, s.guidance_3d = "hifi123-rgsd-guidance", _rgsd(tiny_models)
    s.guidance = OmegaConf.create(
        {
            "pretrained_model_name_or_path": tiny_models["sd-x8"],
            "guidance_type": "sds",
            "use_img_loss": False,
            "half_precision_weights": False,
        }
    )
    s.prompt_processor = OmegaConf.create(
        {"pretrained_model_name_or_path": tiny_models["sd-x8"], "prompt": "a toy", "spawn": False}
    )
    s.optimizer = OmegaConf.create({"name": "Adam", "args": {"lr": 0.01}})
    _only(cfg, ["lambda_3d_rgsd"])
    fit_two_steps(ts, cfg, tmp_path)


@pytest.mark.parametrize("guidance_eval", [0, 1])
def test_rgsd_as_zero123s_guidance(
    threestudio_env, tiny_models, tmp_path, monkeypatch, guidance_eval
):
    monkeypatch.chdir(threestudio_env.root)
    ts = threestudio_env.threestudio
    cfg = _theirs(
        threestudio_env.root, "zero123.yaml", tmp_path, f"system.freq.guidance_eval={guidance_eval}"
    )
    _small_nerf(cfg)
    cfg.system.material.ambient_only_steps = 0
    cfg.system.guidance_type = "hifi123-rgsd-guidance"
    cfg.system.guidance = _rgsd(tiny_models, loss_name="sds")  # zero123-system reads loss_sds
    _only(cfg, ["lambda_sds"])
    system, _ = fit_two_steps(ts, cfg, tmp_path)
    sheets = sorted((tmp_path / "save").glob("it*-train.png"))
    assert bool(sheets) == bool(guidance_eval)  # threestudio's guidance-eval sheet, from our `eval`


# ------------------------------------------------------------------ threestudio's in ours
STOCK = {
    "stable-diffusion-guidance": ({}, ["lambda_sds"]),
    "stable-diffusion-unified-guidance": (
        {"guidance_type": "sds", "use_img_loss": False, "half_precision_weights": False},
        ["lambda_sd"],
    ),
    "stable-diffusion-vsd-guidance": (
        {"pretrained_model_name_or_path_lora": "{sd}", "guidance_scale": 7.5},
        ["lambda_vsd"],
    ),
}


@pytest.mark.parametrize("kind", sorted(STOCK))
def test_stock_guidances_in_hifi123_coarse(
    threestudio_env, tiny_models, tmp_path, monkeypatch, kind
):
    import diffusers

    if kind == "stable-diffusion-vsd-guidance" and tuple(
        int(x) for x in diffusers.__version__.split(".")[:2]
    ) >= (0, 20):
        pytest.skip(
            "threestudio's VSD guidance builds LoRA processors with diffusers < 0.20's API "
            "(threestudio's pin)"
        )
    monkeypatch.chdir(REPO)
    ts = threestudio_env.threestudio
    extra, keep = STOCK[kind]
    cfg = _our_smoke("coarse.yaml", tiny_models, tmp_path, "trainer.max_steps=2")
    for k in ("height", "width"):
        cfg.data[k] = SIZE
        cfg.data.random_camera[k] = SIZE
    block = {"pretrained_model_name_or_path": tiny_models["sd-x8"], "half_precision_weights": False}
    block.update(
        {
            k: (v.replace("{sd}", tiny_models["sd-x8"]) if isinstance(v, str) else v)
            for k, v in extra.items()
        }
    )
    cfg.system.guidance_type, cfg.system.guidance = kind, OmegaConf.create(block)
    _only(cfg, keep)
    for key in ("lambda_sd_img", "lambda_lora"):  # the stock guidances' other loss_* need a weight
        cfg.system.loss[key] = 0.0
    system, _ = fit_two_steps(ts, cfg, tmp_path)
    assert type(system.guidance).__name__ != "MakeIt3DGuidance" and system.prompt_utils is not None


def test_stable_diffusion_guidance_in_makeit3d_coarse(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    ts = threestudio_env.threestudio
    cfg = _our_smoke("makeit3d-coarse.yaml", tiny_models, tmp_path, "trainer.max_steps=2")
    for k in ("height", "width"):
        cfg.data[k] = SIZE
        cfg.data.random_camera[k] = SIZE
    s = cfg.system
    s.guidance_type = "stable-diffusion-guidance"
    s.guidance = OmegaConf.create(
        {"pretrained_model_name_or_path": tiny_models["sd-x8"], "half_precision_weights": False}
    )
    s.prompt_processor_type = "stable-diffusion-prompt-processor"
    s.prompt_processor = OmegaConf.create(
        {"pretrained_model_name_or_path": tiny_models["sd-x8"], "prompt": "a toy", "spawn": False}
    )
    # Adan decays weights by itself
    s.optimizer = OmegaConf.create({"name": "Adam", "args": {"lr": 0.01}})
    # novel views only
    s.reference_schedule = OmegaConf.create({"mode": "random", "ref_fraction": 0.0})
    _only(cfg, ["lambda_sds"])
    fit_two_steps(ts, cfg, tmp_path)


# ------------------------------------------------------------------ the errors around mixing
def test_a_swapped_guidance_that_keeps_the_old_blocks_keys_is_one_clear_error(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.errors import InputError
    from threestudio.utils.config import load_config

    monkeypatch.chdir(threestudio_env.root)
    # `system.guidance_type=...` on the command line over zero123.yaml: zero123's keys stay merged
    cfg = load_config(
        str(Path(threestudio_env.root) / "configs" / "zero123.yaml"),
        cli_args=[
            f"exp_root_dir={tmp_path}",
            f"data.image_path={SAMPLE}",
            "system.guidance_type=hifi123-rgsd-guidance",
        ],
    )
    with pytest.raises(InputError) as err:
        threestudio_env.threestudio.find(cfg.system.guidance_type)(cfg.system.guidance)
    msg = str(err.value)
    for foreign in (
        "system.guidance.vram_O",
        "system.guidance.pretrained_config",
        "system.guidance.cond_elevation_deg",
    ):
        assert foreign in msg
    # the valid keys
    assert "replace the whole `system.guidance` block" in msg and "cond_image_path" in msg


def test_an_unknown_system_key_names_the_closest_one(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.errors import InputError

    monkeypatch.chdir(REPO)
    cfg = _our_smoke("coarse.yaml", tiny_models, tmp_path)
    cfg.system.refinment = True  # sic
    with pytest.raises(
        InputError, match=r"system\.refinment \(did you mean system\.refinement\?\)"
    ):
        threestudio_env.threestudio.find(cfg.system_type)(cfg.system)


def test_empty_guidance_type_skips_the_guidance_and_a_missing_lambda_is_named(
    threestudio_env, tiny_models, tmp_path, monkeypatch
):
    from hifi123.errors import InputError

    monkeypatch.chdir(REPO)
    ts = threestudio_env.threestudio
    cfg = _our_smoke("coarse.yaml", tiny_models, tmp_path)
    cfg.system.guidance_type, cfg.system.prompt_processor_type = "", ""
    system = ts.find(cfg.system_type)(cfg.system)
    system.build_guidance()
    assert (
        system.guidance is None
        and system.guidance_losses("novel", {}, {"comp_rgb": torch.zeros(1)}, {}) == {}
    )
    with pytest.raises(InputError, match="system.loss.lambda_sd is missing"):
        system.weigh_losses({"loss_sd": torch.ones(())}, "novel")


def test_rgsd_without_prompt_or_caption_warns(
    threestudio_env, tiny_models, tmp_path, monkeypatch, caplog
):
    import shutil

    image = tmp_path / "cat_rgba.png"  # threestudio's own images come without a caption file
    shutil.copy(SAMPLE, image)
    warned = []
    monkeypatch.setattr(
        threestudio_env.threestudio, "warn", lambda msg, *a, **k: warned.append(msg)
    )
    import hifi123.threestudio_ext.guidance.rgnv_common as common

    monkeypatch.setattr(common.threestudio, "warn", lambda msg, *a, **k: warned.append(msg))
    threestudio_env.threestudio.find("hifi123-rgsd-guidance")(
        _rgsd(tiny_models, cond_image_path=str(image), prompt="")
    )
    assert (
        len(warned) == 1
        and str(tmp_path / "cat_caption.txt") in warned[0]
        and "prompt" in warned[0]
    )


@pytest.mark.parametrize(
    "key, value",
    [
        ("system.loss.lambda_rgb", float("nan")),
        ("system.guidance.guidance_scale", float("inf")),
        ("system.loss.lambda_normal", [0, 0.0, float("nan"), 100]),
        ("system.loss.lambda_mask", "nan"),
        ("system.loss.lambda_depth", "-inf"),
    ],
)
def test_a_non_finite_number_in_the_config_is_named(
    threestudio_env, tiny_models, tmp_path, monkeypatch, key, value
):
    from hifi123.errors import InputError
    from omegaconf import OmegaConf

    monkeypatch.chdir(REPO)
    cfg = _our_smoke("coarse.yaml", tiny_models, tmp_path)
    OmegaConf.update(cfg, key, value)
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        threestudio_env.threestudio.find(cfg.system_type)(cfg.system)


def test_a_non_finite_number_in_our_guidance_block_is_named(threestudio_env, tiny_models):
    from hifi123.errors import InputError

    with pytest.raises(InputError, match=r"system\.guidance\.guidance_scale = nan"):
        threestudio_env.threestudio.find("hifi123-rgsd-guidance")(
            _rgsd(tiny_models, guidance_scale=float("nan"))
        )
