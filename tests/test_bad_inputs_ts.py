"""Bad inputs in the shipped YAMLs, loaded with threestudio's own config loader and built into our
registered components (the threestudio half of `test_bad_inputs.py`).

Every case loads a shipped config (`custom/hifi123/configs/*.yaml`) in its CPU smoke form with one
or more bad command-line overrides, exactly as `launch.py` merges them, then builds the datamodule,
the system or the guidance from it. It asserts the exception type, that the message names the
config path and says `expected:` and `fix:`, that no traceback text is in it, that no model was
loaded first, and that every input file is byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
from hifi123.errors import InputError, ModelNotFoundError
from PIL import Image

pytestmark = pytest.mark.threestudio

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "custom" / "hifi123" / "configs"
ASSETS = REPO / "custom" / "hifi123" / "assets"


@dataclass
class Case:
    id: str
    config: str  # a shipped YAML
    build: str  # data | system | guidance
    overrides: Tuple[str, ...]  # `key=value` as on launch.py's command line ({in}: the inputs)
    needles: Tuple[str, ...]
    raises: type = InputError


def case(id, config, build, overrides, *needles, raises=InputError):
    return Case(id, config, build, tuple(overrides.split()), needles, raises)


def _hashes(folder) -> dict:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                out[os.path.relpath(os.path.join(root, n), folder)] = hashlib.sha256(
                    f.read()
                ).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A reference with its depth, normal and caption, and bad variants; never changed."""
    d = tmp_path_factory.mktemp("bad-yaml-inputs")
    ref = Image.open(ASSETS / "sample_rgba.png").resize((64, 64))
    depth = Image.open(ASSETS / "sample_depth.png").convert("L").resize((64, 64))
    normal = Image.open(ASSETS / "sample_normal.png").convert("RGB").resize((64, 64))
    caption = (ASSETS / "sample_caption.txt").read_text()

    def reference(folder, with_depth=True, with_normal=True, depth_image=None):
        (d / folder).mkdir(exist_ok=True)
        ref.save(d / folder / "x_rgba.png")
        (d / folder / "x_caption.txt").write_text(caption)
        if with_depth:
            (depth_image or depth).save(d / folder / "x_depth.png")
        if with_normal:
            normal.save(d / folder / "x_normal.png")

    reference("good")
    reference("nodepth", with_depth=False)
    reference("nonormal", with_normal=False)
    reference("colourdepth", depth_image=normal)
    reference("smalldepth", depth_image=depth.resize((32, 32)))
    ref.convert("RGB").save(d / "photo.png")
    (d / "photo_caption.txt").write_text(caption)
    ref.resize((64, 48)).save(d / "wide_rgba.png")
    (d / "notimg.png").write_text("not an image")
    rgba = np.zeros((64, 64, 4), np.uint8)
    Image.fromarray(rgba).save(d / "empty_rgba.png")
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(d / "opaque_rgba.png")
    normal.save(d / "colour_depth.png")
    depth.resize((32, 32)).save(d / "small_depth.png")
    (d / "trial" / "ckpts").mkdir(parents=True)
    (d / "trial" / "ckpts" / "last.ckpt").write_bytes(b"not a checkpoint")
    return d


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the case: the errors must come before."""
    from hifi123.models import loader

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the config error")

    for name in ("load_diffusion", "load_upscaler", "load_dpt", "load_clip"):
        monkeypatch.setattr(loader, name, boom)
    import hifi123.threestudio_ext.guidance.makeit3d as m3d

    for name in ("load_diffusion", "load_clip_encoder"):
        if hasattr(m3d, name):
            monkeypatch.setattr(m3d, name, boom)


GOOD = "data.image_path={in}/good/x_rgba.png"
G = "system.guidance"
CASES = [
    # --- data: hifi123-single-image-datamodule (coarse.yaml)
    case("data/unknown-key", "coarse.yaml", "data", "data.bogus=1", "data.bogus"),
    case(
        "data/misspelt-key",
        "coarse.yaml",
        "data",
        "data.image_pth=x.png",
        "data.image_pth (did you mean data.image_path?)",
    ),
    case(
        "data/rgb-image",
        "coarse.yaml",
        "data",
        "data.image_path={in}/photo.png",
        "data.image_path",
        "no alpha channel",
        "hifi123 preprocess",
    ),
    case(
        "data/image-missing",
        "coarse.yaml",
        "data",
        "data.image_path={in}/nope_rgba.png",
        "data.image_path",
        "not found",
    ),
    case(
        "data/not-an-image",
        "coarse.yaml",
        "data",
        "data.image_path={in}/notimg.png",
        "data.image_path",
        "not a readable image",
    ),
    case(
        "data/empty-mask",
        "coarse.yaml",
        "data",
        "data.image_path={in}/empty_rgba.png",
        "empty mask",
    ),
    case(
        "data/opaque",
        "coarse.yaml",
        "data",
        "data.image_path={in}/opaque_rgba.png",
        "opaque everywhere",
    ),
    case(
        "data/not-square", "coarse.yaml", "data", "data.image_path={in}/wide_rgba.png", "not square"
    ),
    case(
        "data/depth-missing",
        "coarse.yaml",
        "data",
        "data.image_path={in}/nodepth/x_rgba.png data.requires_depth=true",
        "data.requires_depth",
        "x_depth.png does not exist",
    ),
    case(
        "data/normal-missing",
        "coarse.yaml",
        "data",
        "data.image_path={in}/nonormal/x_rgba.png data.requires_normal=true",
        "data.requires_normal",
        "x_normal.png does not exist",
    ),
    case(
        "data/colour-depth",
        "coarse.yaml",
        "data",
        "data.image_path={in}/colourdepth/x_rgba.png data.requires_depth=true",
        "x_depth.png",
        "colour image",
    ),
    case(
        "data/depth-size",
        "coarse.yaml",
        "data",
        "data.image_path={in}/smalldepth/x_rgba.png data.requires_depth=true",
        "x_depth.png is 32x32",
    ),
    case(
        "data/camera-unknown-key",
        "coarse.yaml",
        "data",
        GOOD + " data.random_camera.bogus=1",
        "data.random_camera.bogus",
    ),
    case(
        "data/camera-misspelt-key",
        "coarse.yaml",
        "data",
        GOOD + " data.random_camera.elevation_rnge=[0,1]",
        "did you mean data.random_camera.elevation_range?",
    ),
    case(
        "data/camera-wrong-type",
        "coarse.yaml",
        "data",
        GOOD + " data.random_camera.eval_height=tall",
        "data.random_camera.eval_height",
        "'tall'",
    ),
    case(
        "data/fovy-nan",
        "coarse.yaml",
        "data",
        GOOD + " data.default_fovy_deg=nan",
        "data.default_fovy_deg",
    ),
    case(
        "data/elevation-inf",
        "coarse.yaml",
        "data",
        GOOD + " data.default_elevation_deg=inf",
        "data.default_elevation_deg",
    ),
    case(
        "data/distance-wrong-type",
        "coarse.yaml",
        "data",
        GOOD + " data.default_camera_distance=far",
        "data.default_camera_distance",
        "'far'",
    ),
    case(
        "data/milestones-nan",
        "coarse.yaml",
        "data",
        GOOD + " data.random_camera.fovy_range=[20,.nan]",
        "data.random_camera.fovy_range[1]",
    ),
    # --- data: makeit3d-single-image-datamodule
    case(
        "m3d-data/unknown-key",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.azimuth_samplng=uniform",
        "did you mean data.azimuth_sampling?",
    ),
    case(
        "m3d-data/sampling",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.azimuth_sampling=normal",
        "data.azimuth_sampling='normal'",
        "'uniform'",
    ),
    case(
        "m3d-data/fraction",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.progressive_fraction=1.5",
        "data.progressive_fraction = 1.5",
        "<= 1.0",
    ),
    case(
        "m3d-data/fraction-nan",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.progressive_fraction=nan",
        "data.progressive_fraction",
    ),
    case(
        "m3d-data/half-range",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.phase1_azimuth_half_range=-1",
        "data.phase1_azimuth_half_range = -1.0",
        ">= 0.0 and <= 180.0",
    ),
    case(
        "m3d-data/max-steps",
        "makeit3d-coarse.yaml",
        "data",
        GOOD + " data.max_steps=0",
        "data.max_steps = 0",
        "trainer.max_steps",
    ),
    case(
        "m3d-data/rgb-image",
        "makeit3d-coarse.yaml",
        "data",
        "data.image_path={in}/photo.png",
        "data.image_path",
        "no alpha channel",
    ),
    # --- system: hifi123-system (coarse.yaml), keys, types and numbers
    case("system/unknown-key", "coarse.yaml", "system", GOOD + " system.bogus=1", "system.bogus"),
    case(
        "system/misspelt-key",
        "coarse.yaml",
        "system",
        GOOD + " system.refinment=true",
        "did you mean system.refinement?",
    ),
    case(
        "system/wrong-type",
        "coarse.yaml",
        "system",
        GOOD + " system.depth_erosion=wide",
        "system.depth_erosion",
        "'wide'",
    ),
    case(
        "system/lambda-nan",
        "coarse.yaml",
        "system",
        GOOD + " system.loss.lambda_rgb=nan",
        "system.loss.lambda_rgb",
    ),
    case(
        "system/schedule-inf",
        "coarse.yaml",
        "system",
        GOOD + " system.loss.lambda_normal=[0,0.0,.inf,100]",
        "system.loss.lambda_normal[2]",
    ),
    case(
        "system/lr-nan",
        "coarse.yaml",
        "system",
        GOOD + " system.optimizer.args.lr=nan",
        "system.optimizer.args.lr",
    ),
    case(
        "system/geometry-unknown-key",
        "coarse.yaml",
        "system",
        GOOD + " system.geometry.bogus=1",
        "system.geometry.bogus",
        "implicit-volume",
    ),
    case(
        "system/geometry-misspelt-key",
        "coarse.yaml",
        "system",
        GOOD + " system.geometry.radus=2",
        "did you mean system.geometry.radius?",
    ),
    case(
        "system/geometry-nan",
        "coarse.yaml",
        "system",
        GOOD + " system.geometry.radius=nan",
        "system.geometry.radius",
    ),
    case(
        "system/material-unknown-key",
        "coarse.yaml",
        "system",
        GOOD + " system.material.shiny=1",
        "system.material.shiny",
    ),
    case(
        "system/background-misspelt",
        "coarse.yaml",
        "system",
        GOOD + " system.background.colr=[1,1,1]",
        "did you mean system.background.color?",
    ),
    case(
        "system/renderer-misspelt",
        "coarse.yaml",
        "system",
        GOOD + " system.renderer.num_samples_per_rays=8",
        "did you mean system.renderer.num_samples_per_ray?",
    ),
    case(
        "system/exporter-unknown-key",
        "coarse.yaml",
        "system",
        GOOD + " system.exporter.format=obj",
        "system.exporter.format",
        "mesh-exporter",
    ),
    case(
        "system/schedule-unknown-key",
        "coarse.yaml",
        "system",
        GOOD + " system.reference_schedule.every=4",
        "system.reference_schedule",
    ),
    case(
        "system/misspelt-lambda",
        "makeit3d-coarse.yaml",
        "system",
        GOOD + " system.loss.lambda_rbg=1000",
        "did you mean system.loss.lambda_rgb?",
    ),
    # --- system: values checked in configure
    case(
        "system/rgb-loss",
        "coarse.yaml",
        "system",
        GOOD + " system.rgb_loss=l3",
        "system.rgb_loss='l3'",
        "'mse', 'l1'",
    ),
    case(
        "system/mask-loss",
        "coarse.yaml",
        "system",
        GOOD + " system.mask_loss=ce",
        "system.mask_loss='ce'",
    ),
    case(
        "system/depth-kind",
        "coarse.yaml",
        "system",
        GOOD + " system.depth_kind=z",
        "system.depth_kind='z'",
    ),
    case(
        "system/video-format",
        "coarse.yaml",
        "system",
        GOOD + " system.video_format=avi",
        "system.video_format='avi'",
    ),
    case(
        "system/stage",
        "coarse.yaml",
        "system",
        GOOD + " system.stage=middle",
        "system.stage='middle'",
    ),
    case(
        "system/stage-contradiction",
        "coarse.yaml",
        "system",
        GOOD + " system.stage=coarse system.refinement=true",
        "system.stage=coarse contradicts system.refinement=true",
    ),
    case(
        "system/schedule-mode",
        "coarse.yaml",
        "system",
        GOOD + " system.reference_schedule.mode=alternate",
        "system.reference_schedule",
        "'alternate'",
    ),
    case(
        "system/schedule-fraction",
        "coarse.yaml",
        "system",
        GOOD + " system.reference_schedule.mode=random system.reference_schedule.ref_fraction=2",
        "system.reference_schedule",
        "ref_fraction",
    ),
    # --- system: hifi123-system refine stage (refine.yaml): files it chains from
    case(
        "refine/convert-from-missing",
        "refine.yaml",
        "system",
        GOOD + " system.geometry_convert_from={in}/nope/ckpts/last.ckpt",
        "system.geometry_convert_from",
        "no such checkpoint",
    ),
    case(
        "refine/convert-from-no-parsed",
        "refine.yaml",
        "system",
        GOOD + " system.geometry_convert_from={in}/trial/ckpts/last.ckpt",
        "system.geometry_convert_from",
        "parsed.yaml",
    ),
    case(
        "refine/tets-missing",
        "refine.yaml",
        "system",
        GOOD + " system.geometry_convert_from=null system.geometry.isosurface_resolution=33",
        "system.geometry.isosurface_resolution=33",
        "33_tets.npz",
    ),
    case(
        "refine/guidance-unknown-key", "refine.yaml", "system", GOOD + f" {G}.bogus=1", f"{G}.bogus"
    ),
    # --- guidance: hifi123-rgsd-guidance (refine.yaml)
    case("rgsd/unknown-key", "refine.yaml", "guidance", GOOD + f" {G}.bogus=1", f"{G}.bogus"),
    case(
        "rgsd/misspelt-key",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.num_stpes=6",
        f"did you mean {G}.num_steps?",
    ),
    case(
        "rgsd/num-steps-0", "refine.yaml", "guidance", GOOD + f" {G}.num_steps=0", f"{G}.num_steps"
    ),
    case(
        "rgsd/num-steps-text",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.num_steps=many",
        f"{G}.num_steps",
        "'many'",
    ),
    case(
        "rgsd/inject-above",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.num_steps=6 {G}.inject_steps=8",
        f"{G}.inject_steps",
    ),
    case(
        "rgsd/weighting",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.weighting=sds",
        f"{G}.weighting",
        "'uniform', 'one_minus_alpha'",
    ),
    case(
        "rgsd/depth-type",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.depth_type=inverse",
        f"{G}.depth_type",
    ),
    case(
        "rgsd/depth-source",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.depth_source=lidar",
        f"{G}.depth_source",
    ),
    case(
        "rgsd/cfg-form", "refine.yaml", "guidance", GOOD + f" {G}.cfg_form=classic", f"{G}.cfg_form"
    ),
    case(
        "rgsd/background",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.reference_background=blue",
        f"{G}.reference_background",
    ),
    case(
        "rgsd/guidance-nan",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.guidance_scale=nan",
        f"{G}.guidance_scale",
    ),
    case(
        "rgsd/guidance-negative",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.guidance_scale=-1",
        f"{G}.guidance_scale",
    ),
    case(
        "rgsd/dilation-negative",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.mask_dilation_px=-1",
        f"{G}.mask_dilation_px",
    ),
    case(
        "rgsd/fixed-views-empty",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.fixed_views=[]",
        f"{G}.fixed_views",
    ),
    case(
        "rgsd/fixed-views-not-pairs",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.fixed_views=[[0,90,1]]",
        f"{G}.fixed_views",
    ),
    case(
        "rgsd/no-depth-at-all",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.load_depth_estimator=false",
        f"{G}.load_depth_estimator",
        "cond_depth_path",
    ),
    case(
        "rgsd/reference-missing",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_image_path={{in}}/nope.png",
        "cond_image_path",
        "nope.png",
    ),
    case(
        "rgsd/reference-rgb",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_image_path={{in}}/photo.png",
        "cond_image_path",
        "photo.png",
        "no alpha channel",
    ),
    case(
        "rgsd/reference-empty",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_image_path={{in}}/empty_rgba.png",
        "cond_image_path",
        "empty mask",
    ),
    case(
        "rgsd/depth-colour",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_depth_path={{in}}/colour_depth.png",
        "cond_depth_path",
        "colour image",
    ),
    case(
        "rgsd/depth-size",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_depth_path={{in}}/small_depth.png",
        "cond_depth_path",
        "32x32",
    ),
    case(
        "rgsd/depth-missing",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.cond_depth_path={{in}}/nope_depth.png",
        "cond_depth_path",
        "not found",
    ),
    case(
        "rgsd/model-missing",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.pretrained_model_name_or_path={{in}}/no-model",
        f"{G}.pretrained_model_name_or_path",
        "no-model",
        raises=ModelNotFoundError,
    ),
    case(
        "rgsd/model-not-a-model",
        "refine.yaml",
        "guidance",
        GOOD + f" {G}.pretrained_model_name_or_path={{in}}/good",
        f"{G}.pretrained_model_name_or_path",
        "lacks unet",
        raises=ModelNotFoundError,
    ),
    # --- the low-VRAM variants and the Make-It-3D refine stage
    case(
        "lowvram/data-unknown-key",
        "coarse-lowvram.yaml",
        "data",
        GOOD + " data.widht=64",
        "did you mean data.width?",
    ),
    case(
        "lowvram/system-unknown-key",
        "refine-lowvram.yaml",
        "system",
        GOOD + " system.fix_geometry=true",
        "system.fix_geometry",
    ),
    case(
        "lowvram/guidance-nan",
        "refine-lowvram.yaml",
        "guidance",
        GOOD + f" {G}.guidance_scale=.inf",
        f"{G}.guidance_scale",
    ),
    case(
        "lowvram/m3d-guidance-key",
        "makeit3d-coarse-lowvram.yaml",
        "guidance",
        GOOD + f" {G}.step_range=[0,1]",
        f"{G}.step_range",
    ),
    case(
        "lowvram/m3d-refine-data",
        "makeit3d-refine-lowvram.yaml",
        "data",
        GOOD + " data.azimuth_sampling=x",
        "data.azimuth_sampling='x'",
    ),
    case(
        "m3d-refine/unknown-key",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.refne.point_cloud={}",
        "did you mean system.refine?",
    ),
    case(
        "m3d-refine/refine-unknown-key",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.refine.bogus=1",
        "system.refine.bogus",
    ),
    case(
        "m3d-refine/point-cloud-key",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.refine.point_cloud.resolutoin=64",
        "did you mean system.refine.point_cloud.resolution?",
    ),
    case(
        "m3d-refine/geometry-unknown-key",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.geometry.bogus=1",
        "system.geometry.bogus",
    ),
    case(
        "m3d-refine/renderer-unknown-key",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.renderer.bogus=1",
        "system.renderer.bogus",
    ),
    case(
        "m3d-refine/refine-nan",
        "makeit3d-refine.yaml",
        "system",
        GOOD + " system.refine.ref_l1_erosion_px=nan",
        "system.refine.ref_l1_erosion_px",
    ),
    case(
        "m3d-refine/guidance-key",
        "makeit3d-refine.yaml",
        "guidance",
        GOOD + f" {G}.bogus=1",
        f"{G}.bogus",
    ),
    # --- guidance: makeit3d-guidance (makeit3d-coarse.yaml)
    case(
        "m3d/unknown-key", "makeit3d-coarse.yaml", "guidance", GOOD + f" {G}.bogus=1", f"{G}.bogus"
    ),
    case(
        "m3d/misspelt-key",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.guidance_scal=3",
        f"did you mean {G}.guidance_scale?",
    ),
    case(
        "m3d/attention",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.attention=flash",
        f"{G}.attention",
        "'flash'",
    ),
    case(
        "m3d/clip-backend",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.clip_backend=openai",
        f"{G}.clip_backend",
    ),
    case(
        "m3d/min-step",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.min_step_percent=2",
        f"{G}.min_step_percent",
    ),
    case(
        "m3d/min-above-max",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.min_step_percent=0.7 {G}.max_step_percent=0.3",
        "min_step_percent <= max_step_percent",
    ),
    case(
        "m3d/weighting",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.weighting_strategy=sjc",
        f"{G}.weighting_strategy",
    ),
    case(
        "m3d/latent-mode",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.latent_mode=mode",
        f"{G}.latent_mode",
    ),
    case(
        "m3d/grad-clip-0",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.grad_clip=0",
        f"{G}.grad_clip",
    ),
    case(
        "m3d/guidance-nan",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.guidance_scale=nan",
        f"{G}.guidance_scale",
    ),
    case(
        "m3d/reference-rgb",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.cond_image_path={{in}}/photo.png",
        "cond_image_path",
        "no alpha channel",
    ),
    case(
        "m3d/model-missing",
        "makeit3d-coarse.yaml",
        "guidance",
        GOOD + f" {G}.pretrained_model_name_or_path={{in}}/no-model",
        f"{G}.pretrained_model_name_or_path",
        raises=ModelNotFoundError,
    ),
]


def _load(c: Case, inputs, tiny_root, tmp_path):
    from hifi123.testing.smoke import smoke_args
    from threestudio.utils.config import load_config

    overrides = [o.replace("{in}", str(inputs)) for o in c.overrides]
    return load_config(
        str(CONFIGS / c.config),
        cli_args=[f"exp_root_dir={tmp_path}", *smoke_args(c.config, tiny_root), *overrides],
    )


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_yaml(c, threestudio_env, inputs, tiny_models, tmp_path, monkeypatch, no_model_loads):
    find = threestudio_env.threestudio.find
    monkeypatch.chdir(threestudio_env.root)  # load/tets/ as launch.py sees it
    if c.id == "refine/tets-missing":
        monkeypatch.chdir(tmp_path)
    before = _hashes(inputs)
    cfg = _load(c, inputs, str(Path(tiny_models["sd2-base"]).parent), tmp_path)
    with pytest.raises(c.raises) as info:
        if c.build == "data":
            find(cfg.data_type)(cfg.data)
        elif c.build == "system":
            find(cfg.system_type)(cfg.system)
        else:
            find(cfg.system.guidance_type)(cfg.system.guidance)
    text = str(info.value)
    assert "\n  expected: " in text and "\n  fix: " in text, text
    assert "Traceback (most recent call last)" not in text
    for needle in c.needles:
        assert needle.replace("{in}", str(inputs)) in text, (needle, text)
    assert _hashes(inputs) == before


def test_the_good_config_builds(threestudio_env, inputs, tiny_models, tmp_path, monkeypatch):
    """The same configs without the bad override build: each case fails on its own override."""
    find = threestudio_env.threestudio.find
    monkeypatch.chdir(threestudio_env.root)
    tiny = str(Path(tiny_models["sd2-base"]).parent)
    for name, build in (
        ("coarse.yaml", "data"),
        ("coarse.yaml", "system"),
        ("makeit3d-coarse.yaml", "data"),
        ("refine.yaml", "guidance"),
        ("makeit3d-coarse.yaml", "guidance"),
    ):
        cfg = _load(Case("good", name, build, (GOOD,), ()), inputs, tiny, tmp_path)
        if build == "data":
            find(cfg.data_type)(cfg.data)
        elif build == "system":
            find(cfg.system_type)(cfg.system)
        else:
            assert find(cfg.system.guidance_type)(cfg.system.guidance) is not None


def test_the_table_covers_data_system_and_guidance():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {c.config for c in CASES} <= shipped and len(CASES) >= 80
    assert {c.build for c in CASES} == {"data", "system", "guidance"}
