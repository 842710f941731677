"""threestudio adapters: thin registered shells around the threestudio-free core.

Only imported when threestudio is importable (see `hifi123.register_threestudio_components`).
Each module registers its names through :func:`register`, which is idempotent for the same class
(the package may be imported twice, once as an installed package and once by launch.py).
"""
from __future__ import annotations

# component modules are imported here as later issues add them (importing registers)
from . import (
    data,  # noqa: F401  makeit3d-single-image-datamodule (issue 5)
    makeit3d_guidance,  # noqa: F401  makeit3d-guidance (issue 5)
    point_cloud,  # noqa: F401  makeit3d-point-cloud, makeit3d-deferred-renderer (issue 6)
    renderers,  # noqa: F401  hifi123-nvdiff-rasterizer (issue 4)
    rgnv_guidance,  # noqa: F401  hifi123-rgnv-guidance (issue 3 item 5)
    rgsd_guidance,  # noqa: F401  hifi123-rgsd-guidance (issue 4)
    systems,  # noqa: F401  makeit3d-system (issue 5)
)
from .registry import register  # noqa: F401
