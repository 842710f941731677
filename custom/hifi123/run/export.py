"""Asset exports beside threestudio's mesh exporter: GLB from its OBJ/MTL, and the coloured PLY of
Make-It-3D's point cloud.

    obj_to_glb(obj_path, glb_path=None)        OBJ + MTL + texture (threestudio `mesh-exporter`,
                                               fmt obj-mtl) -> binary glTF with the same texture
    write_ply(path, positions, colours)        binary little-endian PLY: float x y z, uchar r g b
    read_ply(path) -> (positions, colours)     our PLYs and any ascii / binary vertex-first PLY
    checkpoint_to_ply(ckpt, ply)               the point cloud of a Lightning checkpoint -> PLY

Axes: threestudio's world is z-up with the reference camera on +x ("front"); glTF is y-up and
viewers look at the +z side first. The GLB is therefore written in glTF axes (x, y, z)_gltf =
(y, z, x)_threestudio, a rotation (no mirroring, winding kept), so the asset stands upright and
shows the photographed side. `axes="keep"` keeps threestudio's coordinates. The OBJ and the PLY
keep threestudio's coordinates.

Material: the OBJ's diffuse texture (`map_Kd`, threestudio's albedo) becomes the glTF base colour
texture, embedded as PNG (the decoded pixels exactly; re-encoding the JPEG would lose detail a
second time), with metallic 0 and roughness 1 (glTF's defaults would make the albedo look metallic).
Vertex colours (mesh-exporter fmt obj) are kept.

Command line (used by `hifi123 run`):
    python -m hifi123.run.export glb TRIAL_DIR|MODEL.obj [--out MODEL.glb]
    python -m hifi123.run.export ply CKPT|NPZ --out POINTS.ply [--position-key K] [--colour-key K]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..core.makeit3d.point_export import (
    atomic_write_bytes,
    colors_to_uint8,
    write_ply,  # noqa: F401
)
from ..core.makeit3d.point_export import read_ply as _read_ply
from ..errors import Hifi123Error, InputError

#: threestudio (x front, y, z up) -> glTF (x, y up, z towards the default viewer)
THREESTUDIO_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

_MAP_KEYS = ("map_kd", "map_ks", "map_bump", "bump", "map_pm", "map_pr", "map_ka", "norm")


# ------------------------------------------------------------------------------------ helpers


_atomic_write_bytes = atomic_write_bytes


def _obj_references(obj_path: str) -> List[Tuple[str, str]]:
    """(kind, path) of the MTL files an OBJ names and of the textures those MTLs name."""
    folder = os.path.dirname(os.path.abspath(obj_path))
    refs: List[Tuple[str, str]] = []
    with open(obj_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("mtllib"):
                name = line[len("mtllib") :].strip()
                if name:
                    refs.append(("material library", os.path.join(folder, name)))
    for kind, mtl in list(refs):
        if not os.path.isfile(mtl):
            continue
        mfolder = os.path.dirname(mtl)
        with open(mtl, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.strip().split()
                if parts and parts[0].lower() in _MAP_KEYS and len(parts) > 1:
                    refs.append(
                        (
                            f"texture ({parts[0]} in {os.path.basename(mtl)})",
                            os.path.join(mfolder, parts[-1]),
                        )
                    )
    return refs


def check_obj(obj_path: str) -> None:
    """Raise InputError when the OBJ or a file it references is missing."""
    if not os.path.isfile(obj_path):
        raise InputError(
            f"mesh {obj_path} not found",
            "an OBJ written by threestudio's mesh-exporter",
            "export the trial first: python launch.py --config <trial>/configs/parsed.yaml "
            "--export --gpu 0 resume=<trial>/ckpts/last.ckpt system.exporter_type=mesh-exporter",
        )
    for kind, path in _obj_references(obj_path):
        if not os.path.isfile(path):
            raise InputError(
                f"{os.path.basename(obj_path)}: its {kind} {path} is missing",
                "the OBJ, its .mtl and its textures together in one folder, as the exporter "
                "wrote them",
                "copy the whole export folder (model.obj, model.mtl, texture_*.jpg), or re-run "
                "the export",
            )


def find_exported_obj(trial: str) -> str:
    """The newest `save/it<N>-export/model.obj` of a threestudio trial folder."""
    hits = glob.glob(os.path.join(glob.escape(trial), "save", "it*-export", "model.obj"))
    if not hits:
        raise InputError(
            f"{trial} has no exported mesh (save/it<N>-export/model.obj)",
            "a trial exported with threestudio's mesh-exporter",
            f"python launch.py --config {trial}/configs/parsed.yaml --export --gpu 0 "
            f"resume={trial}/ckpts/last.ckpt system.exporter_type=mesh-exporter",
        )

    def step(p):
        m = re.search(r"it(\d+)-export", p)
        return int(m.group(1)) if m else -1

    return max(hits, key=step)


# ---------------------------------------------------------------------------------------- GLB


def _material_for_glb(visual):
    """PBR material for a TextureVisuals: the diffuse texture as base colour, metallic 0, roughness
    1."""
    from trimesh.visual.material import PBRMaterial

    mat = getattr(visual, "material", None)
    image = getattr(mat, "image", None)
    if image is None:
        image = getattr(mat, "baseColorTexture", None)
    if image is not None:
        # a copy has no `format`, so trimesh embeds it as PNG: lossless. (It would re-encode a JPEG
        # at PIL's default quality, a second lossy pass over the texture.)
        image = image.copy() if image.mode in ("RGB", "RGBA", "L", "LA") else image.convert("RGBA")
        factor = [
            255,
            255,
            255,
            255,
        ]  # threestudio writes map_Kd without Kd: the texture is the colour
    else:
        diffuse = getattr(mat, "diffuse", None)
        if diffuse is None:
            diffuse = getattr(mat, "baseColorFactor", None)
        factor = [
            int(x)
            for x in np.asarray(diffuse if diffuse is not None else [255, 255, 255, 255]).ravel()[
                :4
            ]
        ]
    return PBRMaterial(
        name=getattr(mat, "name", None) or "material",
        baseColorTexture=image,
        baseColorFactor=factor,
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )


def obj_to_glb(obj_path: str, glb_path: Optional[str] = None, *, axes: str = "gltf") -> str:
    """Convert an OBJ (+ MTL + textures) to a GLB with the same geometry, UVs and texture.

    Face order and per-corner UVs are kept (trimesh splits a vertex where its UVs differ, as glTF
    requires). Returns the GLB path (default: the OBJ path with `.glb`)."""
    import trimesh
    from trimesh.visual import ColorVisuals, TextureVisuals

    if axes not in ("gltf", "keep"):
        raise ValueError(f"axes must be 'gltf' or 'keep', not {axes!r}")
    check_obj(obj_path)
    glb_path = glb_path or os.path.splitext(obj_path)[0] + ".glb"
    try:
        # NOT maintain_order: it drops UV seams
        src = trimesh.load(obj_path, force="scene", process=False)
    except Exception as err:  # trimesh raises many kinds on a malformed file
        raise InputError(
            f"cannot read the mesh {obj_path}: {err}", "a Wavefront OBJ", "re-run the export"
        ) from err
    meshes = [
        (name, g)
        for name, g in src.geometry.items()
        if isinstance(g, trimesh.Trimesh) and len(g.faces)
    ]
    if not meshes:
        raise InputError(
            f"{obj_path} holds no triangles",
            "a non-empty mesh",
            "check the export (an isosurface threshold that is too high gives an empty mesh)",
        )
    rot = THREESTUDIO_TO_GLTF if axes == "gltf" else np.eye(3)
    out = trimesh.Scene()
    for name, g in meshes:
        # the scene graph of an OBJ is the identity, but honour it anyway
        node = next((n for n in src.graph.nodes_geometry if src.graph[n][1] == name), None)
        transform = src.graph[node][0] if node is not None else np.eye(4)
        verts = (
            trimesh.transform_points(np.asarray(g.vertices, dtype=np.float64), transform) @ rot.T
        )
        visual = None
        if isinstance(g.visual, TextureVisuals) and g.visual.uv is not None:
            visual = TextureVisuals(
                uv=np.asarray(g.visual.uv), material=_material_for_glb(g.visual)
            )
        elif isinstance(g.visual, ColorVisuals) and g.visual.kind in ("vertex", "face"):
            visual = g.visual.copy()
        mesh = trimesh.Trimesh(
            vertices=verts, faces=np.asarray(g.faces), visual=visual, process=False
        )
        out.add_geometry(
            mesh, node_name=os.path.splitext(name)[0], geom_name=os.path.splitext(name)[0]
        )
    data = trimesh.exchange.gltf.export_glb(out)
    _atomic_write_bytes(glb_path, data)
    return glb_path


# ---------------------------------------------------------------------------------------- PLY


def read_ply(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """`hifi123.core.makeit3d.point_export.read_ply`, with a user-facing error for a file that is
    not a PLY."""
    try:
        return _read_ply(path)
    except ValueError as err:
        raise InputError(
            f"{path} is not a readable PLY file ({err})", "a PLY point cloud", "check the path"
        ) from err


#: state-dict key endings of a point cloud's positions and colours (makeit3d-point-cloud and others)
POSITION_SUFFIXES = ("points", "positions", "xyz", "point_positions")
COLOUR_SUFFIXES = ("colors", "colours", "rgb", "point_colors", "descriptors", "features")


def _pick(
    state: Dict[str, "object"],
    key: Optional[str],
    suffixes,
    n: Optional[int],
    what: str,
    flag: str,
    ckpt: str,
):
    def shape(v):
        return tuple(getattr(v, "shape", ()))

    if key is not None:
        if key not in state:
            raise InputError(
                f"{ckpt} has no entry {key!r} ({flag})",
                f"one of: {', '.join(sorted(state)[:20])}",
                f"pass the right {flag}",
            )
        return key
    cands = []
    for suffix in suffixes:  # suffix order is the priority
        for k, v in state.items():
            s = shape(v)
            if (
                k.split(".")[-1] == suffix
                and len(s) == 2
                and s[1] >= 3
                and (n is None or s[0] == n)
            ):
                if what == "positions" and s[1] != 3:
                    continue
                cands.append(k)
        if cands:
            break
    if len(cands) != 1:
        two_d = [f"{k} {list(shape(v))}" for k, v in state.items() if len(shape(v)) == 2][:20]
        found = (
            f"candidates: {', '.join(cands)}" if cands else f"names ending in {', '.join(suffixes)}"
        )
        raise InputError(
            f"{ckpt}: {'no' if not cands else 'several'} point {what} found ({found})",
            f"one [N, {'3' if what == 'positions' else 'C>=3'}] tensor; 2-D entries: "
            f"{', '.join(two_d) or 'none'}",
            f"name it with {flag}",
        )
    return cands[0]


def load_point_cloud(
    source: str, position_key: Optional[str] = None, colour_key: Optional[str] = None
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Positions [N,3] and colours (uint8 [N,3] or None) from a Lightning checkpoint (its
    `state_dict`) or an .npz (keys positions/points and colors/colours)."""
    if not os.path.isfile(source):
        raise InputError(
            f"point-cloud source {source} not found",
            "the Make-It-3D refine trial's ckpts/last.ckpt (or an .npz)",
            "run the refine stage first",
        )
    if source.endswith(".npz"):
        with np.load(source) as z:
            state = {k: z[k] for k in z.files}
    else:
        import torch

        try:
            ckpt = torch.load(source, map_location="cpu", weights_only=False)  # our own checkpoint
        except Exception as err:
            raise InputError(
                f"cannot read the checkpoint {source}: {err}",
                "a Lightning checkpoint",
                "re-run the refine stage (the file may be truncated)",
            ) from err
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    pk = _pick(state, position_key, POSITION_SUFFIXES, None, "positions", "--position-key", source)
    pos = np.asarray(_to_numpy(state[pk]), dtype=np.float64)
    ck = None
    try:
        ck = _pick(state, colour_key, COLOUR_SUFFIXES, len(pos), "colours", "--colour-key", source)
    except InputError:
        if colour_key is not None:
            raise
    col = None
    if ck is not None:
        c = _to_numpy(state[ck])[:, :3]
        col = colors_to_uint8(c)
    return pos, col


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    return np.asarray(v)


