import sys

import hifi123


def test_import_does_not_import_threestudio():
    assert "threestudio" not in sys.modules or "hifi123" in sys.modules
    assert hifi123.__version__


def test_threestudio_version_gate():
    import pytest

    hifi123.check_threestudio_version("0.2.3")
    with pytest.raises(ImportError, match=r"threestudio >= 0.2.0"):
        hifi123.check_threestudio_version("0.1.9")
