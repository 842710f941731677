"""The Stable Diffusion plumbing shared by RGNV, RGSD and the Make-It-3D prior
(core/diffusion/sd.py): the noise predictor (depth channel, CFG batching, v-prediction, one t per
item), the VAE codec's gradient switch and latent modes, prompt encoding."""

import pytest
import torch
from hifi123.core.diffusion import ddim, sd
from hifi123.models.tiny import tiny_scheduler


@pytest.fixture(scope="module")
def scheduler():
    return tiny_scheduler()


def test_unet_predictor_depth_channel_and_cfg_batching(sd2_depth):
    torch.manual_seed(1)
    ac = sd2_depth.scheduler.alphas_cumprod
    cond, unc = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    d1 = torch.rand(1, 1, 32, 32)
    z = torch.randn(2, 4, 32, 32)
    fn = sd.UNetNoisePredictor(
        sd2_depth.unet, ac, cond, depth=d1, text_uncond=unc, guidance_scale=3.0
    )
    out = fn(z, 500)
    u = sd2_depth.unet
    t = torch.tensor([500, 500])
    e_c = u(
        torch.cat([z, d1.expand(2, -1, -1, -1)], 1), t, encoder_hidden_states=cond.expand(2, -1, -1)
    ).sample
    e_u = u(
        torch.cat([z, d1.expand(2, -1, -1, -1)], 1), t, encoder_hidden_states=unc.expand(2, -1, -1)
    ).sample
    assert torch.allclose(out, e_u + 3.0 * (e_c - e_u), atol=1e-4)
    with pytest.raises(ValueError, match="depth"):
        sd.UNetNoisePredictor(sd2_depth.unet, ac, cond)


def test_v_prediction_is_converted_to_epsilon(scheduler):
    ac = scheduler.alphas_cumprod
    torch.manual_seed(2)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = 600
    a = float(ac[t])
    z = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0

    class VNet(torch.nn.Module):
        config = type("C", (), {"in_channels": 4})()

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, tt, encoder_hidden_states=None):
            return type("O", (), {"sample": v.expand(x.shape[0], -1, -1, -1)})()

    fn = sd.UNetNoisePredictor(VNet(), ac, torch.zeros(1, 77, 8), prediction_type="v_prediction")
    assert torch.allclose(fn(z, t), eps, atol=1e-5)


class _VNet(torch.nn.Module):
    """A v-predicting UNet that knows x0 and eps per prompt: it returns the exact v of the
    latent it is given at each item's own timestep (cond rows: eps_c; uncond rows: eps_u)."""

    config = type("C", (), {"in_channels": 4})()

    def __init__(self, ac, x0, eps_c, eps_u):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.ac, self.x0, self.eps_c, self.eps_u = ac, x0, eps_c, eps_u

    def forward(self, x, tt, encoder_hidden_states=None):
        a = self.ac[tt].view(-1, 1, 1, 1).float()
        cond = encoder_hidden_states[:, :1, :1].view(-1, 1, 1, 1) > 0.5  # cond rows hold ones
        k = x.shape[0] // self.x0.shape[0]  # 2 with CFG ([uncond; cond]), else 1
        eps = torch.where(cond, self.eps_c.repeat(k, 1, 1, 1), self.eps_u.repeat(k, 1, 1, 1))
        x0 = self.x0.repeat(k, 1, 1, 1)
        return type("O", (), {"sample": a.sqrt() * eps - (1 - a).sqrt() * x0})()


def test_one_timestep_per_item_with_cfg_and_v_prediction(scheduler):
    """SDS draws a t per view: each item's v is converted with ITS alpha, CFG combines per item."""
    ac = scheduler.alphas_cumprod
    torch.manual_seed(4)
    x0, eps_c, eps_u = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([100, 500, 900])
    a = ac[t].view(-1, 1, 1, 1).float()
    noise = torch.randn(3, 4, 8, 8)
    z = a.sqrt() * x0 + (1 - a).sqrt() * noise  # any latent: v -> eps uses z itself
    net = _VNet(ac, x0, eps_c, eps_u)
    cond, unc = torch.ones(1, 77, 8), torch.zeros(1, 77, 8)
    for form, scale in (("textbook", 7.5), ("threestudio", 10.0)):
        fn = sd.UNetNoisePredictor(
            net,
            ac,
            cond,
            text_uncond=unc,
            guidance_scale=scale,
            cfg_form=form,
            prediction_type="v_prediction",
        )
        out = fn(z, t)
        # v -> eps: eps_hat = sqrt(a) v + sqrt(1 - a) z, per item
        e_c = a.sqrt() * (a.sqrt() * eps_c - (1 - a).sqrt() * x0) + (1 - a).sqrt() * z
        e_u = a.sqrt() * (a.sqrt() * eps_u - (1 - a).sqrt() * x0) + (1 - a).sqrt() * z
        assert torch.allclose(out, ddim.cfg_combine(e_u, e_c, scale, form), atol=1e-5), form
    # one scalar t for the batch gives the same as that t repeated
    fn = sd.UNetNoisePredictor(net, ac, cond, prediction_type="v_prediction")
    assert torch.allclose(fn(z, 500), fn(z, torch.tensor([500, 500, 500])))


def test_vae_codec_gradient_switch_and_latent_modes(sd2_depth):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    with_grad = sd.VaeCodec(sd2_depth.vae, "mean", grad=True)
    z = with_grad.encode(x)
    z.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = sd.VaeCodec(sd2_depth.vae, "mean", grad=False)
    z2 = no_grad.encode(x)
    assert not z2.requires_grad and torch.equal(z2, z.detach())
    assert not no_grad.decode(z).requires_grad and with_grad.decode(z).requires_grad
    # the posterior mean is deterministic; a sample follows its generator
    s1 = sd.VaeCodec(sd2_depth.vae, "sample", torch.Generator().manual_seed(0)).encode(x.detach())
    s2 = sd.VaeCodec(sd2_depth.vae, "sample", torch.Generator().manual_seed(0)).encode(x.detach())
    assert torch.equal(s1, s2) and not torch.allclose(s1, z.detach())
    assert z.shape[:2] == (2, 4) and with_grad.scale == sd2_depth.vae.config.scaling_factor
    decoded = with_grad.decode(z.detach())
    assert decoded.shape == (2, 3, 64, 64) and decoded.min() >= 0 and decoded.max() <= 1
    with pytest.raises(ValueError, match="latent_mode"):
        sd.VaeCodec(sd2_depth.vae, "median")


def test_prompt_states_follow_the_prompt(sd2_depth):
    states = sd.encode_prompts(sd2_depth.tokenizer, sd2_depth.text_encoder, ["a toy", "a toy", ""])
    assert (
        states.shape[:2] == (3, sd2_depth.tokenizer.model_max_length) and not states.requires_grad
    )
    assert torch.equal(states[0], states[1]) and not torch.allclose(states[0], states[2])
