"""The `hifi123` subcommands. Each module here (and `preprocess.cli`, `evaluation.cli`,
`run.cli`) has `add_parser(subparsers)`; `hifi123.cli` registers them all on one parser, the
same way. :func:`dispatch` runs a parsed command with the one error rule: a user error prints a
short explanation and exits with code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from ..errors import Hifi123Error


def dispatch(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except Hifi123Error as err:
        print(f"hifi123: error: {err.render()}", file=sys.stderr)
        return 2


def standalone(name: str, add_parser: Callable, argv: Optional[List[str]] = None) -> int:
    """`python -m hifi123.<module>.cli ARGS` = `hifi123 <name> ARGS`, with only that subcommand."""
    parser = argparse.ArgumentParser(prog="hifi123")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return dispatch(parser, [name, *(sys.argv[1:] if argv is None else argv)])
