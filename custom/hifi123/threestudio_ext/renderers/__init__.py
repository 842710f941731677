from . import depth_rasterizer  # noqa: F401  hifi123-nvdiff-rasterizer
