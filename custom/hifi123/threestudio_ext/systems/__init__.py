"""threestudio systems: the shared image-conditioned base (unregistered) and the stage systems."""

from . import hifi123, makeit3d  # noqa: F401  hifi123-system, makeit3d-system
from .base import ImageConditionedSystem  # noqa: F401
