"""Our attention processor runs on threestudio's torch 2.0, whose scaled_dot_product_attention has
no `scale=` keyword, and still computes softmax(scale q k^T) v for any scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hifi123.core.diffusion import attention


def _reference(q, k, v, scale):
    w = torch.softmax(scale * q @ k.transpose(-1, -2), dim=-1)
    return w @ v


@pytest.fixture
def torch20_sdpa(monkeypatch):
    """F.scaled_dot_product_attention as torch 2.0.1 has it: no `scale` keyword."""
    real = F.scaled_dot_product_attention
    calls = []

    def sdpa_2_0(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False):
        calls.append(1)
        return real(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
        )

    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa_2_0)
    return calls


@pytest.mark.parametrize("scale", [None, 0.1, 1.0])
def test_sdpa_without_the_scale_keyword_is_exact(torch20_sdpa, scale):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    s = 8**-0.5 if scale is None else scale
    out = attention.sdpa(q, k, v, None, s)
    assert torch.allclose(out, _reference(q, k, v, s), atol=1e-12) and torch20_sdpa


def test_the_injecting_processor_runs_on_torch_2_0(torch20_sdpa, sd2_depth):
    """A whole UNet forward with our processor in every self-attention layer, under a 2.0-style
    SDPA."""
    unet = sd2_depth.unet
    layers = [
        n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn1.processor")
    ]
    state = attention.InjectionState()
    z = torch.randn(1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    emb = torch.zeros(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        plain = unet(z, 10, encoder_hidden_states=emb).sample
        with attention.mutual_self_attention(unet, layers, state):
            ours = unet(z, 10, encoder_hidden_states=emb).sample
    assert torch20_sdpa and torch.allclose(ours, plain, atol=1e-5)  # mode "off": same attention
