"""Make-It-3D depth prior: 1 - Pearson inside the eroded mask (paper Eq. 5, decision 15)."""

from __future__ import annotations

import pytest
import torch
from hifi123.core.makeit3d.depth import (
    PEARSON_EPS,
    pearson_correlation,
    pearson_depth_loss,
)


@pytest.fixture
def depths():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 24, 24, 1, generator=g) * 2 + 1
    target = torch.rand(2, 24, 24, 1, generator=g)
    mask = torch.zeros(2, 24, 24, 1, dtype=torch.bool)
    mask[:, 4:20, 6:18] = True
    return pred, target, mask


def test_perfect_correlation_and_anticorrelation(depths):
    pred, _, mask = depths
    assert pearson_depth_loss(pred, 3.0 * pred + 7.0, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert pearson_depth_loss(pred, -0.5 * pred + 2.0, mask).item() == pytest.approx(2.0, abs=1e-6)


def test_invariant_to_scale_and_shift_of_either_depth(depths):
    pred, target, mask = depths
    base = pearson_depth_loss(pred, target, mask).item()
    assert 0.05 < base < 1.95  # unrelated random depths: a non-trivial value
    for a, b in ((0.5, 0.0), (3.0, -2.0), (100.0, 50.0)):
        assert pearson_depth_loss(a * pred + b, target, mask).item() == pytest.approx(
            base, abs=1e-5
        )
        assert pearson_depth_loss(pred, a * target + b, mask).item() == pytest.approx(
            base, abs=1e-5
        )


def test_only_masked_pixels_count(depths):
    pred, target, mask = depths
    base = pearson_depth_loss(pred, target, mask)
    scrambled = torch.where(mask, pred, torch.rand_like(pred) * 100)
    assert torch.allclose(pearson_depth_loss(scrambled, target, mask), base)
    # and the mask matters: over all pixels the value differs
    assert not torch.allclose(pearson_depth_loss(scrambled, target), base)


def test_finite_on_constant_depth(depths):
    _, target, mask = depths
    pred = torch.full_like(target, 2.5, requires_grad=True)
    loss = pearson_depth_loss(pred, target, mask)
    assert loss.item() == pytest.approx(1.0)  # rho = 0
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    both_const = pearson_depth_loss(torch.ones_like(target), torch.zeros_like(target), mask)
    assert both_const.item() == pytest.approx(1.0)
    assert PEARSON_EPS == 1e-8  # documented value


def test_gradient_improves_correlation(depths):
    pred, target, mask = depths
    p = pred.clone().requires_grad_(True)
    loss = pearson_depth_loss(p, target, mask)
    loss.backward()
    with torch.no_grad():
        stepped = p - 20.0 * p.grad
    assert pearson_depth_loss(stepped, target, mask) < loss


def test_pearson_matches_textbook_formula():
    g = torch.Generator().manual_seed(1)
    p, q = (
        torch.rand(50, generator=g, dtype=torch.float64),
        torch.rand(50, generator=g, dtype=torch.float64),
    )
    ref = torch.corrcoef(torch.stack([p, q]))[0, 1]
    assert pearson_correlation(p, q).item() == pytest.approx(ref.item(), abs=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        pearson_correlation(p[:1], q[:1])


def test_pearson_leaves_non_finite_depths_out_with_a_warning():
    from hifi123.core.makeit3d.depth import pearson_depth_loss

    gen = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 8, 8, generator=gen)
    pred = (2.0 * ref + 1.0).clone().requires_grad_(True)  # perfectly correlated
    holed = pred.detach().clone()
    holed[0, 2, 3] = float("nan")
    holed[0, 5, 5] = float("inf")
    holed.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="2 masked pixel"):
        loss = pearson_depth_loss(holed, ref)
    assert abs(float(loss)) < 1e-6  # the remaining 62 pixels are still perfectly correlated
    loss.backward()
    assert torch.isfinite(holed.grad).all() and holed.grad[0, 2, 3] == 0
    # the same pixels outside the mask: no warning, same value
    mask = torch.ones(1, 8, 8, dtype=torch.bool)
    mask[0, 2, 3] = mask[0, 5, 5] = False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abs(float(pearson_depth_loss(holed.detach(), ref, mask))) < 1e-6
