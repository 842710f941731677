"""The two evaluation protocols (algorithms.md E, decisions.md 19). Each run checks every input
first, then the model references, and only then loads models and computes.

Single-view protocol (Make-It-3D Tab. 1-2, HiFi-123 Tab. 2-3 left half)
    * LPIPS (AlexNet, lpips v0.1) between the reference-view render and the input reference, both
      on white and resized to 256 x 256 (bilinear, antialiased). The papers give no size; 256 is
      our choice, as for the contextual distance.
    * CLIP similarity: cosine between the image embeddings of each novel view and of the reference
      (open_clip ViT-B/16, OpenAI weights, 224 x 224, white background), averaged over the novel
      views. Reported as a fraction (Make-It-3D prints percent: 95.65% = 0.9565).
    * Contextual distance: -log CX between VGG19 relu5_4 features (ImageNet normalisation) of each
      novel view and of the reference at 256 x 256, cosine distance, band width 0.5 (Mechrez et
      al. 2018); averaged over the novel views.
    * Which frame is the reference view and which are novel: see `views.select_reference`.

GSO protocol (SyncDreamer's, HiFi-123 Tab. 2 right half)
    * Predicted and ground-truth views are paired in natural sort order (16 expected), composited
      on white, and resized (bilinear, antialiased) to 256 x 256 when they are another size.
    * PSNR (torchmetrics) and SSIM (ours, border cropped; data range 1) and LPIPS (VGG16, lpips
      v0.1) per view, averaged.
    * With --pred-mesh/--gt-mesh: each mesh is normalised to a unit bounding box (centred, longest
      side 1; --mesh-normalize none keeps the coordinates, e.g. for meshes already aligned in the
      GT frame), then Chamfer distance from points back-projected from 16 rendered depth maps
      (see `geometry`), voxel 0.01, 0.5 * (pred->gt + gt->pred); volume IoU at 64^3. Both meshes
      must already be aligned (SyncDreamer fixes a per-object yaw by hand; we do not guess).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import InputError
from .defaults import DEFAULT_EVAL_MODELS, protocol

PROTOCOL_SINGLE_VIEW = "single-view"
PROTOCOL_GSO = "gso"
#: each protocol's own settings (configs/eval/*.yaml); a run that changes one is reported as such
_SV = protocol(PROTOCOL_SINGLE_VIEW)["settings"]
_GSO = protocol(PROTOCOL_GSO)["settings"]
_GSO_GEOMETRY = protocol(PROTOCOL_GSO)["geometry_settings"]


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in (
        "torch",
        "torchvision",
        "lpips",
        "open_clip_torch",
        "torchmetrics",
        "trimesh",
        "scipy",
        "transformers",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    from .. import __version__

    out["hifi123"] = __version__
    return out


def _to_tensor(imgs: List[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().contiguous()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    from ..core.images import resize

    return resize(x, size, "bilinear").clamp(0, 1)


def _device(device: Optional[str]) -> torch.device:
    from ..commands import resolve_device

    return resolve_device(device)


# ------------------------------------------------------------------------------------ single view


@dataclass
class SingleViewSettings:
    ref: str
    views: str
    ref_view: Optional[str] = None  # frame index or file name; default see views.select_reference
    ref_azimuth: Optional[float] = None  # threestudio sets: default data.default_azimuth_deg or 0
    clip_model: str = DEFAULT_EVAL_MODELS["clip"]
    vgg_model: str = DEFAULT_EVAL_MODELS["vgg19"]
    lpips_model: str = DEFAULT_EVAL_MODELS["lpips"]
    # the protocol's values (configs/eval/single-view.yaml; decisions.md 19)
    lpips_net: str = _SV["lpips_net"]  # alex at the reference view
    lpips_size: int = _SV["lpips_size"]
    cx_size: int = _SV["cx_size"]
    cx_layer: str = _SV["cx_layer"]  # Make-It-3D's training setting
    cx_band_width: float = _SV["cx_band_width"]
    mask_with_opacity: bool = _SV["mask_with_opacity"]  # white outside the opacity panel
    tiny: bool = False
    device: Optional[str] = None


def _report(
    protocol: str, metrics, settings, per_view, diffs: List[str], notes, t0: float
) -> Dict[str, Any]:
    """The result dict every protocol returns (what `report.py` writes as JSON and markdown)."""
    return {
        "protocol": protocol,
        "metrics": metrics,
        "settings": settings,
        "per_view": per_view,
        "protocol_matches": not diffs,
        "protocol_differences": diffs,
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _single_view_differences(s: SingleViewSettings, refs: Dict[str, str]) -> List[str]:
    d = []
    if s.tiny:
        d.append("tiny random metric models (--tiny): numbers are meaningless")
    for key, flag in (
        ("clip", "--clip-model"),
        ("vgg19", "--vgg-model"),
        ("lpips", "--lpips-model"),
    ):
        if not s.tiny and refs[key] != DEFAULT_EVAL_MODELS[key]:
            d.append(f"{flag} {refs[key]} (protocol: {DEFAULT_EVAL_MODELS[key]})")
    for name, want in _SV.items():
        if getattr(s, name) != want:
            d.append(f"{name}={getattr(s, name)} (protocol: {want})")
    return d


def _single_view_settings(
    s: SingleViewSettings, refs, lp, clip, vgg, vs, rule, ref_idx, novel, ref, dev
) -> Dict[str, Any]:
    """Every setting the single-view report prints."""
    settings = {
        "protocol": "single-view (Make-It-3D Sec. 4.2 / HiFi-123 Sec. 4.2; decisions.md 19)",
        "background": "white (RGBA composited with alpha; renders: opacity panel < 0.5 -> white)"
        if s.mask_with_opacity
        else "white (RGBA composited with alpha; renders taken as they are)",
        "lpips": {
            "net": s.lpips_net,
            "version": "0.1 (lpips package heads)",
            "model": refs["lpips"],
            "backbone": getattr(lp, "backbone_kind", "?"),
            "size": s.lpips_size,
            "resize": "bilinear, antialiased",
            "input_range": "[-1, 1]",
            "pair": "reference-view render vs input reference",
        },
        "clip": clip.settings()
        | {
            "similarity": "cosine of L2-normalised image embeddings, novel view vs reference",
            "aggregate": "mean over novel views",
        },
        "contextual": {
            "model": refs["vgg19"],
            "layer": f"{vgg.layer} (features index {vgg.layer_index})",
            "stage_widths": list(vgg.widths),
            "size": s.cx_size,
            "resize": "bilinear, antialiased",
            "normalisation": "ImageNet mean/std",
            "distance": "cosine, centred on the reference features' mean",
            "band_width": s.cx_band_width,
            "eps": 1e-5,
            "value": "-log CX (Mechrez et al. 2018)",
            "direction": "CX(novel view features, reference features)",
            "aggregate": "mean over novel views",
        },
        "reference_view": {
            "rule": rule,
            "index": ref_idx,
            "name": vs.frames[ref_idx].name,
            "azimuth_deg": vs.frames[ref_idx].azimuth,
            "ref_azimuth_arg": s.ref_azimuth,
            "ref_view_arg": s.ref_view,
        },
        "views": {
            "source": vs.source,
            "kind": vs.kind,
            "count": len(vs.frames),
            "novel_count": len(novel),
            "size": list(vs.size),
            "panels_per_frame": vs.panels,
            "rgb_panel": 0,
            "opacity_masked": vs.opacity_masked,
            "lossy": vs.lossy,
            "threestudio_camera": vs.camera,
        },
        "reference_image": {"path": os.path.abspath(s.ref), "size": list(ref.shape[:2])},
        "device": str(dev),
        "tiny": s.tiny,
        "arguments": asdict(s),
        "versions": _versions(),
    }
    return settings


def run_single_view(s: SingleViewSettings) -> Dict[str, Any]:
    from . import models as M
    from .metrics import contextual_distance, cosine_similarity, lpips_distance
    from .views import camera_mismatch_notes, load_reference, load_view_set, select_reference

    t0 = time.perf_counter()
    # 1. options and inputs (no model yet)
    if s.cx_layer not in M.vgg19_layer_names():
        raise InputError(
            f"--cx-layer {s.cx_layer} is not a VGG19 layer",
            ", ".join(M.vgg19_layer_names()),
            "use --cx-layer relu5_4 (the protocol's layer)",
        )
    for flag, v in (("--lpips-size", s.lpips_size), ("--cx-size", s.cx_size)):
        if v < 32:
            raise InputError(
                f"{flag} {v} is too small", "at least 32 pixels (protocol: 256)", f"use {flag} 256"
            )
    if not s.cx_band_width > 0:
        raise InputError(
            f"--cx-band-width {s.cx_band_width}",
            "a positive band width (protocol: 0.5)",
            "use --cx-band-width 0.5",
        )
    ref = load_reference(s.ref)
    vs = load_view_set(s.views, s.mask_with_opacity)
    ref_idx, novel, rule = select_reference(vs, s.ref_view, s.ref_azimuth)
    if not novel:
        raise InputError(
            f"--views {vs.source}: no novel view besides the reference view",
            "at least one view at another azimuth",
            "render more test views",
        )
    # 2. model references
    refs = (
        M.tiny_model_refs()
        if s.tiny
        else {"clip": s.clip_model, "vgg19": s.vgg_model, "lpips": s.lpips_model}
    )
    M.preflight_clip(refs["clip"], "--clip-model")
    M.preflight_vgg19(refs["vgg19"], "--vgg-model")
    M.preflight_lpips(refs["lpips"], s.lpips_net, "--lpips-model")
    # 3. models and metrics
    dev = _device(s.device)
    clip = M.load_clip_embedder(refs["clip"], "--clip-model", dev)
    vgg = M.load_vgg19_features(refs["vgg19"], "--vgg-model", s.cx_layer, dev)
    lp = M.load_lpips(refs["lpips"], s.lpips_net, "--lpips-model", dev)

    ref_t = _to_tensor([ref])
    views_t = _to_tensor([f.rgb for f in vs.frames])
    novel_t = views_t[novel]
    lpips_ref = float(
        lpips_distance(
            lp, _resize(views_t[ref_idx : ref_idx + 1], s.lpips_size), _resize(ref_t, s.lpips_size)
        )[0]
    )
    emb_ref = clip.encode(ref_t)
    emb_novel = clip.encode(novel_t)
    clip_sims = cosine_similarity(emb_novel, emb_ref)
    with torch.no_grad():
        f_ref = vgg(_resize(ref_t, s.cx_size).to(dev)).cpu()
        cx = []
        for i in range(0, len(novel), 8):
            f = vgg(_resize(novel_t[i : i + 8], s.cx_size).to(dev)).cpu()
            cx.append(contextual_distance(f, f_ref.expand(f.shape[0], -1, -1, -1), s.cx_band_width))
        cx = torch.cat(cx)

    diffs = _single_view_differences(s, refs)
    notes = list(vs.notes) + camera_mismatch_notes(vs.camera)
    per_view = []
    for k, i in enumerate(novel):
        per_view.append(
            {
                "index": i,
                "name": vs.frames[i].name,
                "azimuth_deg": vs.frames[i].azimuth,
                "clip": float(clip_sims[k]),
                "contextual": float(cx[k]),
            }
        )
    settings = _single_view_settings(s, refs, lp, clip, vgg, vs, rule, ref_idx, novel, ref, dev)
    metrics = {
        "lpips_ref": lpips_ref,
        "contextual": float(cx.mean()),
        "clip": float(clip_sims.mean()),
    }
    return _report(PROTOCOL_SINGLE_VIEW, metrics, settings, per_view, diffs, notes, t0)


# ------------------------------------------------------------------------------------ GSO


@dataclass
class GSOSettings:
    pred: str
    gt: str
    pred_mesh: Optional[str] = None
    gt_mesh: Optional[str] = None
    # the protocol's values (configs/eval/gso.yaml; decisions.md 19)
    size: int = _GSO["size"]  # SyncDreamer: 256 x 256
    lpips_model: str = DEFAULT_EVAL_MODELS["lpips"]
    lpips_net: str = _GSO["lpips_net"]  # SyncDreamer's evaluation uses LPIPS(VGG)
    chamfer_points: str = _GSO_GEOMETRY["chamfer_points"]  # "surface": area-uniform samples
    depth_views: int = _GSO_GEOMETRY["depth_views"]
    depth_elevation: float = 30.0
    depth_fovy: float = 30.0
    depth_size: int = 256
    surface_samples: int = 100_000
    voxel_size: float = _GSO_GEOMETRY["voxel_size"]
    iou_resolution: int = _GSO_GEOMETRY["iou_resolution"]
    mesh_normalize: str = "unit-bbox"  # or "none"
    up: str = "z"  # "y": rotate y-up meshes to threestudio's z-up before rendering depth
    mask_with_opacity: bool = True
    tiny: bool = False
    device: Optional[str] = None


def load_mesh(path: str, flag: str):
    """(vertices [V,3] float64, faces [F,3] int64, watertight) of a mesh file, validated."""
    if not os.path.isfile(path):
        raise InputError(
            f"{flag} {path} does not exist",
            "a mesh file (.obj, .ply, .glb, .stl, .off)",
            "check the path (threestudio exports meshes with `--export`: "
            "save/it<N>-export/model.obj)",
        )
    try:
        import trimesh

        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # noqa: BLE001 - trimesh raises many types for bad files
        raise InputError(
            f"{flag} {path} could not be read as a mesh ({type(err).__name__}: {err})",
            "a triangle mesh trimesh can read (.obj, .ply, .glb, .stl, .off)",
            "re-export the mesh (e.g. as .obj or .ply)",
        ) from err
    v = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), dtype=np.float64)
    f = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), dtype=np.int64)
    if len(v) == 0 or len(f) == 0 or f.ndim != 2 or f.shape[1] != 3:
        raise InputError(
            f"{flag} {path} has no triangles", "a triangle mesh", "re-export the mesh with faces"
        )
    if not np.isfinite(v).all():
        raise InputError(
            f"{flag} {path} has non-finite vertex coordinates",
            "finite vertices",
            "re-export the mesh",
        )
    if np.ptp(v, axis=0).max() <= 0:
        raise InputError(
            f"{flag} {path} is degenerate (zero extent)", "a mesh with volume", "re-export the mesh"
        )
    return v, f, bool(mesh.is_watertight)


def _gso_inputs(s: GSOSettings):
    """Every option and input of the GSO protocol checked and loaded: (pred names, pred views,
    gt names, gt views, (pred mesh, gt mesh) or None)."""
    from .views import load_image_folder

    for flag, v, lo in (
        ("--size", s.size, 32),
        ("--depth-size", s.depth_size, 16),
        ("--iou-resolution", s.iou_resolution, 8),
        ("--surface-samples", s.surface_samples, 100),
    ):
        if v < lo:
            raise InputError(
                f"{flag} {v} is too small",
                f"at least {lo}",
                f"omit {flag} to use the protocol's value",
            )
    if s.voxel_size < 0:
        raise InputError(
            f"--voxel-size {s.voxel_size} is negative",
            "0 (no down-sampling) or a voxel size (protocol: 0.01)",
            "use --voxel-size 0.01",
        )
    pred_names, pred = load_image_folder(s.pred, "--pred", s.mask_with_opacity)
    gt_names, gt = load_image_folder(s.gt, "--gt", s.mask_with_opacity)
    if len(pred) != len(gt):
        raise InputError(
            f"--pred {s.pred} has {len(pred)} views but --gt {s.gt} has {len(gt)}",
            "one predicted view per ground-truth view (16 in the GSO protocol), paired in sorted "
            "order",
            "render the prediction at the ground truth's cameras",
        )
    for pn, gn, p, g in zip(pred_names, gt_names, pred, gt):
        if p.shape != g.shape:
            raise InputError(
                f"size mismatch: --pred {os.path.join(s.pred, pn)} is {p.shape[1]}x{p.shape[0]} "
                f"but --gt {os.path.join(s.gt, gn)} is {g.shape[1]}x{g.shape[0]}",
                "each predicted view the size of its ground-truth view",
                "render the prediction at the ground truth's resolution (256 x 256 in the GSO "
                "protocol)",
            )
    if bool(s.pred_mesh) != bool(s.gt_mesh):
        missing = "--gt-mesh" if s.pred_mesh else "--pred-mesh"
        raise InputError(
            f"{missing} is missing",
            "both --pred-mesh and --gt-mesh, or neither",
            f"pass {missing} FILE (geometry metrics compare two meshes)",
        )
    for flag, value, allowed in (
        ("--chamfer-points", s.chamfer_points, ("depth", "surface")),
        ("--mesh-normalize", s.mesh_normalize, ("unit-bbox", "none")),
        ("--up", s.up, ("z", "y")),
    ):
        if value not in allowed:
            raise InputError(
                f"{flag} {value} is not an option", " or ".join(allowed), f"use {flag} {allowed[0]}"
            )
    meshes = None
    if s.pred_mesh:
        meshes = (load_mesh(s.pred_mesh, "--pred-mesh"), load_mesh(s.gt_mesh, "--gt-mesh"))
    return pred_names, pred, gt_names, gt, meshes


def _gso_geometry(s: GSOSettings, meshes, notes: List[str]) -> Dict[str, Any]:
    """Chamfer distance and volume IoU of the two meshes (SyncDreamer's eval_mesh), or {}."""
    from .geometry import mesh_metrics, normalize_unit_bbox, y_up_to_z_up

    geometry: Dict[str, Any] = {}
    if meshes:
        (pv, pf, pw), (gv, gf, gw) = meshes
        for w, flag in ((pw, "--pred-mesh"), (gw, "--gt-mesh")):
            if not w:
                notes.append(
                    f"{flag} is not watertight: inside/outside (volume IoU) is a 3-axis parity "
                    "majority vote"
                )
        if s.up == "y":
            pv, gv = y_up_to_z_up(pv), y_up_to_z_up(gv)
        if s.mesh_normalize == "unit-bbox":
            pv, gv = normalize_unit_bbox(pv), normalize_unit_bbox(gv)
        try:
            geometry = mesh_metrics(
                pv,
                pf,
                gv,
                gf,
                points=s.chamfer_points,
                n_views=s.depth_views,
                elevation_deg=s.depth_elevation,
                fovy_deg=s.depth_fovy,
                depth_size=s.depth_size,
                surface_samples=s.surface_samples,
                voxel_size=s.voxel_size,
                iou_resolution=s.iou_resolution,
            )
        except ValueError as err:
            raise InputError(
                f"geometry metrics failed: {err}",
                "two overlapping, non-empty meshes",
                "check --pred-mesh/--gt-mesh (and --mesh-normalize)",
            ) from err
    else:
        notes.append(
            "no meshes given: Chamfer distance and volume IoU not computed (pass --pred-mesh and "
            "--gt-mesh)"
        )
    return geometry


def _gso_settings(
    s: GSOSettings, lp_ref: str, lp, dev, pred, native, meshes, geometry
) -> Dict[str, Any]:
    """Every setting the GSO report prints."""
    settings = {
        "protocol": (
            "GSO (SyncDreamer's eval_nvs / eval_mesh, as used in HiFi-123 Tab. 2; decisions.md 19)"
        ),
        "background": "white (RGBA composited with alpha)",
        "views": {
            "pred": os.path.abspath(s.pred),
            "gt": os.path.abspath(s.gt),
            "count": len(pred),
            "pairing": "natural sort order",
            "native_size": native,
            "size": s.size,
            "resize": "bilinear, antialiased (only when native size differs)",
        },
        "psnr": {
            "implementation": "torchmetrics.functional.image.peak_signal_noise_ratio",
            "data_range": 1.0,
            "aggregate": "mean of per-view values",
        },
        "ssim": {
            "implementation": "hifi123.evaluation.metrics.ssim",
            "data_range": 1.0,
            "kernel": "gaussian 11, sigma 1.5",
            "border": "cropped (valid window positions only)",
            "aggregate": "mean of per-view values",
        },
        "lpips": {
            "net": s.lpips_net,
            "version": "0.1 (lpips package heads)",
            "model": lp_ref,
            "backbone": getattr(lp, "backbone_kind", "?"),
            "input_range": "[-1, 1]",
            "aggregate": "mean of per-view values",
        },
        "device": str(dev),
        "tiny": s.tiny,
        "arguments": asdict(s),
        "versions": _versions(),
    }
    if meshes:
        settings["geometry"] = {
            "pred_mesh": os.path.abspath(s.pred_mesh),
            "gt_mesh": os.path.abspath(s.gt_mesh),
            "up_axis": s.up,
            "normalize": s.mesh_normalize
            + (
                " (each mesh: centred, longest bbox side 1)"
                if s.mesh_normalize == "unit-bbox"
                else ""
            ),
            "chamfer_points": s.chamfer_points,
            "chamfer": {
                "views": s.depth_views,
                "elevation_deg": s.depth_elevation,
                "azimuths_deg": f"0 to 360 step {360 / s.depth_views:g}",
                "fovy_deg": s.depth_fovy,
                "depth_size": s.depth_size,
                "camera": "perspective, looking at the union bbox centre from 1.05 R / sin(fovy/2)",
                "camera_distance": geometry.get("camera_distance"),
            }
            if s.chamfer_points == "depth"
            else {
                "surface_samples_per_mesh": s.surface_samples,
                "sampling": "area-uniform, seeded",
            },
            "voxel_size": s.voxel_size,
            "voxel_downsample": (
                "centroid per occupied voxel, grid anchored at min - voxel/2 (Open3D)"
            ),
            "chamfer_formula": (
                "0.5 * (mean NN dist pred->gt + mean NN dist gt->pred) (scipy cKDTree)"
            ),
            "iou_resolution": s.iou_resolution,
            "iou_grid": (
                "cube around the union bbox, side 1.05 x longest extent, occupancy at cell centres"
            ),
            "inside_test": "ray parity on our rasteriser along x, y, z, majority vote",
            "details": {k: v for k, v in geometry.items() if k not in ("chamfer", "volume_iou")},
        }
    return settings


def run_gso(s: GSOSettings) -> Dict[str, Any]:
    from . import models as M
    from .metrics import lpips_distance, psnr, ssim

    t0 = time.perf_counter()
    # 1. options and inputs
    pred_names, pred, gt_names, gt, meshes = _gso_inputs(s)
    # 2. model reference
    lp_ref = M.tiny_model_refs()["lpips"] if s.tiny else s.lpips_model
    M.preflight_lpips(lp_ref, s.lpips_net, "--lpips-model")
    # 3. image metrics
    dev = _device(s.device)
    lp = M.load_lpips(lp_ref, s.lpips_net, "--lpips-model", dev)
    native = list(pred[0].shape[:2])
    P = _resize(_to_tensor(pred), s.size)
    G = _resize(_to_tensor(gt), s.size)
    v_psnr, v_ssim, v_lpips = psnr(P, G), ssim(P, G), lpips_distance(lp, P, G)
    metrics: Dict[str, Any] = {
        "psnr": float(v_psnr.mean()),
        "ssim": float(v_ssim.mean()),
        "lpips": float(v_lpips.mean()),
    }
    per_view = [
        {"pred": pn, "gt": gn, "psnr": float(a), "ssim": float(b), "lpips": float(c)}
        for pn, gn, a, b, c in zip(pred_names, gt_names, v_psnr, v_ssim, v_lpips)
    ]
    # 4. geometry metrics
    notes: List[str] = []
    geometry = _gso_geometry(s, meshes, notes)
    if geometry:
        metrics["chamfer"], metrics["volume_iou"] = geometry["chamfer"], geometry["volume_iou"]
    # 5. where this run differs from the protocol, and the settings
    diffs = []
    if s.tiny:
        diffs.append("tiny random LPIPS backbone (--tiny): LPIPS is meaningless")
    elif lp_ref != DEFAULT_EVAL_MODELS["lpips"]:
        diffs.append(f"--lpips-model {lp_ref} (protocol: {DEFAULT_EVAL_MODELS['lpips']})")
    if len(pred) != protocol(PROTOCOL_GSO)["views"]:
        diffs.append(f"{len(pred)} views (protocol: {protocol(PROTOCOL_GSO)['views']})")
    for k, want in {**_GSO, **(_GSO_GEOMETRY if meshes else {})}.items():
        if getattr(s, k) != want:
            diffs.append(f"{k}={getattr(s, k)} (protocol: {want})")
    if native != [s.size, s.size]:
        notes.append(
            f"views are {native[1]}x{native[0]}; resized to {s.size}x{s.size} (bilinear, "
            "antialiased)"
        )
    settings = _gso_settings(s, lp_ref, lp, dev, pred, native, meshes, geometry)
    return _report(PROTOCOL_GSO, metrics, settings, per_view, diffs, notes, t0)