def checkpoint_to_ply(
    source: str, ply_path: str, position_key: Optional[str] = None, colour_key: Optional[str] = None
) -> str:
    pos, col = load_point_cloud(source, position_key, colour_key)
    return write_ply(ply_path, pos, col)


# ---------------------------------------------------------------------------------------- CLI


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hifi123.run.export", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("glb", help="OBJ/MTL/texture -> GLB")
    g.add_argument(
        "source",
        help="a threestudio trial folder (its newest save/it<N>-export/model.obj) or an OBJ file",
    )
    g.add_argument("--out", default=None, help="GLB path (default: next to the OBJ, model.glb)")
    g.add_argument(
        "--keep-axes",
        action="store_true",
        help="keep threestudio's z-up coordinates (default: glTF y-up)",
    )
    q = sub.add_parser("ply", help="point cloud of a checkpoint -> coloured PLY")
    q.add_argument("source", help="a Lightning checkpoint (ckpts/last.ckpt) or an .npz")
    q.add_argument("--out", required=True, help="PLY path")
    q.add_argument(
        "--position-key",
        default=None,
        help="state-dict key of the [N,3] positions (default: search)",
    )
    q.add_argument(
        "--colour-key",
        default=None,
        help="state-dict key of the [N,C>=3] colours (default: search)",
    )
    args = p.parse_args(argv)
    try:
        if args.what == "glb":
            obj = find_exported_obj(args.source) if os.path.isdir(args.source) else args.source
            out = obj_to_glb(obj, args.out, axes="keep" if args.keep_axes else "gltf")
        else:
            out = checkpoint_to_ply(args.source, args.out, args.position_key, args.colour_key)
    except Hifi123Error as err:
        print(f"hifi123: error: {err.render()}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
