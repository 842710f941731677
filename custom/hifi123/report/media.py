"""The report's assets: every file the page shows lives under `report/assets/`, so the folder is
self-contained. Large media (videos, models) are hard links when the file system allows, else
copies; images are resized. A file is written again only when its source changed, and files of
earlier reports that the page no longer uses are removed at the end (`Assets.finish`).

RGSD targets (`decode_rgsd_targets`): `hifi123-system` keeps the enhanced fixed-view latents in
its refine checkpoint under `hifi123_rgsd` (`{"fixed_targets": [N, 4, h, w], "config": the
RGSD settings}`, see `threestudio_ext/systems/hifi123.py`). They are SD latents (scaled by the
VAE's scaling factor); the report decodes them with the VAE of the model the settings name
(`pretrained_model_name_or_path`, loaded with `local_files_only`: a local folder or the
Hugging Face cache, never a download). Without it, the page shows a false-colour preview of the
latents' first three channels and says so.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from PIL import Image

# threestudio_ext.systems.hifi123.CHECKPOINT_KEY (no threestudio import)
CHECKPOINT_KEY = "hifi123_rgsd"


class Assets:
    """Files under `root` (report/assets) that this build uses; `finish` removes the rest."""

    def __init__(self, report_dir: str):
        self.report_dir = report_dir
        self.root = os.path.join(report_dir, "assets")
        os.makedirs(self.root, exist_ok=True)
        self.used: Set[str] = set()

    def path(self, rel: str) -> str:
        full = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        self.used.add(os.path.normpath(full))
        return full

    def url(self, full: str) -> str:
        """The page's relative link to an asset (always with forward slashes)."""
        return os.path.relpath(full, self.report_dir).replace(os.sep, "/")

    @staticmethod
    def _fresh(dst: str, src: str) -> bool:
        try:
            s, d = os.stat(src), os.stat(dst)
        except OSError:
            return False
        return d.st_mtime >= s.st_mtime and (d.st_size == s.st_size or d.st_ino == s.st_ino)

    def link(self, src: str, rel: str) -> str:
        """`src` as asset `rel` (hard link, else copy); returns the page's link."""
        dst = self.path(rel)
        if not self._fresh(dst, src):
            if os.path.lexists(dst):
                os.remove(dst)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        return self.url(dst)

    def image(self, src: str, rel: str, max_px: int) -> Optional[str]:
        """`src` resized to at most `max_px` on its long side, as PNG; None if unreadable."""
        dst = self.path(rel)
        if not self._fresh_derived(dst, src):
            try:
                with Image.open(src) as im:
                    im.load()
                    im = im.convert("RGBA") if im.mode in ("RGBA", "LA", "P") else im.convert("RGB")
                    im.thumbnail((max_px, max_px), Image.LANCZOS)
                    im.save(dst)
            except (OSError, ValueError, Image.DecompressionBombError):
                self.used.discard(os.path.normpath(dst))
                return None
        return self.url(dst)

    @staticmethod
    def _fresh_derived(dst: str, src: str) -> bool:
        try:
            return os.stat(dst).st_mtime >= os.stat(src).st_mtime
        except OSError:
            return False

    def glb_script(self, src: str, rel: str, key: str) -> str:
        """The GLB as a script that stores it base64-encoded in `window.HIFI123_GLB[key]`: a page
        opened from disk may load scripts next to it but not fetch files."""
        dst = self.path(rel)
        if not self._fresh_derived(dst, src):
            with open(src, "rb") as f:
                data = base64.b64encode(f.read()).decode("ascii")
            with open(dst, "w", encoding="ascii") as f:
                f.write(
                    "(window.HIFI123_GLB = window.HIFI123_GLB || {})["
                    + json.dumps(key)
                    + '] = "'
                    + data
                    + '";\n'
                )
        return self.url(dst)

    def write_png(self, array: np.ndarray, rel: str) -> str:
        dst = self.path(rel)
        Image.fromarray(array).save(dst)
        return self.url(dst)

    def finish(self) -> None:
        for folder, _, names in os.walk(self.root, topdown=False):
            for n in names:
                full = os.path.normpath(os.path.join(folder, n))
                if full not in self.used:
                    os.remove(full)
            if folder != self.root and not os.listdir(folder):
                os.rmdir(folder)


