"""Shared by the launch.py end-to-end tests: a threestudio root of our own and one launch.py run
on the CPU (through `hifi123.testing.cpu_threestudio`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

EXTENSION = Path(__file__).resolve().parents[1] / "custom" / "hifi123"


def make_threestudio_root(root: Path, threestudio_checkout: str) -> Path:
    """threestudio's files linked into `root`, custom/hifi123 -> this package."""
    for name in ("threestudio", "extern", "load", "launch.py"):
        os.symlink(os.path.join(threestudio_checkout, name), root / name)
    (root / "custom").mkdir()
    os.symlink(EXTENSION, root / "custom" / "hifi123")
    return root


def run_launch(root: Path, *args: str) -> Tuple[int, str]:
    """`python launch.py ARGS` in `root` on the CPU, offline: (exit code, output)."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("HIFI123_CPU_THREADS", "2")
    cmd = [sys.executable, "-m", "hifi123.testing.cpu_threestudio", "launch.py", *args]
    proc = subprocess.run(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert "IMPORT FAILED" not in proc.stdout, proc.stdout[-6000:]
    return proc.returncode, proc.stdout


def from_trial(trial: Path, mode: str, *overrides: str) -> List[str]:
    """launch.py arguments that rerun a finished trial in `mode` (--test, --export, --train):
    its parsed config, resumed from its last checkpoint, then `overrides`."""
    parsed, ckpt = trial / "configs" / "parsed.yaml", trial / "ckpts" / "last.ckpt"
    return ["--config", str(parsed), mode, f"resume={ckpt}", *overrides]


#: with `from_trial(..., "--train")`: two steps past a 4-step smoke trial, a checkpoint each
TWO_MORE_STEPS = ("trainer.max_steps=6", "checkpoint.every_n_train_steps=1")
