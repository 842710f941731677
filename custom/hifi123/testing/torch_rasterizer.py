"""A pure-torch stand-in for threestudio's `NVDiffRasterizerContext`, for CPU tests only.

nvdiffrast has no CPU build. This class offers the same methods with nvdiffrast's conventions, so
threestudio's mesh renderers (and ours) run on CPU in tests: assign `renderer.ctx =
TorchRasterizerContext()` after building the renderer.

* `rasterize(pos [B,Nv,4] clip space, tri [F,3], (H, W))` -> (rast [B,H,W,4], None): rast holds
  perspective-correct barycentrics (u, v) of vertices 0 and 1, z/w, and triangle id + 1 (0 = empty);
  pixel centres at NDC ((2i + 1)/W - 1, (2j + 1)/H - 1) (row 0 at NDC y = -1, as nvdiffrast);
  nearest z/w wins.
* `interpolate(attr, rast, tri)` -> (image, None): differentiable with respect to `attr`.
* `antialias` is the identity (no silhouette gradients), `vertex_transform` as threestudio's.

Brute force over faces x pixels in chunks: fine for test meshes (thousands of faces, 64^2 images).
"""

from __future__ import annotations

import torch


class TorchRasterizerContext:
    def __init__(self, chunk: int = 512):
        self.chunk = chunk

    def vertex_transform(self, verts: torch.Tensor, mvp_mtx: torch.Tensor) -> torch.Tensor:
        homo = torch.cat([verts, torch.ones_like(verts[:, :1])], dim=-1)
        return torch.matmul(homo, mvp_mtx.permute(0, 2, 1))

    @torch.no_grad()
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution):
        H, W = (
            (resolution, resolution)
            if isinstance(resolution, int)
            else tuple(int(r) for r in resolution)
        )
        B = pos.shape[0]
        tri = tri.long()
        ys = (2 * torch.arange(H, dtype=pos.dtype, device=pos.device) + 1) / H - 1
        xs = (2 * torch.arange(W, dtype=pos.dtype, device=pos.device) + 1) / W - 1
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        px, py = px.reshape(-1), py.reshape(-1)
        rast = torch.zeros(B, H * W, 4, dtype=pos.dtype, device=pos.device)
        for b in range(B):
            w = pos[b, :, 3]
            ndc = pos[b, :, :3] / w[:, None]
            best = torch.full((H * W,), float("inf"), dtype=pos.dtype, device=pos.device)
            for f0 in range(0, tri.shape[0], self.chunk):
                t = tri[f0 : f0 + self.chunk]
                p0, p1, p2 = ndc[t[:, 0]], ndc[t[:, 1]], ndc[t[:, 2]]  # [F,3]
                area = (p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p2[:, 0] - p0[:, 0]) * (
                    p1[:, 1] - p0[:, 1]
                )
                ok = area.abs() > 1e-12
                # screen-space barycentrics for every (face, pixel)
                e0 = (p1[:, None, 0] - px[None]) * (p2[:, None, 1] - py[None]) - (
                    p2[:, None, 0] - px[None]
                ) * (p1[:, None, 1] - py[None])
                e1 = (p2[:, None, 0] - px[None]) * (p0[:, None, 1] - py[None]) - (
                    p0[:, None, 0] - px[None]
                ) * (p2[:, None, 1] - py[None])
                a = area[:, None]
                b0, b1 = e0 / a, e1 / a
                b2 = 1 - b0 - b1
                inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & ok[:, None]
                inside &= (w[t].min(1).values > 0)[:, None]  # in front of the camera
                zw = b0 * p0[:, None, 2] + b1 * p1[:, None, 2] + b2 * p2[:, None, 2]
                inside &= (zw >= -1) & (zw <= 1)
                zw = torch.where(inside, zw, torch.full_like(zw, float("inf")))
                zmin, fidx = zw.min(0)
                better = zmin < best
                if better.any():
                    best = torch.where(better, zmin, best)
                    sel = fidx[better]
                    pix = torch.nonzero(better)[:, 0]
                    # perspective-correct barycentrics
                    ww = w[t[sel]]  # [P,3]
                    bb = torch.stack([b0[sel, pix], b1[sel, pix], b2[sel, pix]], -1) / ww
                    bb = bb / bb.sum(-1, keepdim=True)
                    rast[b, pix, 0] = bb[:, 0]
                    rast[b, pix, 1] = bb[:, 1]
                    rast[b, pix, 2] = zmin[better]
                    rast[b, pix, 3] = (sel + f0 + 1).to(pos.dtype)
        return rast.view(B, H, W, 4), None

    def rasterize_one(self, pos, tri, resolution):
        rast, _ = self.rasterize(pos[None], tri, resolution)
        return rast[0], None

    def antialias(self, color, rast, pos, tri):
        return color

    def interpolate(self, attr, rast, tri, rast_db=None, diff_attrs=None):
        B, H, W, _ = rast.shape
        tri = tri.long()
        fid = rast[..., 3].long()  # [B,H,W]
        hit = fid > 0
        idx = tri[(fid - 1).clamp_min(0)]  # [B,H,W,3]
        if attr.shape[0] == 1 and B > 1:
            attr = attr.expand(B, *attr.shape[1:])
        # [B,H,W,3,C]
        gathered = torch.stack([attr[b][idx[b].reshape(-1)].view(H, W, 3, -1) for b in range(B)])
        u, v = rast[..., 0:1], rast[..., 1:2]
        bary = torch.cat([u, v, 1 - u - v], -1)[..., None]  # [B,H,W,3,1]
        out = (gathered * bary).sum(-2)
        return torch.where(hit[..., None], out, torch.zeros_like(out)), None

    def interpolate_one(self, attr, rast, tri, rast_db=None, diff_attrs=None):
        return self.interpolate(attr[None], rast, tri, rast_db, diff_attrs)
