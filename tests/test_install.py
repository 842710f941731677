"""install.sh's GPU mode on a machine without CUDA: stops before installing anything, and says why
and what to run instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_gpu_install_on_a_cpu_machine_stops_before_installing(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, THREESTUDIO_ROOT="")
    env.pop("THREESTUDIO_ROOT")
    before = set(os.listdir(REPO))
    proc = subprocess.run(
        ["bash", str(REPO / "install.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert "step 'check GPU' failed" in err and "Nothing was installed" in err
    assert "bash install.sh --test" in err and "--force" in err
    assert "Traceback" not in err + proc.stdout
    assert set(os.listdir(REPO)) == before  # no ./threestudio clone, nothing written


def test_unknown_argument_is_refused_with_the_usage():
    proc = subprocess.run(
        ["bash", str(REPO / "install.sh"), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    assert "--test" in proc.stdout
