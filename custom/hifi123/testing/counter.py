"""Count UNet evaluations: calls and batch items (a CFG pair in one call counts 1 call, 2 items)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class EvalCount:
    calls: int = 0
    items: int = 0

    def reset(self) -> None:
        self.calls = self.items = 0


@contextmanager
def count_unet_evals(unet: torch.nn.Module):
    """Context manager yielding an `EvalCount` updated on every forward of `unet`."""
    count = EvalCount()

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        count.calls += 1
        count.items += int(sample.shape[0])

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield count
    finally:
        handle.remove()
