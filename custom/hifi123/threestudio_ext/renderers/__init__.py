from . import (
    deferred,  # noqa: F401  makeit3d-deferred-renderer
    depth_rasterizer,  # noqa: F401  hifi123-nvdiff-rasterizer
)
