"""Make-It-3D refine losses: reference L1, texture regulariser, background loss (algorithms.md
D.6)."""

from __future__ import annotations

import pytest
import torch
from hifi123.core.makeit3d.point_refine import (
    REFINE_TERMS,
    background_loss,
    reference_l1_loss,
    texture_regularizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small index-heavy tensors (conftest)


# ------------------------------------------------------------------------------------ losses
def test_refine_losses():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 20, 20, 3, generator=g, requires_grad=True)
    target = torch.rand(1, 20, 20, 3, generator=g)
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[:, 5:15, 5:15] = True
    loss = reference_l1_loss(pred, target, mask, erosion_px=2)
    loss.backward()
    inner = torch.zeros(20, 20, dtype=torch.bool)
    inner[7:13, 7:13] = True  # the mask eroded by 2 px
    assert torch.equal(pred.grad[0].abs().sum(-1) > 0, inner)
    assert torch.isclose(loss, (pred - target)[0][inner].abs().sum() / pred.numel())

    colors = torch.rand(10, 3, generator=g, requires_grad=True)
    init = torch.rand(10, 3, generator=g)
    refvis = torch.tensor([True] * 4 + [False] * 6)
    t = texture_regularizer(colors, init, refvis)
    assert torch.isclose(t["texture_reference"], ((colors - init)[:4] ** 2).mean())
    assert torch.isclose(t["texture_novel"], ((colors - init)[4:] ** 2).mean())
    assert (
        float(
            texture_regularizer(colors, init, torch.zeros(10, dtype=torch.bool))[
                "texture_reference"
            ].detach()
        )
        == 0.0
    )

    coverage = torch.zeros(1, 20, 20, 1)
    coverage[:, 8:12, 8:12] = 1.0
    pred.grad = None
    bl = background_loss(pred, coverage, dilation_px=2)
    bl.backward()
    near = torch.zeros(20, 20, dtype=torch.bool)
    near[6:14, 6:14] = True  # the coverage dilated by 2 px: no background loss there
    assert torch.equal(pred.grad[0].abs().sum(-1) == 0, near)
    assert torch.isclose(bl, (1 - pred)[0][~near].sum())
    assert set(REFINE_TERMS) == {
        "ref_l1",
        "texture_novel",
        "texture_reference",
        "background",
        "contextual",
    }
