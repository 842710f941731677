"""threestudio datamodules: device-safe single-image data and Make-It-3D's progressive cameras."""

from . import single_image  # noqa: F401  makeit3d-single-image-datamodule
