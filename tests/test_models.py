"""Foundation: tiny model family, the one loader and its errors, test helpers."""

import os

import pytest
import torch
from hifi123.errors import ModelNotFoundError
from hifi123.models import loader
from hifi123.models.tiny import write_tiny_models
from hifi123.testing.counter import count_unet_evals
from hifi123.testing.oracle import CleanLatentOracle
from run_helpers import tree_sha256


def test_tiny_models_are_deterministic_and_small(tiny_models, tmp_path):
    again = write_tiny_models(str(tmp_path / "again"))
    for name in tiny_models:
        a, b = tree_sha256(tiny_models[name]), tree_sha256(again[name])
        assert a == b, f"tiny model {name} differs between two writes"
    total = sum(
        os.path.getsize(os.path.join(dp, f))
        for d in again.values()
        for dp, _, fs in os.walk(d)
        for f in fs
    )
    assert total < 20 * 2**20, f"tiny family is {total / 2**20:.1f} MB"


def test_tiny_sd2_depth_has_the_real_layout_and_structure(tiny_models, sd2_depth):
    d = tiny_models["sd2-depth"]
    for sub in (
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "depth_estimator",
        "feature_extractor",
    ):
        assert os.path.isdir(os.path.join(d, sub)), sub
    assert os.path.isfile(os.path.join(d, "model_index.json"))
    u = sd2_depth.unet
    assert u.config.in_channels == 5 and sd2_depth.is_depth_model
    from hifi123.core.diffusion.attention import self_attention_layers

    layers = self_attention_layers(u)
    assert len(layers) == 16  # SD2's transformer-block count, in execution order
    assert layers[12] == "up_blocks.2.attentions.2.transformer_blocks.0.attn1"
    assert layers[15] == "up_blocks.3.attentions.2.transformer_blocks.0.attn1"
    assert sd2_depth.scheduler.config.beta_schedule == "scaled_linear"
    # the tokenizer built from our generated vocab round-trips text
    ids = sd2_depth.tokenizer("a red toy").input_ids
    assert (
        ids[0] == sd2_depth.text_encoder.config.bos_token_id
        and ids[-1] == sd2_depth.text_encoder.config.eos_token_id
    )
    assert sd2_depth.tokenizer.decode(ids[1:-1]).strip() == "a red toy"


def test_tiny_models_forward(sd2_depth, tiny_models):
    torch.manual_seed(0)
    x = torch.randn(1, 5, 32, 32)
    emb = sd2_depth.text_encoder(torch.tensor([sd2_depth.tokenizer("").input_ids]))[0]
    eps = sd2_depth.unet(x, torch.tensor([10]), encoder_hidden_states=emb).sample
    assert eps.shape == (1, 4, 32, 32) and torch.isfinite(eps).all()
    z = sd2_depth.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 32, 32)
    model, proc = loader.load_dpt(tiny_models["dpt"])
    assert model(pixel_values=torch.zeros(1, 3, 64, 64)).predicted_depth.shape == (1, 64, 64)
    clip, cproc = loader.load_clip(tiny_models["clip"])
    feats = loader.clip_image_embeds(clip, torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, clip.config.projection_dim)
    text = loader.clip_text_embeds(clip, torch.tensor([cproc.tokenizer("a toy").input_ids]))
    assert text.shape == (1, clip.config.projection_dim)
    base = loader.load_diffusion(tiny_models["sd2-base"], "base")
    assert base.unet.config.in_channels == 4 and not base.is_depth_model


def test_loader_offline_error_names_model_field_and_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        loader.load_diffusion(
            "nobody/not-a-cached-model", "system.guidance.pretrained_model_name_or_path"
        )
    msg = str(e.value)
    assert "nobody/not-a-cached-model" in msg
    assert "system.guidance.pretrained_model_name_or_path" in msg
    assert "offline" in msg and "--local-dir" in msg and "tiny-models" in msg


def test_loader_errors_for_missing_or_incomplete_directories(tmp_path, tiny_models):
    with pytest.raises(ModelNotFoundError, match="no directory at"):
        loader.load_diffusion(str(tmp_path / "nope"), "--model")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_models["sd2-depth"], broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError, match="lacks unet"):
        loader.load_diffusion(str(broken), "--model")
    # the error comes from preflight, before any weights load
    with pytest.raises(ModelNotFoundError, match="lacks depth_estimator"):
        shutil.rmtree(broken / "depth_estimator")
        loader.preflight(str(broken), "--model", subfolders=["depth_estimator"])


def test_unet_eval_counter_counts_calls_and_items(sd2_depth):
    emb = torch.zeros(3, 77, 32)
    with count_unet_evals(sd2_depth.unet) as n:
        sd2_depth.unet(
            torch.zeros(3, 5, 32, 32), torch.tensor([1, 1, 1]), encoder_hidden_states=emb
        )
        sd2_depth.unet(torch.zeros(1, 5, 32, 32), torch.tensor([1]), encoder_hidden_states=emb[:1])
    assert (n.calls, n.items) == (2, 4)
    sd2_depth.unet(torch.zeros(1, 5, 32, 32), torch.tensor([1]), encoder_hidden_states=emb[:1])
    assert (n.calls, n.items) == (2, 4)  # hook removed on exit


def test_clean_latent_oracle_predicts_x0_exactly():
    from hifi123.core.diffusion.ddim import ddim_update
    from hifi123.models.tiny import tiny_scheduler

    ac = tiny_scheduler().alphas_cumprod
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    oracle = CleanLatentOracle(x0, ac)
    for t in (1, 250, 999):
        z = torch.randn_like(x0) * 3  # any latent, on or off the trajectory
        eps = oracle(z, t)
        _, x0_pred = ddim_update(z, eps, float(ac[t]), float(ac[0]))
        assert torch.allclose(x0_pred, x0, atol=1e-10)
