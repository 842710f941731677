"""Our guidances, registered on import: `makeit3d-guidance`, `hifi123-rgnv-guidance`,
`hifi123-rgsd-guidance` (`rgnv_common`: what the two RGNV-based ones share)."""

from . import makeit3d, rgnv, rgsd  # noqa: F401
