"""Procedural synthetic sample object (see :mod:`hifi123.sample.make_sample`)."""

# Exports are resolved lazily so that `python -m hifi123.sample.make_sample` does not import the
# module twice (runpy warns when the package __init__ already imported it).
__all__ = [
    "BOUND_RADIUS",
    "CAPTION",
    "DEFAULT_ASSETS_DIR",
    "OBJECT_SIZE",
    "REF_AZIMUTH_DEG",
    "REF_DISTANCE",
    "REF_ELEVATION_DEG",
    "REF_FOVY_DEG",
    "REF_SIZE",
    "backproject_depth",
    "cast_rays",
    "decode_depth_png",
    "decode_normal_png",
    "focal_from_fovy",
    "load_sample_geometry",
    "look_at_c2w",
    "procedural_background",
    "project_points",
    "ray_directions",
    "render_sample",
    "sample_albedo",
    "sample_normal",
    "sample_sdf",
    "write_sample_assets",
]


def __getattr__(name):
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(__name__ + ".make_sample"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
