from . import (
    aligned_mesh,  # noqa: F401  hifi123-custom-mesh
    point_cloud,  # noqa: F401  makeit3d-point-cloud
)
