from . import point_cloud  # noqa: F401  makeit3d-point-cloud
