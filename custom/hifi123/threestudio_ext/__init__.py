"""threestudio adapters: thin registered shells around the threestudio-free core.

Only imported when threestudio is importable (see `hifi123.register_threestudio_components`).
Each module registers its names through :func:`register`, which is idempotent for the same class
(the package may be imported twice, once as an installed package and once by launch.py).
"""
from __future__ import annotations

# component modules are imported here as later issues add them (importing registers)
from . import (
    rgnv_guidance,  # noqa: F401  hifi123-rgnv-guidance (issue 3 item 5)
)
from .registry import register  # noqa: F401
