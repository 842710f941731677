"""The `hifi123` subcommands. Each module here (and `preprocess.cli`, `evaluation.cli`,
`run.cli`) has `add_parser(subparsers)`; `hifi123.cli` registers them all on one parser, the
same way. :func:`dispatch` runs a parsed command with the one error rule: a user error prints a
short explanation and exits with code 2."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Callable, List, Optional

from ..errors import Hifi123Error


class Parser(argparse.ArgumentParser):
    """argparse with our error form: a usage error (exit code 2) also says what was expected and
    how to fix it. Sub-command parsers made by `add_subparsers` are of this class too."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        expected, fix = _usage_hint(message, self.prog)
        self.exit(2, f"{self.prog}: error: {message}\n  expected: {expected}\n  fix: {fix}\n")


def _usage_hint(message: str, prog: str):
    """(expected, fix) for one of argparse's usage messages."""
    helps = f"`{prog} --help` lists every option with its range"
    found = re.search(r": expected (.+?)(?:, got .*)?$", message, re.S)
    choice = re.search(r"invalid choice: .* \(choose from (.*)\)", message)
    if "unrecognized arguments:" in message:
        return f"only the options of {prog}", f"remove or correct them; {helps}"
    if "the following arguments are required:" in message:
        missing = message.split(":", 1)[1].strip()
        return f"{missing} on the command line", f"add {missing}; {helps}"
    if choice:
        return f"one of {choice.group(1)}", f"pick one of them; {helps}"
    if "not allowed with argument" in message:
        return "at most one of these options", "drop one of them"
    if found:
        return found.group(1), helps
    if "invalid int value" in message:
        return "an integer", helps
    if "invalid float value" in message:
        return "a number", helps
    return f"arguments as {prog} --help describes them", helps


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
    except BrokenPipeError:  # `hifi123 run --dry-run | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def standalone(name: str, add_parser: Callable, argv: Optional[List[str]] = None) -> int:
    """`python -m hifi123.<module>.cli ARGS` = `hifi123 <name> ARGS`, with only that subcommand."""
    parser = Parser(prog="hifi123")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return dispatch(parser, [name, *(sys.argv[1:] if argv is None else argv)])


def integer(
    low: Optional[int] = None, high: Optional[int] = None, multiple: int = 1
) -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (and a multiple of `multiple`); anything else is a
    usage error naming the flag (argparse adds it), before anything runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or value % multiple
        ):
            raise argparse.ArgumentTypeError(
                f"expected {_range('an integer', low, high, False)}"
                + (f" and a multiple of {multiple}" if multiple > 1 else "")
                + f", got {value}"
            )
        return value

    return parse


def real(
    low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False
) -> Callable[[str], float]:
    """argparse type: a finite number in [low, high] ((low, high] with `low_open`); NaN, inf and
    anything out of range are usage errors naming the flag."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and value > high)
        if bad:
            raise argparse.ArgumentTypeError(
                f"expected {_range('a finite number', low, high, low_open)}, got {text}"
            )
        return value

    return parse


def _range(what: str, low, high, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"{what} in {'(' if low_open else '['}{low}, {high}]"
    if low is not None:
        return f"{what} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{what} <= {high}"
    return what


def device(text: str) -> str:
    """argparse type: a torch device this machine has ("cpu", "cuda", "cuda:1", "mps"); a typo or
    a GPU that is not there is a usage error before any model loads."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected a torch device such as cpu or cuda:0, got {text!r}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has no CUDA device (torch "
                f"{torch.__version__}); use --device cpu"
            ) from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            ) from None
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise argparse.ArgumentTypeError(
            f"{text}: MPS is not available here; use --device cpu"
        ) from None
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda[:N] or mps, got {text!r}") from None
    return text


def resolve_device(requested: Optional[str] = None):
    """The torch device a command runs on where no input tensor says it: the requested one, else
    CUDA when this machine has it, else the CPU."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
