"""`hifi123 tiny-models --out DIR`: tiny random models in the real repositories' layout."""

from __future__ import annotations

import argparse

#: the file that marks a folder `hifi123 tiny-models` wrote (it may write there again)
TINY_MARKER = ".hifi123-tiny-models"


def _cmd_tiny_models(args) -> int:
    from ..models.tiny import write_tiny_models
    from ..outputs import claim_folder

    # tiny random weights must never replace a folder of real models (or anything else)
    claim_folder(args.out, TINY_MARKER, "hifi123 tiny-models")
    written = write_tiny_models(args.out)
    for name, d in written.items():
        print(f"{name:10s} {d}")
    print(
        "\nPoint a model field at one of these, e.g. `hifi123 rgnv --model "
        f"{written['sd2-depth']} ...`"
    )
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser(
        "tiny-models", help="write tiny random models in the real repositories' layout"
    )
    t.add_argument("--out", required=True, help="output folder")
    t.set_defaults(func=_cmd_tiny_models)
    return t
