"""`hifi123 report OUT`: the HTML report of a run folder (or of one threestudio trial folder).

    hifi123 report OUT [--dest DIR]

Writes OUT/report/index.html and OUT/report/assets/ (or into --dest): open index.html in a browser
straight from disk. Safe to run while a batch is still going: it shows what exists so far.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_report(args) -> int:
    from .build import build_report

    path = build_report(args.out, args.dest)
    print(f"report: {path}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report",
        help="an HTML page of a run: input, videos, 3D view, losses, metrics, commands",
        description="Write OUT/report/index.html (self-contained; open it from disk) from the "
        "folder `hifi123 run` wrote, for one image or a manifest, or from one threestudio "
        "trial folder of our systems.",
    )
    p.add_argument("out", metavar="OUT", help="the --out folder of hifi123 run, or a trial folder")
    p.add_argument(
        "--dest",
        default=None,
        help="write the report here instead of OUT/report (a new or empty folder, or one "
        "an earlier report was written to)",
    )
    p.set_defaults(func=_cmd_report)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry (`python -m hifi123.report.cli OUT`)."""
    from ..commands import standalone

    return standalone("report", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
