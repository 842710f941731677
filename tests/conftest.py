"""Shared test setup.

Tests marked ``@pytest.mark.threestudio`` run against a real threestudio checkout (GPU-only
modules stubbed, see ``hifi123.testing.threestudio_stubs``) and are skipped cleanly when none is
found. Unmarked tests never import threestudio.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hifi123.testing import threestudio_stubs as ts_stubs

REPO_ROOT = Path(__file__).resolve().parents[1]
EXTENSION_DIR = REPO_ROOT / "custom" / "hifi123"


def _skip_reason() -> str:
    env = os.environ.get("THREESTUDIO_ROOT")
    if env and not Path(env, "threestudio", "__init__.py").is_file():
        return f"THREESTUDIO_ROOT={env} holds no threestudio/ package; {ts_stubs.ENABLE_HINT}"
    return f"threestudio not found; {ts_stubs.ENABLE_HINT} to run these tests"


def pytest_collection_modifyitems(config, items):
    # a file name ending in _ts means: every test in it needs threestudio, and no other test does
    wrong = [
        item.nodeid
        for item in items
        if bool(item.get_closest_marker("threestudio")) != item.path.name.endswith("_ts.py")
    ]
    if wrong:
        raise pytest.UsageError(
            (
                "threestudio-marked tests belong in tests/*_ts.py files (pytestmark = "
                "pytest.mark.threestudio) and only there; move or mark: "
            )
            + ", ".join(wrong[:10])
        )
    marked = [item for item in items if item.get_closest_marker("threestudio")]
    if not marked or ts_stubs.find_threestudio_root() is not None:
        return
    skip = pytest.mark.skip(reason=_skip_reason())
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def threestudio_env():
    """threestudio imported with GPU-only modules stubbed, and ``custom/hifi123`` loaded the way
    threestudio's ``launch.py`` loads extensions (a fresh copy, as in a new launch.py process).

    Returns a namespace: ``threestudio`` (the module), ``root`` (its checkout), ``ok`` (the load
    succeeded), ``output`` (what launch.py would have printed), ``module`` (the loaded package).
    """
    root = ts_stubs.find_threestudio_root()
    if root is None:
        pytest.skip(_skip_reason())
    try:
        threestudio = ts_stubs.import_threestudio(root)
    except ImportError as e:
        if os.environ.get("THREESTUDIO_ROOT"):
            raise  # asked for explicitly: a broken setup must not pass as a skip
        pytest.skip(f"threestudio at {root} is not importable in this environment ({e})")
    from hifi123.testing.cpu_threestudio import patch_threestudio_for_cpu

    # get_device -> CPU, pure-torch rasteriser / hash grid / NeRF renderer
    patch_threestudio_for_cpu()

    # launch.py loads custom/hifi123 in a process that has not imported hifi123 yet; do the same
    # on a fresh copy, then put the session's copy back so tests keep seeing one hifi123
    with ts_stubs.isolated_package("hifi123"):
        ok, output = ts_stubs.load_extension_like_launch(EXTENSION_DIR)
        module = sys.modules.get("hifi123")
    if ok:
        import hifi123

        # launch.py's copy registered first (threestudio keeps it); tests import the session
        # copy's classes, so point the registry at those (test support only: the extension itself
        # registers through threestudio.register)
        hifi123.register_threestudio_components()
        threestudio.__modules__.update(hifi123.REGISTERED_CLASSES)
    return SimpleNamespace(threestudio=threestudio, root=root, ok=ok, output=output, module=module)


@pytest.fixture(autouse=True)
def _threestudio_for_marked_tests(request):
    """Every ``threestudio``-marked test gets `threestudio_env` set up, even without asking."""
    if request.node.get_closest_marker("threestudio") is not None:
        request.getfixturevalue("threestudio_env")


# ------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny offline model family, written once per test session (same layout as the hub)."""
    from hifi123.models.tiny import write_tiny_models

    return write_tiny_models(str(tmp_path_factory.mktemp("tiny-models")))


@pytest.fixture(scope="session")
def sd2_depth(tiny_models):
    """Tiny SD2-depth components (with its DPT), loaded through the project's loader."""
    import torch
    from hifi123.models.loader import load_diffusion

    torch.set_num_threads(2)
    return load_diffusion(tiny_models["sd2-depth"], "model", with_depth_estimator=True)


@pytest.fixture(scope="session")
def sample_rgba():
    from hifi123.core.images import load_rgba

    return load_rgba(str(EXTENSION_DIR / "assets" / "sample_rgba.png"))


@pytest.fixture(scope="module")
def one_thread():
    """Small index-heavy tensors: one thread is fastest, and immune to a busy second core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests may set torch's thread count for speed; the next test starts with the count it had."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# torch.cuda.is_available as `hifi123 run` sees it (its tests never touch a GPU)
@pytest.fixture
def no_gpu(monkeypatch):
    """No CUDA device."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def gpu(monkeypatch):
    """Four CUDA devices (torch.cuda patched; nothing runs on them)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(`hifi123 preprocess` tests) tiny dpt / clipseg / segformer / blip2 in the real layouts, in a
    private tiny-model cache that `--tiny` also uses (XDG_CACHE_HOME points at it for this
    module)."""
    import os

    import torch
    from hifi123.models.tiny import default_tiny_root
    from hifi123.preprocess.tiny import tiny_model_dirs

    # one thread: these models are tiny, and two threads on a busy 2-core machine spin-wait
    # (a 64-px DPT forward took 1 s with 2 threads under load, 3 ms with 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    try:
        yield tiny_model_dirs(("dpt", "clipseg", "segformer", "blip2"), default_tiny_root())
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
