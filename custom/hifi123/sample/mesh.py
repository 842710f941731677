"""The synthetic sample object as a triangle mesh (numpy only), for the mesh-alignment tests.

The mesh is the union of the sample's primitives (`hifi123.sample.make_sample`: rounded box,
capped cylinder, sphere, torus with its axis along world x) as separate closed surfaces that
overlap where the primitives do. Its silhouette and its nearest-surface depth equal those of the
union, which is all a silhouette/depth alignment looks at. World frame: threestudio's, z up.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

from . import make_sample as S


def _grid_sphere(n_lat: int, n_lon: int) -> Tuple[np.ndarray, np.ndarray]:
    """Unit UV sphere: poles + (n_lat - 1) rings of n_lon vertices, outward-facing triangles."""
    rings = []
    for i in range(1, n_lat):
        th = math.pi * i / n_lat
        for j in range(n_lon):
            ph = 2.0 * math.pi * j / n_lon
            rings.append((math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)))
    v = np.array([(0.0, 0.0, 1.0)] + rings + [(0.0, 0.0, -1.0)])
    bottom = len(v) - 1
    f: List[Tuple[int, int, int]] = []
    for j in range(n_lon):
        j1 = (j + 1) % n_lon
        f.append((0, 1 + j, 1 + j1))
        last = 1 + (n_lat - 2) * n_lon
        f.append((bottom, last + j1, last + j))
    for i in range(n_lat - 2):
        a, b = 1 + i * n_lon, 1 + (i + 1) * n_lon
        for j in range(n_lon):
            j1 = (j + 1) % n_lon
            f.append((a + j, b + j, b + j1))
            f.append((a + j, b + j1, a + j1))
    return v, np.array(f, dtype=np.int64)


def _grid_cube(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """The surface of the cube [-1, 1]^3 as an n x n grid per face (vertices not shared)."""
    t = np.linspace(-1.0, 1.0, n + 1)
    a, b = np.meshgrid(t, t, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    ones = np.ones_like(a)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    quad = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    tri = np.concatenate([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])
    verts, faces = [], []
    for axis in range(3):
        for sign in (1.0, -1.0):
            p = np.zeros((len(a), 3))
            others = [k for k in range(3) if k != axis]
            p[:, axis] = sign * ones
            p[:, others[0]], p[:, others[1]] = a, b
            # (a, b, axis) right-handed for sign > 0 when others follow the axis cyclically
            flip = (sign > 0) != (others == [(axis + 1) % 3, (axis + 2) % 3])
            f = tri[:, ::-1] if flip else tri
            faces.append(f + sum(len(x) for x in verts))
            verts.append(p)
    return np.concatenate(verts), np.concatenate(faces)


def sample_mesh(detail: int = 24) -> Tuple[np.ndarray, np.ndarray]:
    """(vertices [N, 3] float64, faces [M, 3] int64) of the sample object; `detail` sets the
    tessellation (24: ~10k triangles)."""
    parts_v, parts_f = [], []

    def add(v, f):
        parts_f.append(f + sum(len(x) for x in parts_v))
        parts_v.append(v)

    # rounded box: points of a grid cube on the box of half extents `half`, pulled to the rounded
    # surface (nearest point of the inner box + radius along the offset)
    cv, cf = _grid_cube(detail // 2)
    half, r = np.array(S.BOX_HALF), S.BOX_ROUND
    p = cv * half
    inner = half - r
    q = np.clip(p, -inner, inner)
    d = p - q
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    add(q + r * d + np.array(S.BOX_CENTER), cf)
    # capped cylinder (post): a squashed sphere grid turned into a cylinder by clamping
    sv, sf = _grid_sphere(detail, 2 * detail)
    rho = np.linalg.norm(sv[:, :2], axis=1, keepdims=True)
    side = np.where(rho > 1e-9, sv[:, :2] / np.maximum(rho, 1e-12), 0.0)
    z = np.clip(sv[:, 2:] * 2.0, -1.0, 1.0)  # the middle half of the latitudes is the side wall
    rad = np.where(np.abs(sv[:, 2:]) < 0.5, 1.0, np.minimum(rho / math.sqrt(0.75), 1.0))
    post = np.concatenate([side * rad * S.POST_RADIUS, z * S.POST_HALF_HEIGHT], axis=1)
    add(post + np.array(S.POST_CENTER), sf)
    # ball
    add(sv * S.BALL_RADIUS + np.array(S.BALL_CENTER), sf)
    # torus, axis along world x: tube around the circle of radius RING_MAJOR in the y-z plane
    n_major, n_minor = 2 * detail, detail
    u = 2.0 * math.pi * np.arange(n_major) / n_major
    w = 2.0 * math.pi * np.arange(n_minor) / n_minor
    uu, ww = np.meshgrid(u, w, indexing="ij")
    rr = S.RING_MAJOR + S.RING_MINOR * np.cos(ww)
    tv = np.stack([S.RING_MINOR * np.sin(ww), rr * np.cos(uu), rr * np.sin(uu)], -1).reshape(-1, 3)
    idx = np.arange(n_major * n_minor).reshape(n_major, n_minor)
    i1, j1 = np.roll(idx, -1, 0), np.roll(idx, -1, 1)
    j11 = np.roll(i1, -1, 1)
    tf = np.concatenate([np.stack([idx, i1, j11], -1), np.stack([idx, j11, j1], -1)]).reshape(-1, 3)
    add(tv + np.array(S.RING_CENTER), tf)
    return np.concatenate(parts_v), np.concatenate(parts_f).astype(np.int64)
