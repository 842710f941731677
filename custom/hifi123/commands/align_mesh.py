"""`hifi123 align-mesh`: put a feed-forward mesh where the reference camera sees the photo's
object (decision 31), for `configs/refine-mesh.yaml`."""

from __future__ import annotations

import argparse
import os
from typing import Dict, Optional

from . import real

DEPTH_SUFFIX = "_depth.png"


def sibling_depth(ref: str) -> Optional[str]:
    """`<name>_depth.png` next to `<name>_rgba.png` (what `hifi123 preprocess` writes), if any."""
    base = ref[: -len("_rgba.png")] if ref.endswith("_rgba.png") else os.path.splitext(ref)[0]
    path = base + DEPTH_SUFFIX
    return path if os.path.isfile(path) else None


def align_files(
    mesh_path: str,
    ref_path: str,
    out_dir: str,
    *,
    depth_path: Optional[str] = "auto",
    elevation: Optional[float] = None,
    pose: Optional[str] = None,
    min_iou: float = 0.85,
    overwrite: bool = False,
    log=print,
) -> Dict[str, object]:
    """Check every input, align, write aligned_mesh.ply / alignment.json / alignment_overlay.png
    into `out_dir`; refuse a poor fit (after writing the json and the overlay, without the mesh).
    `depth_path`: "auto" = the `<name>_depth.png` next to the reference when it exists; None =
    silhouette only. Returns the alignment record."""
    import numpy as np

    from ..core import mesh_align as MA
    from ..core.images import load_depth, load_rgba
    from ..errors import InputError
    from ..outputs import check_output_dir, check_outputs
    from ..preprocess.pipeline import file_sha256

    # 1. every input checked, every output path cleared, before any work
    rgba = load_rgba(ref_path, role="--ref image")
    mask = rgba[..., 3] > 0.5
    if depth_path == "auto":
        depth_path = sibling_depth(ref_path)
    disparity = load_depth(depth_path, mask.shape, role="--depth map") if depth_path else None
    fixed = MA.parse_pose(pose) if pose else None
    mesh = MA.load_mesh(mesh_path)
    out_dir = check_output_dir(out_dir)
    outputs = [(f"the {n}", os.path.join(out_dir, n)) for n in MA.OUTPUT_FILES]
    check_outputs(
        outputs,
        [("the mesh", mesh_path), ("--ref", ref_path), ("--depth", depth_path)],
        "hifi123 align-mesh",
    )
    taken = [p for _, p in outputs if os.path.exists(p)]
    if taken and not overwrite:
        raise InputError(
            f"hifi123 align-mesh: {', '.join(taken)} already exist(s)",
            "an output folder without an earlier alignment",
            "pass another --out (or --overwrite to replace that alignment)",
        )
    # 2. the fit
    log(
        f"hifi123 align-mesh: {mesh_path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} "
        f"triangles; reference mask {ref_path}" + (f", depth {depth_path}" if depth_path else "")
    )
    result = MA.align_mesh(
        np.asarray(mesh.vertices),
        np.asarray(mesh.faces),
        mask,
        disparity,
        elevation_deg=elevation,
        fixed=fixed,
    )
    p = result.pose
    log(
        f"hifi123 align-mesh: up {p.up}, front {p.front}, yaw {p.yaw:.1f} deg, "
        f"scale {p.scale:.4g}, "
        f"elevation {p.elevation:.1f} deg ({'fitted' if result.elevation_fitted else 'given'}): "
        f"silhouette IoU {result.iou:.4f}"
        + (
            f", disparity correlation {result.depth_correlation:.3f}"
            if result.depth_correlation is not None
            else ""
        )
        + f" ({result.seconds:.1f} s)"
    )
    meta = {
        "mesh": os.path.abspath(mesh_path),
        "reference": os.path.abspath(ref_path),
        "depth": os.path.abspath(depth_path) if depth_path else None,
        "min_iou": min_iou,
        "mesh_sha256": file_sha256(mesh_path),  # `hifi123 run` redoes the alignment when it changes
        "pose_option": pose,
    }
    accepted = result.by_hand or result.iou >= min_iou
    meta["accepted"] = accepted
    paths = MA.write_outputs(result, mesh, mask, out_dir, meta, overwrite=True, with_mesh=accepted)
    if not accepted:
        log(
            f"hifi123 align-mesh: see {paths[MA.ALIGNMENT_OVERLAY]} (green: both, red: mask only, "
            "blue: mesh only)"
        )
    MA.check_alignment(result, mesh_path, ref_path, min_iou)
    if result.by_hand and result.iou < min_iou:
        log(
            f"hifi123 align-mesh: warning: the pose given by hand reaches IoU {result.iou:.3f} "
            f"< {min_iou:.2f}; check {paths[MA.ALIGNMENT_OVERLAY]}"
        )
    log(
        f"hifi123 align-mesh: wrote {paths[MA.ALIGNED_MESH]} (world frame of refine-mesh.yaml), "
        f"{paths[MA.ALIGNMENT_JSON]}, {paths[MA.ALIGNMENT_OVERLAY]}"
    )
    return {**meta, **result.to_dict(), "paths": paths}


def _cmd(args) -> int:
    align_files(
        args.mesh,
        args.ref,
        args.out,
        depth_path=None if args.no_depth else (args.depth or "auto"),
        elevation=args.elevation,
        pose=args.pose,
        min_iou=args.min_iou,
        overwrite=args.overwrite,
    )
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "align-mesh",
        help="fit a mesh (TripoSR, SF3D, InstantMesh, TRELLIS, Hunyuan3D ...) to the "
        "reference photo",
        description="Find the rotation (any of the 24 axis conventions and a yaw), scale, "
        "offset and "
        "reference elevation that make the mesh's silhouette cover the photo's mask from the "
        "reference camera of refine.yaml, and write the mesh in that frame (decision 31).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("mesh", help="the mesh (OBJ, GLB, PLY, ... as trimesh reads them)")
    p.add_argument(
        "--ref", required=True, help="the reference <name>_rgba.png (its alpha is the mask)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="folder for aligned_mesh.ply, alignment.json, alignment_overlay.png",
    )
    p.add_argument(
        "--depth",
        default=None,
        help="reference disparity (near = bright); default: <name>_depth.png next to --ref "
        "if it exists",
    )
    p.add_argument(
        "--no-depth", action="store_true", help="silhouette only, even if a depth map exists"
    )
    p.add_argument(
        "--elevation",
        type=real(-89.0, 89.0),
        default=None,
        help="the photo's elevation in degrees, if known (default: fitted)",
    )
    p.add_argument(
        "--pose",
        default=None,
        help="pose by hand, any subset of up=+y,front=+z,yaw=DEG,scale=S,u=U,v=V,elevation=DEG "
        "(the rest is fitted; never refused), or an alignment.json",
    )
    p.add_argument(
        "--min-iou",
        type=real(0.0, 1.0),
        default=0.85,
        help="refuse a fit below this silhouette IoU",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier alignment in --out")
    p.set_defaults(func=_cmd)
