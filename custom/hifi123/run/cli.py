"""The `hifi123 run` subcommand: one photo (or a manifest of photos) to assets.

`add_parser(subparsers)` registers it on the `hifi123` command; `main(argv)` is the stand-alone
entry (`python -m hifi123.run.cli ...`), which the manifest workers use.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from ..errors import Hifi123Error
from . import slurm
from .plan import METHODS, RunOptions, check_loss_overrides, parse_override

EPILOG = """\
stages (each skipped when done; an interrupted training stage resumes from ckpts/last.ckpt):
  preprocess -> coarse -> refine -> export (OBJ/MTL) -> glb [-> ply: Make-It-3D] -> video -> eval
  refine-mesh: preprocess -> align (--mesh to the photo) -> refine -> export -> glb -> video -> eval

outputs (OUT = --out):
  OUT/preprocessed/TAG/            <name>_rgba.png, _depth.png, _normal.png, _caption.txt
  OUT/<config name>/TAG/           the threestudio trials (ckpts/, configs/, save/)
    save/it<N>-export/model.obj    + model.mtl, texture_kd.jpg, model.glb (mesh of the refine stage;
                                   of the coarse NeRF for Make-It-3D)
    save/pointcloud.ply            Make-It-3D refine: coloured point cloud
    save/it<N>-test.mp4            360-degree video
    save/eval/single_view.json     evaluation report (+ .md)
  OUT/logs/TAG/  OUT/runs/TAG.<variant>.json  OUT/summary-<variant>.md|json (manifest mode)
  OUT/report/index.html            the HTML report of everything above (--no-report: none)

examples:
  hifi123 run photo.jpg                                # HiFi-123 on GPU 0
  hifi123 run photo.jpg --method makeit3d --lowvram --dry-run
  hifi123 run photo.jpg --gpu 0,1                      # one object on two GPUs (Lightning DDP)
  hifi123 run photo.jpg --method refine-mesh --mesh triposr.obj   # refine a mesh you already have
  hifi123 run photo.jpg --set trainer.max_steps=2000 --set refine:system.loss.lambda_rgb=500
  hifi123 run --manifest images.txt --gpus 0,1,2,3     # one worker per GPU, round-robin
  hifi123 run --manifest images.txt --backend slurm --partition gpu --time 04:00:00
                                                       # one Slurm array job, one task per image
  hifi123 run --manifest images.txt --status           # the summary table now (either backend)
