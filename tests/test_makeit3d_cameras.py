"""Make-It-3D progressive cameras and the reference/novel schedule (decision 16, algorithms.md
C.3)."""

from __future__ import annotations

import pytest
import torch
from hifi123.core.makeit3d.cameras import (
    ReferenceSchedule,
    azimuth_range,
    is_back_view,
    mixture_components,
    pick_component,
    progressive_half_range,
    relative_azimuth,
    sample_relative_azimuth,
)

N = 20000


def test_progressive_phases_switch_at_40_percent():
    assert [progressive_half_range(s, 5000) for s in (0, 1999, 2000, 4999)] == [
        45.0,
        45.0,
        180.0,
        180.0,
    ]
    assert progressive_half_range(10, 100, progressive_fraction=0.0) == 180.0
    assert progressive_half_range(99, 100, progressive_fraction=1.0) == 45.0
    assert azimuth_range(0, 5000, reference_azimuth=30.0) == (-15.0, 75.0)
    assert azimuth_range(2000, 5000, reference_azimuth=30.0) == (-150.0, 210.0)


@pytest.mark.parametrize("mode", ["uniform", "makeit3d"])
def test_sampled_azimuths_cover_exactly_the_phase_ranges(mode):
    g = torch.Generator().manual_seed(0)
    for step, half in ((0, 45.0), (1999, 45.0), (2000, 180.0)):
        h = progressive_half_range(step, 5000)
        assert h == half
        a = sample_relative_azimuth(N, h, mode, generator=g)
        assert a.min() >= -half and a.max() <= half
        assert a.min() < -half + 1.0 and a.max() > half - 1.0  # the whole range is reached
        if half == 45.0:  # within +-60 the official sampler is uniform too
            hist = torch.histc(a, bins=9, min=-45, max=45) / N
            assert (hist - 1 / 9).abs().max() < 0.02


#: the official sampler (provider.py:169-182), relative to the reference azimuth: 30% within
#: +-60, 20% on each side out to +-135, 15% on each back side
OFFICIAL_MIXTURE = [
    (0.30, -60.0, 60.0),
    (0.20, -135.0, -60.0),
    (0.20, 60.0, 135.0),
    (0.15, -180.0, -135.0),
    (0.15, 135.0, 180.0),
]


def test_official_mixture_fractions():
    comps = mixture_components(180.0, "makeit3d")
    assert sorted(comps) == sorted(OFFICIAL_MIXTURE)
    a = sample_relative_azimuth(N, 180.0, "makeit3d", generator=torch.Generator().manual_seed(1))
    for p, lo, hi in OFFICIAL_MIXTURE:
        frac = ((a >= lo) & (a < hi)).float().mean().item()
        assert frac == pytest.approx(p, abs=0.015), (lo, hi)
    # back views (|rel| >= 135) get 30% under the mixture, 25% under uniform sampling
    assert is_back_view(a).float().mean().item() == pytest.approx(0.30, abs=0.015)
    u = sample_relative_azimuth(N, 180.0, "uniform", generator=torch.Generator().manual_seed(2))
    assert is_back_view(u).float().mean().item() == pytest.approx(0.25, abs=0.015)
    assert mixture_components(45.0, "makeit3d") == [(1.0, -45.0, 45.0)]
    assert pick_component(comps, 0.0) == (-60.0, 60.0) and pick_component(comps, 0.999) == (
        135.0,
        180.0,
    )
    with pytest.raises(ValueError):
        mixture_components(180.0, "gaussian")


def test_back_view_is_relative_to_the_reference_and_wraps():
    assert is_back_view(135.0) and is_back_view(-135.0) and is_back_view(180.0)
    assert not is_back_view(134.9) and not is_back_view(0.0)
    # threestudio default reference azimuth -180: the view at 0 is its back
    assert is_back_view(0.0, -180.0) and not is_back_view(170.0, -180.0)
    assert relative_azimuth(190.0, -170.0) == pytest.approx(0.0)
    t = torch.tensor([0.0, 135.0, 200.0, -100.0])
    assert is_back_view(t, 0.0).tolist() == [False, True, True, False]
    assert not is_back_view(torch.tensor([180.0]), 0.0, back_threshold_deg=181.0).any()


def test_shuffled_schedule_is_exactly_25_percent_per_block_and_reproducible():
    s = ReferenceSchedule()  # Make-It-3D defaults
    steps = range(1000)
    refs = [s.is_reference(i) for i in steps]
    assert sum(refs) == 250
    for blk in range(10):
        assert sum(refs[blk * 100 : (blk + 1) * 100]) == 25
    # random order: not the same positions in every block, not simply every 4th step
    pos = [frozenset(i % 100 for i in range(b * 100, (b + 1) * 100) if refs[i]) for b in range(3)]
    assert len(set(pos)) == 3 and refs != [i % 4 == 0 for i in steps]
    # a fresh instance (a resumed run) reproduces it, in any query order
    again = ReferenceSchedule()
    assert [again.is_reference(i) for i in reversed(steps)][::-1] == refs
    assert [ReferenceSchedule(seed=1).is_reference(i) for i in steps] != refs
    assert all(s.substeps(i) == (("ref",) if refs[i] else ("novel",)) for i in steps)


def test_other_schedules():
    assert [ReferenceSchedule(mode="every_n", n_ref=3).substeps(i) for i in range(4)] == [
        ("ref",),
        ("novel",),
        ("novel",),
        ("ref",),
    ]
    assert ReferenceSchedule(mode="both").substeps(7) == ("ref", "novel")
    warm = ReferenceSchedule(mode="both", ref_only_steps=5)
    assert warm.substeps(4) == ("ref",) and warm.substeps(5) == ("ref", "novel")
    r = ReferenceSchedule(mode="random", ref_fraction=0.25)
    frac = sum(r.is_reference(i) for i in range(4000)) / 4000
    assert frac == pytest.approx(0.25, abs=0.03)
    with pytest.raises(ValueError):
        ReferenceSchedule(mode="sometimes")
    with pytest.raises(ValueError):
        ReferenceSchedule(ref_fraction=1.5)
