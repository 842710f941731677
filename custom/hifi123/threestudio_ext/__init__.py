"""threestudio adapters: thin registered shells around the threestudio-free core.

Only imported when threestudio is importable (see `hifi123.register_threestudio_components`).
Each module registers its names through :func:`register`, which is idempotent for the same class
(the package may be imported twice, once as an installed package and once by launch.py).
"""

from __future__ import annotations

# importing a component module registers its names
from . import (
    data,  # noqa: F401  hifi123- and makeit3d-single-image-datamodule
    geometry,  # noqa: F401  makeit3d-point-cloud
    guidance,  # noqa: F401  makeit3d-guidance, hifi123-rgnv-guidance, hifi123-rgsd-guidance
    renderers,  # noqa: F401  hifi123-nvdiff-rasterizer, makeit3d-deferred-renderer
    systems,  # noqa: F401  hifi123-system, makeit3d-system
)
from .registry import register  # noqa: F401
