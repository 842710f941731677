"""The `hifi123` command.

    hifi123 tiny-models --out DIR
    hifi123 rgnv --ref R --coarse V1 [V2 ...] --out DIR [--prompt P] [--steps 50]
        [--inject-steps 30] [--model ID_OR_DIR] [--tiny]
    hifi123 bench rgnv [--views 4] [--steps 50] [--inject-steps 30]
    hifi123 bench rgsd [--iterations 8] [--steps 20] [--inject-steps 12]
    hifi123 preprocess IMAGE_OR_DIR [--out DIR] ...
    hifi123 eval single-view|gso ...
    hifi123 align-mesh MESH --ref <name>_rgba.png --out DIR [--pose ...] [--elevation DEG]
    hifi123 run IMAGE | --manifest FILE [--method hifi123|makeit3d] [--gpu 0 | --gpus 0,1]
        [--lowvram] [--dry-run]
    hifi123 report OUT [--dest DIR]

User errors (bad files, missing models) print a short explanation and exit with code 2; they are
raised before any model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .commands import Parser, align_mesh, bench, dispatch, rgnv, tiny_models
from .evaluation import cli as eval_cli
from .preprocess import cli as preprocess_cli
from .report import cli as report_cli
from .run import cli as run_cli

#: every subcommand, in `--help` order; each registers itself with `add_parser(subparsers)`
SUBCOMMANDS = (tiny_models, rgnv, bench, preprocess_cli, eval_cli, align_mesh, run_cli, report_cli)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hifi123", description="HiFi-123 / Make-It-3D tools for threestudio")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in SUBCOMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
