"""Make-It-3D refine: the gated-convolution U-Net deferred renderer (algorithms.md D.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hifi123.core.makeit3d.deferred_unet import DeferredUNet

pytestmark = pytest.mark.usefixtures("one_thread")  # small index-heavy tensors (conftest)


# -------------------------------------------------------------------------------- the U-Net
def test_gated_unet_shapes_range_and_gradients_to_every_scale():
    torch.manual_seed(0)
    net = DeferredUNet()  # 19 channels, widths 16/32/64
    assert [b.out_channels for b in net.down] == [13, 45]  # gated(16 -> 13), gated(32 -> 45)
    xs = [torch.randn(2, 19, 32 >> k, 48 >> k, requires_grad=True) for k in range(3)]
    y = net(xs)
    assert y.shape == (2, 3, 32, 48) and bool((y > 0).all() and (y < 1).all())
    y.mean().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    net.eval()  # batch statistics also in eval (the official U-Net never leaves train mode)
    with torch.no_grad():
        assert torch.allclose(net(xs), y, atol=1e-6)
    with pytest.raises(ValueError):
        net(xs[:2])
    with pytest.raises(ValueError):
        net([torch.randn(1, 18, 8, 8), torch.randn(1, 19, 4, 4), torch.randn(1, 19, 2, 2)])


def test_gated_block_gate_modulates_and_a_zero_gate_halves_the_elu_features():
    """y = ELU(conv_f(x)) * sigmoid(conv_g(x)): with the gate's weights and bias at 0 the gate is
    sigmoid(0) = 1/2 everywhere; with them restored the output changes (the gate is live), and the
    gate is not the feature branch (swapping the two halves changes the output)."""
    from hifi123.core.makeit3d.deferred_unet import GatedBlock

    torch.manual_seed(0)
    block = GatedBlock(5, 4, norm=False)
    x = torch.randn(2, 5, 9, 9)
    w, b = block.conv.weight.detach().clone(), block.conv.bias.detach().clone()
    feat = torch.nn.functional.conv2d(x, w[:4], b[:4], padding=1)
    gate = torch.nn.functional.conv2d(x, w[4:], b[4:], padding=1)
    with torch.no_grad():
        y = block(x)
        np.testing.assert_allclose(
            y.numpy(), (torch.nn.functional.elu(feat) * torch.sigmoid(gate)).numpy(), atol=1e-6
        )
        swapped = torch.nn.functional.elu(gate) * torch.sigmoid(feat)
        assert (y - swapped).abs().max() > 1e-2
        block.conv.weight[4:] = 0.0
        block.conv.bias[4:] = 0.0
        np.testing.assert_allclose(
            block(x).numpy(), (0.5 * torch.nn.functional.elu(feat)).numpy(), atol=1e-6
        )
        assert (block(x) - y).abs().max() > 1e-2
