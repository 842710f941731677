"""Make-It-3D camera schedule, as pure functions (no threestudio): progressive azimuth ranges, the
back-view test, the azimuth mixture of the official sampler, and the reference/novel alternation.

Paper §3.2 "progressive training", §4.1 "camera setting"; algorithms.md C.3; decision 16.

Angles follow threestudio: azimuth in degrees, 0 on +x ("front"), positive towards +y. Everything
here is *relative to the reference azimuth* (`default_azimuth_deg` of the datamodule), so the
official code's reference at phi = 180 maps to a relative azimuth 0 and its phi to
``wrap(phi - 180)``.

* Progressive range: relative azimuth in [-45, 45] for the first 40% of the steps (official phase 1:
  phi in [135, 225], 2000 of 5000 iterations), then [-180, 180] (phase 2: phi in [0, 360]).
* Back view: |wrap(azimuth - reference)| >= 135 (official "large" views phi in [0, 45] U [315, 360]
  with the reference at 180: closed intervals, so 135 itself is back). Back views never use CLIP-D.
* Azimuth sampling: uniform over the current range, or the official mixture (`"makeit3d"`): when
  the range lies within +-60 it is uniform; otherwise 30% in [-60, 60], 20% in [-135, -60], 20% in
  [60, 135], 15% in [-180, -135] and 15% in [135, 180] (each interval clipped to the range).
* Reference iterations: exactly 25% of the iterations are reference iterations, in random order
  within each block of 100 (the official loader shuffles 100 indices per epoch and every 4th index
  is the reference view). The order is a deterministic function of (seed, block), so a resumed run
  continues the same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

#: official mixture (relative azimuth, degrees): (probability, low, high)
MAKEIT3D_AZIMUTH_MIXTURE: Tuple[Tuple[float, float, float], ...] = (
    (0.30, -60.0, 60.0),
    (0.20, -135.0, -60.0),
    (0.20, 60.0, 135.0),
    (0.15, -180.0, -135.0),
    (0.15, 135.0, 180.0),
)
AZIMUTH_SAMPLING = ("uniform", "makeit3d")


def wrap_degrees(angle: Union[float, torch.Tensor]):
    """Wrap to [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


def relative_azimuth(azimuth, reference_azimuth):
    """Azimuth relative to the reference, wrapped to [-180, 180)."""
    return wrap_degrees(azimuth - reference_azimuth)


def is_back_view(azimuth, reference_azimuth=0.0, back_threshold_deg: float = 135.0):
    """True where |relative azimuth| >= `back_threshold_deg` (default 180 - 45, see module doc).

    Works on floats and tensors. A threshold > 180 disables the test (nothing is "back").
    """
    rel = relative_azimuth(azimuth, reference_azimuth)
    return (
        abs(rel) >= back_threshold_deg
        if not torch.is_tensor(rel)
        else rel.abs() >= back_threshold_deg
    )


def progressive_half_range(
    step: int,
    max_steps: int,
    progressive_fraction: float = 0.4,
    phase1_half_range: float = 45.0,
    phase2_half_range: float = 180.0,
) -> float:
    """Half-width (degrees) of the relative azimuth range at `step`.

    Phase 1 covers steps [0, round(fraction * max_steps)); phase 2 the rest. fraction 0 means
    phase 2 from the start; fraction >= 1 means phase 1 throughout.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    switch = int(round(progressive_fraction * max_steps))
    return float(phase1_half_range if step < switch else phase2_half_range)


def azimuth_range(
    step: int, max_steps: int, reference_azimuth: float = 0.0, **kw
) -> Tuple[float, float]:
    """Absolute azimuth range (degrees, threestudio convention) at `step`; see
    :func:`progressive_half_range` for the keyword arguments."""
    h = progressive_half_range(step, max_steps, **kw)
    return reference_azimuth - h, reference_azimuth + h


def mixture_components(
    half_range: float, mode: str = "uniform"
) -> List[Tuple[float, float, float]]:
    """The (probability, low, high) intervals of relative azimuth for a range of +-half_range.

    "uniform": one interval. "makeit3d": the official mixture clipped to the range, with
    components that fall outside it dropped and the probabilities renormalised; a range within
    +-60 gives the single uniform interval, as in the official sampler.
    """
    if mode not in AZIMUTH_SAMPLING:
        raise ValueError(f"azimuth sampling must be one of {AZIMUTH_SAMPLING}, got {mode!r}")
    if half_range < 0:
        raise ValueError(f"half range must be >= 0, got {half_range}")
    if mode == "uniform" or half_range <= 60.0:
        return [(1.0, -half_range, half_range)]
    comps = []
    for p, lo, hi in MAKEIT3D_AZIMUTH_MIXTURE:
        lo, hi = max(lo, -half_range), min(hi, half_range)
        if hi > lo:
            comps.append((p, lo, hi))
    total = sum(p for p, _, _ in comps)
    return [(p / total, lo, hi) for p, lo, hi in comps]


def pick_component(
    components: Sequence[Tuple[float, float, float]], u: float
) -> Tuple[float, float]:
    """The (low, high) interval of the component that a uniform draw `u` in [0, 1) selects."""
    acc = 0.0
    for p, lo, hi in components:
        acc += p
        if u < acc:
            return lo, hi
    return components[-1][1], components[-1][2]


def sample_relative_azimuth(
    n: int,
    half_range: float,
    mode: str = "uniform",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw `n` relative azimuths (degrees), each from the mixture independently."""
    comps = mixture_components(half_range, mode)
    probs = torch.tensor([c[0] for c in comps], dtype=torch.float64)
    idx = torch.multinomial(probs, n, replacement=True, generator=generator)
    lo = torch.tensor([c[1] for c in comps], dtype=torch.float64)[idx]
    hi = torch.tensor([c[2] for c in comps], dtype=torch.float64)[idx]
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (lo + u * (hi - lo)).float()


# ------------------------------------------------------------------------------ ref / novel

REFERENCE_SCHEDULES = ("shuffled", "every_n", "random", "both")


@dataclass
class ReferenceSchedule:
    """Which sub-steps a training iteration runs: ("ref",), ("novel",) or ("ref", "novel").

    * "shuffled" (Make-It-3D): in each block of `block` iterations exactly
      round(ref_fraction * block) are reference iterations, at positions drawn by a permutation
      seeded with (seed, block index).
    * "every_n": reference when step % n_ref == 0 (threestudio zero123's "alternate").
    * "random": reference with probability ref_fraction, drawn from (seed, step).
    * "both": every iteration runs both (threestudio's "accumulate"; Magic123, DreamCraft3D).

    In all modes the first `ref_only_steps` iterations are reference-only. Every decision is a
    pure function of the step, so resuming reproduces the schedule.
    """

    mode: str = "shuffled"
    ref_fraction: float = 0.25
    block: int = 100
    n_ref: int = 4
    ref_only_steps: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in REFERENCE_SCHEDULES:
            raise ValueError(
                f"reference schedule mode must be one of {REFERENCE_SCHEDULES}, got {self.mode!r}"
            )
        if not 0.0 <= self.ref_fraction <= 1.0:
            raise ValueError(f"ref_fraction must be in [0, 1], got {self.ref_fraction}")
        if self.block < 1 or self.n_ref < 1:
            raise ValueError("block and n_ref must be >= 1")
        self._cache_block: Optional[int] = None
        self._cache_set: frozenset = frozenset()

    def _block_refs(self, block_index: int) -> frozenset:
        if self._cache_block != block_index:
            rng = random.Random(f"{self.seed}:{block_index}")
            k = int(round(self.ref_fraction * self.block))
            self._cache_set = frozenset(rng.sample(range(self.block), k))
            self._cache_block = block_index
        return self._cache_set

    def is_reference(self, step: int) -> bool:
        """True when iteration `step` runs the reference sub-step (only or with the novel one)."""
        if step < self.ref_only_steps or self.mode == "both":
            return True
        if self.mode == "every_n":
            return step % self.n_ref == 0
        if self.mode == "random":
            return random.Random(f"{self.seed}:{step}").random() < self.ref_fraction
        return (step % self.block) in self._block_refs(step // self.block)

    def substeps(self, step: int) -> Tuple[str, ...]:
        if step < self.ref_only_steps:
            return ("ref",)
        if self.mode == "both":
            return ("ref", "novel")
        return ("ref",) if self.is_reference(step) else ("novel",)
