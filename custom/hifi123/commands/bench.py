"""`hifi123 bench rgnv|rgsd|raster`: UNet evaluations and CPU time ratios on tiny models."""

from __future__ import annotations

import argparse

from ..errors import InputError
from . import integer


def _cmd_bench(args) -> int:
    from .. import bench

    if not getattr(args, "bench", None):
        args.bench_parser.print_help()
        return 1

    steps, inject = getattr(args, "steps", None), getattr(args, "inject_steps", None)
    if steps is not None and inject is not None and inject > steps:
        raise InputError(
            f"--inject-steps {inject} is more than --steps {steps}",
            "injection on at most every denoising step",
            f"hifi123 bench {args.bench} --steps {steps} --inject-steps {steps} (or fewer)",
        )
    return bench.run(args)


def add_parser(subparsers) -> argparse.ArgumentParser:
    b = subparsers.add_parser(
        "bench", help="measure UNet evaluations and CPU time ratios on tiny models"
    )
    bsub = b.add_subparsers(dest="bench", metavar="WHAT")
    br = bsub.add_parser("rgnv", help="reference cache: cached once vs recomputed per view")
    br.add_argument("--views", type=integer(1), default=4)
    br.add_argument("--steps", type=integer(1), default=50)
    br.add_argument("--inject-steps", type=integer(0), default=30)
    br.add_argument("--repeats", type=integer(1), default=3, help="timing repeats (median)")
    bg = bsub.add_parser(
        "rgsd", help="RGSD per-iteration cost: ours vs re-running the reference branch"
    )
    bg.add_argument("--iterations", type=integer(1), default=8)
    bg.add_argument("--steps", type=integer(1), default=20)
    bg.add_argument("--inject-steps", type=integer(0), default=12)
    bg.add_argument("--repeats", type=integer(1), default=3, help="timing repeats (median)")
    bq = bsub.add_parser(
        "raster",
        help="Make-It-3D refine: point rasterisation (K scales) vs one U-Net pass, fwd+bwd",
    )
    bq.add_argument(
        "--size",
        type=integer(16, multiple=4),
        default=800,
        help=(
            "render size (multiple of 4; default 800, the refine config's; 2 px point radius at "
            "every size)"
        ),
    )
    bq.add_argument("--repeats", type=integer(1), default=5, help="timing repeats (median)")
    bq.add_argument(
        "--threads",
        type=integer(0),
        default=1,
        help="torch CPU threads for both (0: torch's default; 1 is stable on a busy machine)",
    )
    bq.add_argument(
        "--azimuths", type=integer(1), default=12, help="build views per elevation (3 elevations)"
    )
    b.set_defaults(func=_cmd_bench, bench_parser=b)
    for what in bsub.choices.values():
        what.set_defaults(func=_cmd_bench)
    return b
