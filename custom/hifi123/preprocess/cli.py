"""The `hifi123 preprocess` subcommand. `add_parser(subparsers)` registers it on the `hifi123`
command's subparsers and sets `func`; `run(args)` returns the exit code (0 ok, 2 when a file in a
folder failed). Single-input errors are raised as `Hifi123Error` for `hifi123.commands.dispatch` to
print.
"""

from __future__ import annotations

import argparse
import sys

from ..commands import device, integer, real

EPILOG = """\
outputs (in --out, default <input folder>/preprocessed):
  <name>_rgba.png  <name>_depth.png  <name>_normal.png  <name>_caption.txt  <name>_sheet.png
  <name>_preprocess.json (settings; outputs newer than the input with the same settings are skipped)

threestudio:  data.image_path=<out>/<name>_rgba.png  data.default_fovy_deg=<--fovy>
              data.default_elevation_deg=<--elevation>  data.default_azimuth_deg=<--azimuth>
              and the caption as the prompt.

examples:
  hifi123 preprocess photo.jpg                       # segment, depth (DPT), normals, BLIP-2 caption
  hifi123 preprocess cutout.png --caption "a teapot"  # keeps cutout.png's alpha, no captioner
  hifi123 preprocess photos/ --out prepped/ --size 256
  hifi123 preprocess photo.jpg --tiny                # offline smoke run, tiny random models
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "preprocess",
        help="photo(s) -> threestudio inputs: cut-out, recentred RGBA, depth, normals, caption",
        description=(
            "Turn a photo (or every image in a folder) into threestudio's single-image inputs."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "input", metavar="IMAGE_OR_DIR", help="an image file, or a folder of images (not recursive)"
    )
    p.add_argument(
        "--out", default=None, help="output folder (default: <input folder>/preprocessed)"
    )
    p.add_argument(
        "--size", type=integer(16), default=512, help="output side in pixels (default 512)"
    )
    p.add_argument(
        "--border-ratio",
        type=real(0.0, 0.9),
        default=0.2,
        help="empty border on each side, as a fraction of the side; the object's longer side "
        "spans (1 - 2 * ratio) (default 0.2)",
    )
    cap = p.add_mutually_exclusive_group()
    cap.add_argument(
        "--caption",
        default=None,
        help=(
            "the caption to write (no captioning model loads; the same for every image of a folder)"
        ),
    )
    cap.add_argument("--no-caption", action="store_true", help="write no caption file")
    p.add_argument(
        "--caption-model",
        default=None,
        help="BLIP-2 hub id or local folder (default Salesforce/blip2-opt-2.7b)",
    )
    p.add_argument(
        "--seg-model",
        default=None,
        help="segmentation model for photos without alpha: CLIPSeg or a semantic-segmentation "
        "head, hub id or local folder (default CIDAS/clipseg-rd64-refined)",
    )
    p.add_argument(
        "--seg-prompt", default="an object", help="CLIPSeg text prompt (default 'an object')"
    )
    p.add_argument(
        "--seg-threshold",
        type=real(0.0, 1.0),
        default=0.5,
        help="foreground probability threshold (default 0.5)",
    )
    p.add_argument(
        "--foreground-labels",
        nargs="+",
        default=(),
        help="semantic-segmentation labels (names or ids) that make up the object "
        "(default: every label except 'background')",
    )
    p.add_argument(
        "--ignore-alpha",
        action="store_true",
        help="segment even when the input has an alpha channel",
    )
    p.add_argument(
        "--depth-model",
        default=None,
        help="DPT hub id or local folder (default Intel/dpt-hybrid-midas)",
    )
    p.add_argument(
        "--fovy",
        type=real(1.0, 179.0),
        default=20.0,
        help="reference camera's vertical field of view in degrees, for the normals (default 20)",
    )
    p.add_argument(
        "--elevation",
        type=real(-90.0, 90.0),
        default=0.0,
        help="reference camera elevation in degrees (default 0)",
    )
    p.add_argument(
        "--azimuth",
        type=real(-360.0, 360.0),
        default=0.0,
        help="reference camera azimuth in degrees (default 0)",
    )
    p.add_argument(
        "--relief",
        type=real(0.0, 10.0, low_open=True),
        default=0.5,
        help=(
            "assumed depth range of the object / its largest extent, for normals from DPT "
            "(default 0.5)"
        ),
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="use tiny random offline models (smoke test: masks, depth and caption are noise)",
    )
    p.add_argument("--force", action="store_true", help="redo inputs whose outputs are up to date")
    p.add_argument(
        "--device",
        type=device,
        default=None,
        help="torch device (default: cuda when available, else cpu)",
    )
    p.add_argument("--fp16", action="store_true", help="half precision on CUDA")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-file messages")
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    from .pipeline import PreprocessConfig

    return PreprocessConfig(
        size=args.size,
        border_ratio=args.border_ratio,
        caption=args.caption,
        no_caption=args.no_caption,
        caption_model=args.caption_model,
        seg_model=args.seg_model,
        seg_prompt=args.seg_prompt,
        seg_threshold=args.seg_threshold,
        foreground_labels=tuple(args.foreground_labels),
        ignore_alpha=args.ignore_alpha,
        depth_model=args.depth_model,
        fovy_deg=args.fovy,
        elevation_deg=args.elevation,
        azimuth_deg=args.azimuth,
        relief=args.relief,
        tiny=args.tiny,
        device=args.device,
        fp16=args.fp16,
    )


def run(args) -> int:
    from .pipeline import preprocess

    summary = preprocess(
        args.input, args.out, config_from_args(args), force=args.force, quiet=args.quiet
    )
    n_done, n_skip, n_fail = len(summary.done), len(summary.skipped), len(summary.failed)
    print(
        f"preprocess: {n_done} written, {n_skip} up to date, {n_fail} failed -> {summary.out_dir}"
    )
    if summary.done:
        first = summary.done[0].paths.rgba
        print(
            f"threestudio: data.image_path={first} data.default_fovy_deg={args.fovy} "
            f"data.default_elevation_deg={args.elevation} data.default_azimuth_deg={args.azimuth}"
        )
    for path, err in summary.failed:
        print(f"hifi123: error: {path}:\n{err.render()}", file=sys.stderr)
    return 2 if summary.failed else 0


def main(argv=None) -> int:
    """Stand-alone entry (`python -m hifi123.preprocess.cli ...`): `hifi123 preprocess ...`."""
    from ..commands import standalone

    return standalone("preprocess", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
