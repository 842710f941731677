"""`hifi123 eval`: both papers' evaluation protocols in one command.

    hifi123 eval single-view --ref REF_RGBA --views TRIAL_DIR|FOLDER|VIDEO [--ref-view I|FILE]
                             [--ref-azimuth DEG] [--out report.json] [--tiny] [model/size options]
    hifi123 eval gso --pred DIR --gt DIR [--pred-mesh M --gt-mesh M] [--out report.json] [--tiny]

The markdown report is printed; with --out the JSON is written there and the markdown next to it
(same name, .md). Inputs are checked before any model loads; user errors exit with code 2.
Wire it into the main parser with ``add_parser(sub)``.
"""

from __future__ import annotations

import argparse
import os

from ..commands import device, integer, real
from ..errors import InputError
from .defaults import DEFAULT_EVAL_MODELS


def _input_files(flag: str, path):
    """(flag, file) for an input file, or for every file under an input folder."""
    if not path:
        return []
    if os.path.isdir(path):
        return [
            (f"{flag} {os.path.join(d, n)}", os.path.join(d, n))
            for d, _, names in os.walk(path)
            for n in names
        ]
    return [(flag, path)]


def _check_out(path, inputs=()):
    """The report paths (`--out` and the .md next to it) are checked before any model loads: a
    writable file location that is none of the inputs (`inputs`: (flag, path) pairs)."""
    if not path:
        return None
    out = os.path.abspath(os.path.expanduser(path))
    from ..outputs import check_output_dir, check_outputs

    files = [f for flag, p in inputs for f in _input_files(flag, p)]
    check_outputs(
        [
            ("the JSON report (--out)", out),
            ("the markdown report", os.path.splitext(out)[0] + ".md"),
        ],
        files,
        "hifi123 eval",
    )
    folder = os.path.dirname(out)
    if os.path.isdir(out):
        raise InputError(
            f"--out {path} is a directory",
            "a file path for the JSON report, e.g. report.json",
            f"pass --out {os.path.join(path, 'report.json')}",
        )
    check_output_dir(folder, "--out")
    return out


def _finish(report, args) -> int:
    from .report import attach_papers, to_markdown, write_report

    attach_papers(report)
    print(to_markdown(report))
    if args.out:
        j, md = write_report(report, args.out)
        print(f"wrote {j}\nwrote {md}")
    return 0


def _settings(cls, args):
    """A protocol's settings dataclass from the parsed arguments of the same names; the one flag
    that is a negation, --keep-background, sets `mask_with_opacity`. A field without an option
    keeps its default."""
    import dataclasses

    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if f.name != "mask_with_opacity" and hasattr(args, f.name)
    }
    return cls(**given, mask_with_opacity=not args.keep_background)


def _cmd_single_view(args) -> int:
    from .protocols import SingleViewSettings, run_single_view

    _check_out(args.out, [("--ref", args.ref), ("--views", args.views)])
    s = _settings(SingleViewSettings, args)
    return _finish(run_single_view(s), args)