def pick_frames(frames: List[str], n: int) -> List[str]:
    """`n` frames spread evenly over an orbit (all when there are fewer)."""
    if len(frames) <= n:
        return list(frames)
    idx = np.linspace(0, len(frames), n, endpoint=False).astype(int)
    return [frames[i] for i in idx]


# ---------------------------------------------------------------------------------- RGSD targets


def load_rgsd_state(ckpt: str) -> Optional[dict]:
    """The `hifi123_rgsd` entry of a refine checkpoint (None when it has none)."""
    import torch

    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - our own trial's checkpoint with OmegaConf containers in it
        data = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = data.get(CHECKPOINT_KEY) if isinstance(data, dict) else None
    if not isinstance(state, dict) or state.get("fixed_targets") is None:
        return None
    return state


def latent_preview(latents: np.ndarray) -> np.ndarray:
    """[N, 4, h, w] latents -> [N, h, w, 3] uint8: channels 0-2, each stretched to its range."""
    x = latents[:, :3].astype(np.float64)
    lo = x.min(axis=(2, 3), keepdims=True)
    hi = x.max(axis=(2, 3), keepdims=True)
    x = (x - lo) / np.maximum(hi - lo, 1e-8)
    return (x.transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


def decode_latents(latents, model: str) -> Tuple[np.ndarray, str]:
    """Decode SD latents with `model`'s VAE -> ([N, H, W, 3] uint8, note). Falls back to
    `latent_preview` with a note saying why."""
    import torch

    z = torch.as_tensor(latents).float()
    try:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any reason the VAE is not here gives the preview
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        note = (
            f"the VAE of {model} is not available on this machine ({reason}), so these are the "
            "targets' first three latent channels in false colour, not images; build the report "
            "where the model is (a local folder or the Hugging Face cache) to decode them"
        )
        return latent_preview(z.numpy()), note
    vae.eval()
    with torch.no_grad():
        x = vae.decode(z / vae.config.scaling_factor).sample
    img = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return (img * 255 + 0.5).astype(np.uint8), f"decoded with the VAE of {model}"


def decode_rgsd_targets(ckpt: str, assets: Assets, prefix: str) -> Optional[Dict[str, object]]:
    """Decoded fixed-view targets of a HiFi-123 refine checkpoint, as `<prefix>target-<j>.png`:
    {"targets": [url], "views": [(elevation, azimuth) relative to the reference], "note": str}.
    Cached beside them (`<prefix>targets.json`) until the checkpoint changes."""
    side = assets.path(prefix + "targets.json")
    st = os.stat(ckpt)
    stamp = [st.st_size, st.st_mtime]
    cached = None
    try:
        with open(side, encoding="utf-8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = None
    if (
        cached
        and cached.get("stamp") == stamp
        and all(
            os.path.isfile(os.path.join(assets.report_dir, u)) for u in cached.get("targets", [])
        )
    ):
        for u in cached["targets"]:
            assets.path(os.path.relpath(os.path.join(assets.report_dir, u), assets.root))
        return cached if cached.get("targets") else None
    state = load_rgsd_state(ckpt)
    result: Dict[str, object] = {"stamp": stamp, "targets": [], "views": [], "note": ""}
    if state is not None:
        cfg = state.get("config") or {}
        model = str(cfg.get("pretrained_model_name_or_path") or "")
        images, note = (
            decode_latents(state["fixed_targets"], model)
            if model
            else (
                latent_preview(np.asarray(state["fixed_targets"], dtype=np.float32)),
                "the checkpoint names no model, so these are false-colour latent previews",
            )
        )
        result["targets"] = [
            assets.write_png(im, f"{prefix}target-{j}.png") for j, im in enumerate(images)
        ]
        views = cfg.get("fixed_views") or []
        result["views"] = [list(v) for v in views][: len(images)]
        result["note"] = note
    with open(side, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return result if result["targets"] else None
