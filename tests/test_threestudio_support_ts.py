"""The threestudio-marked half of `test_threestudio_support.py` (skipped without a threestudio
checkout)."""

from __future__ import annotations

import pytest

FAKE = "hifi123_fake_gpu_mod"

pytestmark = pytest.mark.threestudio


def test_hifi123_loads_like_launch(threestudio_env):
    import hifi123

    ts = threestudio_env.threestudio
    assert threestudio_env.ok, threestudio_env.output
    assert "(IMPORT FAILED)" not in threestudio_env.output
    assert threestudio_env.module.__name__ == "hifi123"
    assert hifi123._version_tuple(ts.__version__) >= hifi123._version_tuple("0.2.0")
    assert "stable-diffusion-guidance" in ts.__modules__  # core registry is intact
    for name in hifi123.REGISTERED_NAMES:
        assert ts.find(name).__module__.startswith("hifi123.")


def test_registry_register_is_idempotent(threestudio_env):
    from hifi123 import REGISTERED_CLASSES, REGISTERED_NAMES
    from hifi123.threestudio_ext.registry import register

    ts = threestudio_env.threestudio
    name = "hifi123-test-dummy"

    class Dummy:
        pass

    class Other:
        pass

    try:
        assert register(name)(Dummy) is Dummy
        assert register(name)(Dummy) is Dummy  # same class again: fine
        assert ts.find(name) is Dummy
        # the same class from a second copy of the package (installed + launch.py): the first
        # registration stays (threestudio.register refuses a name twice; we never write its dict)
        twin = type(
            "Dummy", (), {"__module__": Dummy.__module__, "__qualname__": Dummy.__qualname__}
        )
        assert register(name)(twin) is twin
        assert ts.find(name) is Dummy and REGISTERED_CLASSES[name] is twin
        with pytest.raises(ValueError, match="already registered"):
            register(name)(Other)
        assert ts.find(name) is Dummy
        assert REGISTERED_NAMES.count(name) == 1
        with pytest.raises(ValueError, match="must start with"):
            register("test-dummy")(Dummy)
    finally:
        ts.__modules__.pop(name, None)
        REGISTERED_CLASSES.pop(name, None)
        while name in REGISTERED_NAMES:
            REGISTERED_NAMES.remove(name)


@pytest.mark.parametrize(
    "name, latents_ok",
    [
        ("hifi123-rgnv-guidance", False),
        ("hifi123-rgsd-guidance", False),
        ("makeit3d-guidance", True),
    ],
)
def test_guidances_refuse_call_forms_threestudio_does_not_use(threestudio_env, name, latents_ok):
    """`guidance(rgb, prompt_utils, **batch)` only: a camera passed by position would be read as
    something else, and latents cannot go where the guidance encodes the render itself. Both are
    refused before anything is built (the guidance here was never configured)."""
    import torch

    cls = threestudio_env.threestudio.find(name)
    guidance = cls.__new__(cls)  # no configure(): the checks come before any use of state
    rgb = torch.rand(1, 8, 8, 3)
    with pytest.raises(TypeError, match=f"{name} takes rgb and at most one positional"):
        guidance(rgb, object(), torch.zeros(1))
    if not latents_ok:
        with pytest.raises(ValueError, match=f"{name} takes the rendered image, not latents"):
            guidance(rgb, object(), rgb_as_latents=True)