"""

_GPU_SPEC = re.compile(r"^\d+(,\d+)*$")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help=(
            "one command from a photo to an asset: preprocess, coarse, refine, export, video, "
            "evaluation"
        ),
        description="Run the whole pipeline through threestudio's launch.py, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image",
        nargs="?",
        metavar="IMAGE",
        help="the photo (any image; cut out and captioned by preprocess)",
    )
    p.add_argument(
        "--manifest",
        default=None,
        help="a text file with one image path per line (instead of IMAGE)",
    )
    p.add_argument(
        "--method",
        choices=sorted(METHODS),
        default="hifi123",
        help="hifi123 (default), makeit3d, or refine-mesh (HiFi-123's refine on --mesh)",
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="refine-mesh: your mesh (OBJ/GLB/PLY from TripoSR, SF3D, InstantMesh, "
        "TRELLIS, Hunyuan3D, ...)",
    )
    p.add_argument(
        "--pose",
        default=None,
        help="refine-mesh: the mesh's pose by hand, as `hifi123 align-mesh --pose`",
    )
    p.add_argument("--out", default="outputs", help="output root (default ./outputs)")
    p.add_argument(
        "--gpu",
        default=None,
        help="GPU id(s) for one image, launch.py style: 0 (default) or 0,1 (DDP)",
    )
    p.add_argument(
        "--gpus",
        default=None,
        help="with --manifest: one worker per GPU id, e.g. 0,1,2,3 (default 0)",
    )
    p.add_argument("--lowvram", action="store_true", help="use the -lowvram configs")
    p.add_argument(
        "--threestudio-root",
        default=None,
        help="threestudio checkout (default: $THREESTUDIO_ROOT, ./threestudio, <repo>/threestudio)",
    )
    p.add_argument(
        "--prompt", default=None, help="use this caption instead of BLIP-2's (one image only)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="[STAGE:]KEY=VALUE",
        help="threestudio override for both training stages, or for one stage with a prefix "
        "(coarse:, refine:, export:, video:); repeatable; a system.loss.* weight must exist in "
        "every stage it reaches",
    )
    p.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="stage output only to the log files")
    p.add_argument(
        "--no-report",
        action="store_true",
        help="no OUT/report/index.html at the end (hifi123 report OUT writes it later)",
    )
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    slurm.add_arguments(p)  # --backend slurm, its options, --status
    p.set_defaults(func=run)
    return p


def _bad(what: str, expected: str, fix: str = "see `hifi123 run --help`") -> Hifi123Error:
    return Hifi123Error(what, expected, fix)


def options_from_args(args) -> RunOptions:
    from .runner import find_threestudio_root

    if bool(args.image) == bool(args.manifest):
        raise _bad(
            "give either IMAGE or --manifest FILE" + (" (not both)" if args.image else ""),
            "hifi123 run IMAGE ... or hifi123 run --manifest images.txt --gpus 0,1 ...",
        )
    if args.manifest and args.gpu:
        raise _bad(
            "--gpu is for one image",
            "--gpus 0,1,... with --manifest (one worker per GPU)",
            f"hifi123 run --manifest {args.manifest} --gpus {args.gpu}",
        )
    if args.image and args.gpus:
        raise _bad(
            "--gpus is for --manifest",
            "--gpu 0 (or --gpu 0,1 for DDP on one object) with IMAGE",
            f"hifi123 run {args.image} --gpu {args.gpus}",
        )
    if args.manifest and args.prompt is not None:
        raise _bad(
            "--prompt with --manifest would caption every image the same",
            "--prompt with one IMAGE",
            "drop --prompt (each image gets its BLIP-2 caption)",
        )
    for flag, value in (("--gpu", args.gpu), ("--gpus", args.gpus)):
        if value is not None and not _GPU_SPEC.match(value):
            raise _bad(f"bad {flag} {value!r}", "GPU ids separated by commas, e.g. 0 or 0,1,2,3")
    if args.gpus and len(set(args.gpus.split(","))) != len(args.gpus.split(",")):
        raise _bad(f"--gpus {args.gpus} repeats a GPU", "each GPU once (one worker per GPU)")
    if args.gpu and len(set(args.gpu.split(","))) != len(args.gpu.split(",")):
        raise _bad(f"--gpu {args.gpu} repeats a GPU", "each GPU once (one DDP process per GPU)")
    overrides = []
    for text in args.overrides:
        try:
            overrides.append(parse_override(text))
        except ValueError as err:
            raise _bad(
                f"bad --set: {err}", "KEY=VALUE (both training stages) or STAGE:KEY=VALUE"
            ) from err
    if args.prompt is not None and not args.prompt.strip():
        raise _bad("--prompt is empty", "a caption such as 'a ceramic owl'")
    _check_mesh_args(args, overrides)
    out = os.path.abspath(os.path.expanduser(args.out))
    status = getattr(args, "status", False)  # --status only reads the outputs
    if os.path.exists(out) and not os.path.isdir(out):
        raise _bad(
            f"--out {out} is a file",
            "the output folder (created if missing)",
            "pass another --out DIR",
        )
    check_loss_overrides(args.method, args.lowvram, overrides)
    # a real run writes there: prove it can before anything starts
    if not args.dry_run and not status:
        from ..outputs import check_output_dir

        check_output_dir(out, "--out")
    root = "" if status else find_threestudio_root(args.threestudio_root)
    image = os.path.abspath(os.path.expanduser(args.image)) if args.image else ""
    mesh = os.path.abspath(os.path.expanduser(args.mesh)) if args.mesh else None
    return RunOptions(
        image=image,
        method=args.method,
        out=out,
        gpu=args.gpu or "0",
        lowvram=args.lowvram,
        threestudio_root=root,
        python=sys.executable,
        prompt=args.prompt,
        overrides=tuple(overrides),
        mesh=mesh,
        pose=args.pose,
    )


def _check_mesh_args(args, overrides=()) -> None:
    """--mesh / --pose belong to the refine-mesh method (one image, no coarse stage)."""
    aligns = METHODS[args.method].aligns_mesh
    if aligns and any(stage == "coarse" for stage, _ in overrides):
        raise _bad(
            "--set coarse:... with --method refine-mesh, which has no coarse stage",
            "--set refine:KEY=VALUE (or export:, video:)",
            "drop the coarse: options",
        )
    for flag, value in (("--mesh", args.mesh), ("--pose", args.pose)):
        if value is not None and not aligns:
            raise _bad(
                f"{flag} is for --method refine-mesh (got --method {args.method})",
                "--method refine-mesh --mesh MESH",
                f"add --method refine-mesh, or drop {flag}",
            )
    if aligns and args.manifest:
        raise _bad(
            "--method refine-mesh takes one IMAGE and its --mesh",
            "hifi123 run IMAGE --method refine-mesh --mesh MESH",
            "run each photo with its own mesh",
        )
    if aligns and not args.mesh:
        raise _bad(
            "--method refine-mesh needs --mesh",
            "the mesh to refine (OBJ, GLB, PLY, ...)",
            f"hifi123 run {args.image or 'IMAGE'} --method refine-mesh --mesh MESH",
        )
    if args.pose:
        from ..core.mesh_align import parse_pose

        parse_pose(args.pose)  # a malformed --pose stops here, before any stage


def run(args) -> int:
    sopts = slurm.options_from_args(args)  # --backend and its options: checked first
    opts = options_from_args(args)
    # the HTML report ends every real run, failed ones too (not dry runs, not --status, not the
    # manifest workers)
    if args.dry_run or args.no_report or args.status or args.worker is not None:
        return _run(args, opts, sopts)
    from ..report import report_after_run

    try:
        code = _run(args, opts, sopts)
    except KeyboardInterrupt:
        raise
    except BaseException:
        report_after_run(opts.out)
        raise
    report_after_run(opts.out)
    return code


def _run(args, opts: RunOptions, sopts) -> int:
    if args.status:
        return slurm.print_status(args.manifest, opts)
    if sopts is not None:
        return slurm.submit_manifest(args.manifest, opts, sopts, dry_run=args.dry_run)
    if args.manifest:
        from .manifest import run_manifest

        return run_manifest(
            args.manifest,
            opts,
            (args.gpus or "0").split(","),
            dry_run=args.dry_run,
            worker=args.worker,
        )
    from .runner import run_image

    run_image(opts, dry_run=args.dry_run, echo=not args.quiet)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Stand-alone entry (`python -m hifi123.run.cli ...`): `hifi123 run ...`."""
    from ..commands import standalone

    return standalone("run", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