def _cmd_gso(args) -> int:
    from .protocols import GSOSettings, run_gso

    _check_out(
        args.out,
        [
            ("--pred", args.pred),
            ("--gt", args.gt),
            ("--pred-mesh", args.pred_mesh),
            ("--gt-mesh", args.gt_mesh),
        ],
    )
    s = _settings(GSOSettings, args)
    return _finish(run_gso(s), args)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default=None, help="write the JSON report here (and the markdown next to it, .md)"
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="tiny random metric models (offline smoke run; the numbers are meaningless)",
    )
    p.add_argument(
        "--lpips-model",
        default=DEFAULT_EVAL_MODELS["lpips"],
        help=(
            "LPIPS backbone: `torchvision` (torch hub cache) or a folder with the torchvision "
            "checkpoint"
        ),
    )
    p.add_argument(
        "--keep-background",
        action="store_true",
        help="do not whiten pixels outside the opacity panel of threestudio frames",
    )
    p.add_argument(
        "--device", type=device, default=None, help="cpu, cuda, ... (default: cuda when available)"
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `eval` with its `single-view` and `gso` sub-commands to the main parser's subparsers."""
    e = subparsers.add_parser(
        "eval", help="evaluation: single-view (Make-It-3D/HiFi-123) and GSO (SyncDreamer) protocols"
    )
    esub = e.add_subparsers(dest="eval_protocol", metavar="PROTOCOL")
    e.set_defaults(func=lambda args: (e.print_help(), 1)[1])

    s = esub.add_parser(
        "single-view",
        help="LPIPS at the reference view; CLIP and contextual distance of novel views",
    )
    s.add_argument("--ref", required=True, help="the input reference image (RGBA)")
    s.add_argument(
        "--views",
        required=True,
        help=(
            "a threestudio trial directory (its save/it<N>-test renders), a folder of images or "
            "a video"
        ),
    )
    s.add_argument(
        "--ref-view",
        default=None,
        help="the reference-view render: a frame index, a file name in the set, or an image file "
        "(default: the threestudio frame at --ref-azimuth; else the first image)",
    )
    s.add_argument(
        "--ref-azimuth",
        type=real(-360.0, 360.0),
        default=None,
        help="reference azimuth of a threestudio trial (default: data.default_azimuth_deg from "
        "configs/parsed.yaml, else 0)",
    )
    s.add_argument(
        "--clip-model",
        default=DEFAULT_EVAL_MODELS["clip"],
        help=(
            "open_clip:NAME/TAG, hf-hub:ORG/REPO, an open_clip folder, or a transformers CLIP "
            "id/folder"
        ),
    )
    s.add_argument(
        "--vgg-model",
        default=DEFAULT_EVAL_MODELS["vgg19"],
        help="VGG19 for the contextual distance: hub id / folder in timm layout, or `torchvision`",
    )
    s.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"])
    s.add_argument("--lpips-size", type=integer(32), default=256)
    s.add_argument(
        "--cx-size", type=integer(32), default=256, help="image size for the contextual distance"
    )
    s.add_argument("--cx-layer", default="relu5_4", help="VGG19 layer for the contextual distance")
    s.add_argument("--cx-band-width", type=real(0.0, low_open=True), default=0.5)
    _common(s)
    s.set_defaults(func=_cmd_single_view)

    g = esub.add_parser(
        "gso", help="PSNR/SSIM/LPIPS over 16 views; Chamfer distance and volume IoU of meshes"
    )
    g.add_argument(
        "--pred", required=True, help="folder of predicted views (paired with --gt in sorted order)"
    )
    g.add_argument("--gt", required=True, help="folder of ground-truth views")
    g.add_argument("--pred-mesh", default=None, help="predicted mesh (.obj/.ply/.glb)")
    g.add_argument("--gt-mesh", default=None, help="ground-truth mesh")
    g.add_argument(
        "--size", type=integer(32), default=256, help="evaluation image size (protocol: 256)"
    )
    g.add_argument("--lpips-net", default="vgg", choices=["alex", "vgg"])
    g.add_argument(
        "--chamfer-points",
        default="depth",
        choices=["depth", "surface"],
        help="points from 16 rendered depth maps (protocol) or area-uniform surface samples",
    )
    g.add_argument(
        "--depth-size", type=integer(16), default=256, help="depth map size for the Chamfer points"
    )
    g.add_argument("--surface-samples", type=integer(100), default=100_000)
    g.add_argument("--voxel-size", type=real(0.0, low_open=True), default=0.01)
    g.add_argument("--iou-resolution", type=integer(8), default=64)
    g.add_argument(
        "--mesh-normalize",
        default="unit-bbox",
        choices=["unit-bbox", "none"],
        help="unit-bbox: centre each mesh and scale its longest side to 1; none: keep coordinates",
    )
    g.add_argument("--up", default="z", choices=["z", "y"], help="up axis of both meshes")
    _common(g)
    g.set_defaults(func=_cmd_gso)
    return e
