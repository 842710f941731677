"""Every user mistake gets a clear early error, on every surface that needs no threestudio.

The cases are data: `CLI` (the `hifi123` subcommands, in process), `INSTALL` (install.sh, which
stops before installing anything) and `API` (our core settings and readers). Each case asserts the
exit code (2 for a `hifi123` user error, argparse usage errors too) or the exception type, that the
message names the file / option / field and says `expected:` and `fix:`, that nothing printed a
traceback, that no model was loaded first, and that every input file is byte-identical afterwards.
The YAML configs through threestudio's loader are in `test_bad_inputs_ts.py`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import pytest
from hifi123.errors import Hifi123Error, InputError, ModelNotFoundError
from PIL import Image
from run_helpers import tree_sha256

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "custom" / "hifi123" / "assets"
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Case:
    id: str
    # a `hifi123` command line ({in}, {out}, {ts}, {tiny:NAME} filled in)
    argv: Optional[str] = None
    call: Optional[Callable] = None  # an API call, given the input folder
    raises: type = InputError  # API: the exception type
    needles: Tuple[str, ...] = ()
    code: int = 2  # CLI / install.sh exit code
    env: Optional[dict] = None  # install.sh: extra environment


def cli(id, argv, *needles, code=2):
    return Case(id, argv=argv, needles=needles, code=code)


# ------------------------------------------------------------------------------------ inputs
def _u8(x):
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One folder of good and bad inputs; no case may change a byte of it."""
    d = tmp_path_factory.mktemp("bad-inputs")
    ref = Image.open(ASSETS / "sample_rgba.png").resize((64, 64))
    ref.save(d / "ref_rgba.png")
    Image.open(ASSETS / "sample_coarse_az090_rgba.png").resize((64, 64)).save(d / "coarse_rgba.png")
    (d / "coarse_copy").mkdir()
    shutil.copy(d / "coarse_rgba.png", d / "coarse_copy" / "coarse_rgba.png")
    ref.convert("RGB").save(d / "photo.png")
    Image.open(ASSETS / "sample_depth.png").convert("L").resize((64, 64)).save(d / "depth.png")
    Image.open(ASSETS / "sample_depth.png").convert("L").resize((32, 32)).save(
        d / "small_depth.png"
    )
    Image.open(ASSETS / "sample_normal.png").convert("RGB").resize((64, 64)).save(
        d / "colour_depth.png"
    )
    (d / "notimg.png").write_text("not an image")
    (d / "notmesh.obj").write_text("not a mesh")
    import trimesh

    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).export(d / "box.obj")
    ref.resize((64, 48)).save(d / "wide_rgba.png")
    ref.resize((16, 16)).save(d / "tiny_rgba.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    Image.fromarray(rgba).save(d / "empty_rgba.png")
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(d / "opaque_rgba.png")
    (d / "empty").mkdir()
    # a render that an output name would hit: --out here writes coarse_enhanced.png
    (d / "clash").mkdir()
    ref.save(d / "clash" / "coarse_enhanced.png")
    shutil.copy(d / "coarse_rgba.png", d / "clash" / "coarse_rgba.png")
    # views for `eval single-view`, GSO folders, meshes
    from hifi123.sample.make_sample import render_sample

    for name, n, size in (
        ("views", 4, 64),
        ("pred", 2, 64),
        ("gt", 2, 64),
        ("gt3", 3, 64),
        ("small", 2, 32),
    ):
        (d / name).mkdir()
        for i in range(n):
            r = render_sample(20.0, 360.0 * i / max(n, 1), size=size)
            Image.fromarray(_u8(np.where(r["alpha"][..., None], r["rgb"], 1.0))).save(
                d / name / f"{i:03d}.png"
            )
    (d / "mixed").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(d / "mixed" / "0.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "mixed" / "1.png")
    (d / "oblong").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(d / "oblong" / f"{i}.png")
    import trimesh

    trimesh.creation.box(extents=(1, 1, 1)).export(d / "box.obj")
    (d / "bad.ply").write_text("not a mesh")
    # run manifests; a threestudio trial for `hifi123 report`
    (d / "images.txt").write_text("ref_rgba.png\n")
    (d / "missing.txt").write_text("# photos\nnope.png\n")
    (d / "comments.txt").write_text("# only a comment\n\n")
    (d / "blank.txt").write_text("")
    (d / "twice.txt").write_text("ref_rgba.png\n./ref_rgba.png\n")
    (d / "trial" / "configs").mkdir(parents=True)
    (d / "trial" / "configs" / "parsed.yaml").write_text("name: x\n")
    (d / "trial" / "ckpts").mkdir()
    return d


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load, tiny-model write or benchmark fails the case: errors must come first."""
    from hifi123 import bench
    from hifi123.evaluation import models as eval_models
    from hifi123.models import loader, tiny

    def boom(*a, **k):
        raise AssertionError("a model was loaded (or work started) before the input error")

    for name in (
        "load_diffusion",
        "load_upscaler",
        "load_dpt",
        "load_clip",
        "load_segmenter",
        "load_blip2",
    ):
        monkeypatch.setattr(loader, name, boom)
    for name in ("ensure_tiny_models", "write_tiny_models"):
        monkeypatch.setattr(tiny, name, boom)
    for name in (
        "load_clip_embedder",
        "load_vgg19_features",
        "load_lpips",
        "ensure_tiny_eval_models",
    ):
        monkeypatch.setattr(eval_models, name, boom)
    monkeypatch.setattr(bench, "run", boom)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tiny_models):
    """Tiny model folders to pass explicitly, so that only the case's own model is wrong."""
    from hifi123.evaluation.models import ensure_tiny_eval_models
    from hifi123.preprocess.tiny import tiny_model_dirs

    root = str(tmp_path_factory.mktemp("tiny-extra"))
    dirs = {k: v for k, v in tiny_models.items()}
    dirs.update(ensure_tiny_eval_models(root))
    dirs.update(tiny_model_dirs(("dpt", "clipseg", "blip2"), root))
    return dirs


@pytest.fixture(scope="module")
def fake_ts(tmp_path_factory):
    from run_helpers import fake_threestudio

    root = tmp_path_factory.mktemp("ts")
    return {
        "linked": fake_threestudio(root / "a"),
        "unlinked": fake_threestudio(root / "b", link=False),
    }


# ------------------------------------------------------------------------------------ CLI cases
RGNV = "rgnv --ref {in}/ref_rgba.png --coarse {in}/coarse_rgba.png --out {out}"
RGNV_TINY = RGNV + " --model {tiny:sd2-depth}"
PRE = "preprocess {in}/ref_rgba.png --out {out} --caption a-cup"
PRE_MODELS = PRE + " --depth-model {tiny:dpt}"
SV = "eval single-view --ref {in}/ref_rgba.png --views {in}/views --tiny"
SV_MODELS = (
    "eval single-view --ref {in}/ref_rgba.png --views {in}/views --clip-model {tiny:open-clip} "
    "--vgg-model {tiny:vgg19} --lpips-model {tiny:lpips}"
)
GSO = "eval gso --pred {in}/pred --gt {in}/gt --tiny"
RUN = "run {in}/ref_rgba.png --threestudio-root {ts} --out {out} --dry-run"
ALIGN = "align-mesh {in}/box.obj --ref {in}/ref_rgba.png --out {out}"
RUN_M = "run --manifest {in}/images.txt --threestudio-root {ts} --out {out} --dry-run"

CLI = [
    # --- tiny-models
    cli("tiny-models/no-out", "tiny-models", "--out", "required"),
    cli("tiny-models/out-holds-files", "tiny-models --out {in}", "{in}", "already holds files"),
    cli(
        "tiny-models/out-holds-views", "tiny-models --out {in}/views", "{in}/views", "did not write"
    ),
    cli("tiny-models/out-is-a-file", "tiny-models --out {in}/notimg.png", "notimg.png is a file"),
    cli(
        "tiny-models/unknown-flag",
        "tiny-models --out {out} --bogus",
        "unrecognized arguments: --bogus",
    ),
    cli(
        "tiny-models/extra-positional",
        "tiny-models extra --out {out}",
        "unrecognized arguments: extra",
    ),
    # --- rgnv: the reference and coarse images
    cli("rgnv/ref-missing", RGNV.replace("ref_rgba", "nope"), "--ref", "nope.png", "not found"),
    cli(
        "rgnv/ref-rgb",
        RGNV.replace("ref_rgba", "photo"),
        "--ref",
        "photo.png",
        "no alpha channel",
        "hifi123 preprocess",
    ),
    cli(
        "rgnv/ref-not-an-image",
        RGNV.replace("ref_rgba", "notimg"),
        "--ref",
        "notimg.png",
        "not a readable image",
    ),
    cli(
        "rgnv/ref-empty-mask",
        RGNV.replace("ref_rgba", "empty_rgba"),
        "--ref",
        "empty_rgba.png",
        "empty mask",
    ),
    cli(
        "rgnv/ref-opaque",
        RGNV.replace("ref_rgba", "opaque_rgba"),
        "--ref",
        "opaque_rgba.png",
        "opaque everywhere",
    ),
    cli(
        "rgnv/ref-too-small",
        RGNV.replace("ref_rgba", "tiny_rgba"),
        "--ref",
        "tiny_rgba.png",
        "16x16",
    ),
    cli(
        "rgnv/ref-not-square",
        RGNV.replace("ref_rgba", "wide_rgba"),
        "--ref",
        "wide_rgba.png",
        "not square",
    ),
    cli(
        "rgnv/coarse-missing",
        RGNV.replace("coarse_rgba", "nope"),
        "--coarse",
        "nope.png",
        "not found",
    ),
    cli(
        "rgnv/coarse-rgb",
        RGNV.replace("coarse_rgba", "photo"),
        "--coarse",
        "photo.png",
        "no alpha channel",
    ),
    cli(
        "rgnv/coarse-not-an-image", RGNV.replace("coarse_rgba", "notimg"), "--coarse", "notimg.png"
    ),
    cli(
        "rgnv/coarse-empty-mask",
        RGNV.replace("coarse_rgba", "empty_rgba"),
        "--coarse",
        "empty mask",
    ),
    # --- rgnv: depth maps
    cli(
        "rgnv/ref-depth-colour",
        RGNV + " --ref-depth {in}/colour_depth.png",
        "--ref-depth",
        "colour_depth.png",
        "colour image",
    ),
    cli(
        "rgnv/ref-depth-size",
        RGNV + " --ref-depth {in}/small_depth.png",
        "--ref-depth",
        "32x32",
        "64x64",
    ),
    cli(
        "rgnv/ref-depth-missing",
        RGNV + " --ref-depth {in}/nope.png",
        "--ref-depth",
        "nope.png",
        "not found",
    ),
    cli(
        "rgnv/ref-depth-not-an-image",
        RGNV + " --ref-depth {in}/notimg.png",
        "--ref-depth",
        "notimg.png",
    ),
    cli(
        "rgnv/depth-count",
        RGNV + " --depth {in}/depth.png {in}/depth.png",
        "1 --coarse views but 2 --depth",
    ),
    cli(
        "rgnv/depth-colour",
        RGNV + " --depth {in}/colour_depth.png",
        "--depth",
        "colour_depth.png",
        "colour image",
    ),
    cli(
        "rgnv/depth-size",
        RGNV + " --depth {in}/small_depth.png",
        "--depth",
        "small_depth.png",
        "32x32",
    ),
    # --- rgnv: outputs
    cli("rgnv/out-is-a-file", RGNV.replace("{out}", "{in}/notimg.png"), "notimg.png", "--out"),
    cli(
        "rgnv/out-overwrites-ref",
        "rgnv --ref {in}/clash/coarse_enhanced.png --coarse {in}/clash/coarse_rgba.png "
        "--out {in}/clash",
        "coarse_enhanced.png",
        "which is an input (--ref)",
    ),
    cli(
        "rgnv/two-coarse-one-name",
        RGNV.replace(
            "{in}/coarse_rgba.png", "{in}/coarse_rgba.png {in}/coarse_copy/coarse_rgba.png"
        ),
        "coarse_enhanced.png",
        "would both be written",
    ),
    # --- rgnv: options
    cli("rgnv/steps-0", RGNV + " --steps 0", "argument --steps", "an integer >= 1"),
    cli("rgnv/steps-text", RGNV + " --steps ten", "argument --steps", "'ten'"),
    cli("rgnv/steps-no-value", RGNV + " --steps", "argument --steps", "expected one argument"),
    cli("rgnv/inject-steps-0", RGNV + " --inject-steps 0", "argument --inject-steps", ">= 1"),
    cli(
        "rgnv/inject-more-than-steps",
        RGNV_TINY + " --steps 10 --inject-steps 20",
        "--inject-steps 20 is more than --steps 10",
        "--inject-steps 10",
    ),
    cli("rgnv/guidance-nan", RGNV + " --guidance-scale nan", "argument --guidance-scale", "finite"),
    cli(
        "rgnv/guidance-negative",
        RGNV + " --guidance-scale -1",
        "argument --guidance-scale",
        ">= 0.0",
    ),
    cli("rgnv/batch-size-0", RGNV + " --batch-size 0", "argument --batch-size"),
    cli("rgnv/upscale-steps-0", RGNV + " --upscale-steps 0", "argument --upscale-steps"),
    cli("rgnv/device-typo", RGNV + " --device cdu", "argument --device", "'cdu'"),
    cli("rgnv/device-no-cuda", RGNV + " --device cuda:1", "argument --device", "no CUDA device"),
    cli("rgnv/unknown-flag", RGNV + " --bogus", "unrecognized arguments: --bogus"),
    cli("rgnv/no-ref", "rgnv --coarse {in}/coarse_rgba.png --out {out}", "required: --ref"),
    cli(
        "rgnv/no-out",
        "rgnv --ref {in}/ref_rgba.png --coarse {in}/coarse_rgba.png",
        "required: --out",
    ),
    cli(
        "rgnv/no-coarse-value",
        "rgnv --ref {in}/ref_rgba.png --out {out} --coarse",
        "argument --coarse",
    ),
    # --- rgnv: models
    cli(
        "rgnv/model-missing", RGNV + " --model {in}/no-model", "--model", "no-model", "no directory"
    ),
    cli("rgnv/model-not-a-model", RGNV + " --model {in}/views", "--model", "lacks unet"),
    cli("rgnv/model-empty", RGNV + " --model ''", "--model", "no model given"),
    cli(
        "rgnv/tiny-and-model",
        RGNV + " --tiny --model {in}/no-model",
        "--tiny and --model",
        "drop --tiny",
    ),
    cli(
        "rgnv/tiny-and-upscaler",
        RGNV + " --tiny --upscale --upscaler-model {in}/x",
        "--upscaler-model",
    ),
    cli(
        "rgnv/upscaler-missing",
        RGNV_TINY + " --upscale --upscaler-model {in}/no-up",
        "--upscaler-model",
        "no-up",
    ),
    # --- bench
    cli(
        "bench/unknown-benchmark",
        "bench foo",
        "invalid choice: 'foo'",
        "one of 'rgnv', 'rgsd', 'raster'",
    ),
    cli("bench/rgnv-views-0", "bench rgnv --views 0", "argument --views"),
    cli(
        "bench/rgnv-inject-more",
        "bench rgnv --steps 10 --inject-steps 20",
        "--inject-steps 20",
        "--steps 10",
    ),
    cli("bench/rgnv-repeats-text", "bench rgnv --repeats many", "argument --repeats", "'many'"),
    cli(
        "bench/rgsd-inject-more",
        "bench rgsd --steps 5 --inject-steps 9",
        "--inject-steps 9",
        "--steps 5",
    ),
    cli("bench/rgsd-iterations-text", "bench rgsd --iterations x", "argument --iterations"),
    cli("bench/rgsd-steps-negative", "bench rgsd --steps -3", "argument --steps"),
    cli("bench/raster-size-not-4", "bench raster --size 30", "argument --size", "multiple of 4"),
    cli("bench/raster-size-small", "bench raster --size 8", "argument --size", ">= 16"),
    cli("bench/raster-threads", "bench raster --threads -1", "argument --threads"),
    cli("bench/raster-repeats", "bench raster --repeats 0", "argument --repeats"),
    cli("bench/raster-azimuths", "bench raster --azimuths 0", "argument --azimuths"),
    cli("bench/unknown-flag", "bench rgsd --bogus", "unrecognized arguments: --bogus"),
    # --- preprocess
    cli("preprocess/missing", PRE.replace("ref_rgba", "nope"), "nope.png", "input not found"),
    cli(
        "preprocess/not-an-image",
        PRE.replace("ref_rgba", "notimg"),
        "notimg.png",
        "not a readable image",
    ),
    cli("preprocess/too-small", PRE.replace("ref_rgba", "tiny_rgba"), "tiny_rgba.png", "too small"),
    cli(
        "preprocess/empty-alpha",
        PRE.replace("ref_rgba", "empty_rgba"),
        "empty_rgba.png",
        "empty foreground",
        "--ignore-alpha",
    ),
    cli(
        "preprocess/out-overwrites-input",
        "preprocess {in}/ref_rgba.png --out {in} --caption x",
        "ref_rgba.png",
        "would overwrite the input",
    ),
    cli(
        "preprocess/folder-into-itself",
        "preprocess {in}/clash --out {in}/clash --caption x",
        "would overwrite the input",
    ),
    cli("preprocess/empty-folder", "preprocess {in}/empty --out {out}", "empty holds no images"),
    cli(
        "preprocess/out-is-a-file", PRE.replace("{out}", "{in}/notimg.png"), "notimg.png is a file"
    ),
    cli("preprocess/caption-blank", PRE.replace("a-cup", "' '"), "--caption"),
    cli("preprocess/size-small", PRE + " --size 8", "argument --size", ">= 16"),
    cli("preprocess/size-text", PRE + " --size big", "argument --size", "'big'"),
    cli(
        "preprocess/border-too-wide",
        PRE + " --border-ratio 0.95",
        "argument --border-ratio",
        "[0.0, 0.9]",
    ),
    cli("preprocess/border-nan", PRE + " --border-ratio nan", "argument --border-ratio", "finite"),
    cli("preprocess/seg-threshold", PRE + " --seg-threshold 1.5", "argument --seg-threshold"),
    cli("preprocess/fovy-0", PRE + " --fovy 0", "argument --fovy"),
    cli("preprocess/fovy-180", PRE + " --fovy 180", "argument --fovy"),
    cli("preprocess/elevation", PRE + " --elevation 91", "argument --elevation"),
    cli("preprocess/azimuth-inf", PRE + " --azimuth inf", "argument --azimuth"),
    cli("preprocess/relief-0", PRE + " --relief 0", "argument --relief", "(0.0, 10.0]"),
    cli(
        "preprocess/caption-and-no-caption",
        PRE + " --no-caption",
        "--no-caption",
        "not allowed with",
        "drop one",
    ),
    cli("preprocess/device", PRE + " --device tpu", "argument --device", "'tpu'"),
    cli("preprocess/no-input", "preprocess --out {out}", "IMAGE_OR_DIR", "required"),
    cli(
        "preprocess/depth-model-missing",
        PRE + " --depth-model {in}/no-dpt",
        "--depth-model",
        "no-dpt",
    ),
    cli(
        "preprocess/depth-model-not-a-model",
        PRE + " --depth-model {in}/views",
        "--depth-model",
        "views",
    ),
    cli(
        "preprocess/seg-model-missing",
        "preprocess {in}/photo.png --out {out} --caption x --depth-model {tiny:dpt} "
        "--seg-model {in}/no-seg",
        "--seg-model",
        "no-seg",
    ),
    cli(
        "preprocess/caption-model-missing",
        "preprocess {in}/ref_rgba.png --out {out} --depth-model {tiny:dpt} "
        "--caption-model {in}/no-blip",
        "--caption-model",
        "no-blip",
    ),
    # --- eval single-view
    cli(
        "eval-sv/views-missing", SV.replace("{in}/views", "{in}/nope"), "--views", "does not exist"
    ),
    cli(
        "eval-sv/views-empty",
        SV.replace("{in}/views", "{in}/empty"),
        "no test renders and no images",
    ),
    cli("eval-sv/views-mixed-sizes", SV.replace("{in}/views", "{in}/mixed"), "1.png is 32x32"),
    cli("eval-sv/ref-rgb", SV.replace("ref_rgba", "photo"), "photo.png", "no alpha channel"),
    cli("eval-sv/ref-missing", SV.replace("ref_rgba", "nope"), "nope.png", "not found"),
    cli("eval-sv/ref-not-an-image", SV.replace("ref_rgba", "notimg"), "notimg.png"),
    cli("eval-sv/ref-view-index", SV + " --ref-view 40", "--ref-view 40"),
    cli("eval-sv/ref-view-name", SV + " --ref-view nope.png", "--ref-view", "nope.png"),
    cli(
        "eval-sv/out-is-an-input",
        SV + " --out {in}/ref_rgba.png",
        "ref_rgba.png",
        "which is an input (--ref)",
    ),
    cli("eval-sv/out-is-a-view", SV + " --out {in}/views/000.png", "000.png", "which is an input"),
    cli("eval-sv/out-is-a-directory", SV + " --out {in}/empty", "--out", "is a directory"),
    cli(
        "eval-sv/out-under-a-file", SV + " --out {in}/notimg.png/report.json", "--out", "notimg.png"
    ),
    cli("eval-sv/lpips-net", SV + " --lpips-net squeeze", "argument --lpips-net", "'alex', 'vgg'"),
    cli("eval-sv/lpips-size", SV + " --lpips-size 0", "argument --lpips-size"),
    cli("eval-sv/cx-size", SV + " --cx-size 8", "argument --cx-size"),
    cli("eval-sv/cx-band-width", SV + " --cx-band-width 0", "argument --cx-band-width"),
    cli("eval-sv/ref-azimuth-nan", SV + " --ref-azimuth nan", "argument --ref-azimuth"),
    cli("eval-sv/cx-layer", SV + " --cx-layer relu9_9", "--cx-layer relu9_9", "relu5_4"),
    cli(
        "eval-sv/clip-model-missing",
        SV_MODELS.replace("{tiny:open-clip}", "{in}/no-clip"),
        "--clip-model",
        "no-clip",
    ),
    cli(
        "eval-sv/vgg-model-missing",
        SV_MODELS.replace("{tiny:vgg19}", "{in}/no-vgg"),
        "--vgg-model",
        "no-vgg",
    ),
    cli(
        "eval-sv/lpips-model-missing",
        SV_MODELS.replace("{tiny:lpips}", "{in}/no-lpips"),
        "--lpips-model",
        "no-lpips",
    ),
    cli("eval-sv/device", SV + " --device gpu0", "argument --device"),
    cli("eval-sv/no-protocol-arg", "eval single-view --views {in}/views", "required: --ref"),
    # --- eval gso
    cli(
        "eval-gso/pred-missing",
        GSO.replace("{in}/pred", "{in}/nope"),
        "--pred",
        "is not a directory",
    ),
    cli("eval-gso/gt-empty", GSO.replace("{in}/gt", "{in}/empty"), "--gt", "holds no images"),
    cli(
        "eval-gso/size-mismatch", GSO.replace("{in}/gt", "{in}/small"), "size mismatch", "is 32x32"
    ),
    cli("eval-gso/count-mismatch", GSO.replace("{in}/gt", "{in}/gt3"), "has 2 views but --gt"),
    cli("eval-gso/not-square", GSO.replace("{in}/pred", "{in}/oblong"), "--pred", "not square"),
    cli(
        "eval-gso/pred-mesh-missing",
        GSO + " --pred-mesh {in}/nope.obj --gt-mesh {in}/box.obj",
        "--pred-mesh",
        "does not exist",
    ),
    cli("eval-gso/gt-mesh-missing", GSO + " --pred-mesh {in}/box.obj", "--gt-mesh is missing"),
    cli(
        "eval-gso/mesh-unreadable",
        GSO + " --pred-mesh {in}/bad.ply --gt-mesh {in}/box.obj",
        "--pred-mesh",
        "bad.ply",
    ),
    cli("eval-gso/out-is-gt", GSO + " --out {in}/gt/000.png", "000.png", "which is an input (--gt"),
    cli(
        "eval-gso/out-is-mesh",
        GSO + " --pred-mesh {in}/box.obj --gt-mesh {in}/box.obj --out {in}/box.obj",
        "box.obj",
        "which is an input",
    ),
    cli("eval-gso/size-negative", GSO + " --size -256", "argument --size"),
    cli("eval-gso/depth-size-text", GSO + " --depth-size x", "argument --depth-size"),
    cli("eval-gso/voxel-nan", GSO + " --voxel-size nan", "argument --voxel-size"),
    cli("eval-gso/voxel-0", GSO + " --voxel-size 0", "argument --voxel-size"),
    cli("eval-gso/iou-resolution", GSO + " --iou-resolution 4", "argument --iou-resolution"),
    cli("eval-gso/surface-samples", GSO + " --surface-samples 0", "argument --surface-samples"),
    cli(
        "eval-gso/mesh-normalize",
        GSO + " --mesh-normalize unit",
        "argument --mesh-normalize",
        "'unit-bbox'",
    ),
    cli("eval-gso/up", GSO + " --up x", "argument --up", "'z', 'y'"),
    cli("eval-gso/chamfer-points", GSO + " --chamfer-points mesh", "argument --chamfer-points"),
    cli("eval-gso/unknown-protocol", "eval gso3d", "invalid choice: 'gso3d'"),
    # --- run
    cli("run/no-image", "run --threestudio-root {ts} --dry-run", "IMAGE or --manifest"),
    cli("run/image-and-manifest", RUN + " --manifest {in}/images.txt", "not both"),
    cli("run/image-missing", RUN.replace("ref_rgba", "nope"), "nope.png", "not found"),
    cli("run/manifest-missing", RUN_M.replace("images.txt", "nope.txt"), "nope.txt", "not found"),
    cli(
        "run/manifest-entry-missing",
        RUN_M.replace("images.txt", "missing.txt"),
        "missing.txt",
        "line 2",
        "nope.png",
    ),
    cli(
        "run/manifest-only-comments",
        RUN_M.replace("images.txt", "comments.txt"),
        "comments.txt",
        "no images",
    ),
    cli("run/manifest-empty", RUN_M.replace("images.txt", "blank.txt"), "blank.txt", "no images"),
    cli(
        "run/manifest-repeats",
        RUN_M.replace("images.txt", "twice.txt"),
        "line 2 repeats the image of line 1",
    ),
    cli(
        "run/manifest-is-an-image",
        RUN_M.replace("images.txt", "ref_rgba.png"),
        "ref_rgba.png",
        "binary file",
    ),
    cli("run/gpu-letters", RUN + " --gpu a,b", "--gpu 'a,b'"),
    cli("run/gpu-negative", RUN + " --gpu -1", "--gpu"),
    cli("run/gpus-with-image", RUN + " --gpus 0,1", "--gpus is for --manifest"),
    cli("run/gpu-with-manifest", RUN_M + " --gpu 0", "--gpu is for one image"),
    cli("run/gpus-repeat", RUN_M + " --gpus 0,0", "--gpus 0,0 repeats a GPU"),
    cli("run/gpu-repeat", RUN + " --gpu 0,0", "--gpu 0,0 repeats a GPU"),
    cli(
        "run/image-not-an-image",
        RUN.replace("ref_rgba", "notimg"),
        "notimg.png",
        "not a readable image",
    ),
    cli(
        "run/set-nan",
        RUN + " --set coarse:system.loss.lambda_rgb=nan",
        "--set",
        "not a finite number",
    ),
    cli("run/set-inf", RUN + " --set trainer.max_steps=.inf", "--set", "not a finite number"),
    cli("run/prompt-with-manifest", RUN_M + " --prompt owl", "--prompt with --manifest"),
    cli("run/prompt-empty", RUN + " --prompt ' '", "--prompt is empty"),
    cli("run/set-no-value", RUN + " --set novalue", "--set", "'novalue'"),
    cli(
        "run/set-misspelt-loss",
        RUN + " --set system.loss.lamda_rgb=500",
        "--set system.loss.lamda_rgb",
        "did you mean lambda_rgb",
    ),
    cli(
        "run/set-loss-of-one-stage",
        RUN + " --set system.loss.lambda_rgsd=10",
        "the coarse stage (coarse.yaml) has no loss weight 'lambda_rgsd'",
        "--set refine:system.loss.lambda_rgsd",
    ),
    cli(
        "run/set-loss-not-of-that-stage",
        RUN + " --method makeit3d --set refine:system.loss.lambda_rgsd=10",
        "the refine stage (makeit3d-refine.yaml) has no loss weight 'lambda_rgsd'",
    ),
    cli("run/set-bad-stage", RUN + " --set bogus:x=1", "--set", "unknown stage 'bogus'"),
    cli("run/method", RUN + " --method dreamfusion", "argument --method", "'hifi123', 'makeit3d'"),
    cli(
        "run/root-not-threestudio",
        RUN.replace("{ts}", "{in}"),
        "--threestudio-root",
        "no launch.py",
    ),
    cli(
        "run/root-not-linked", RUN.replace("{ts}", "{ts_unlinked}"), "custom/hifi123", "install.sh"
    ),
    cli("run/unknown-flag", RUN + " --gpu-id 0", "unrecognized arguments: --gpu-id"),
    # --- report
    cli("report/missing", "report {in}/nope", "nope not found", "hifi123 report OUT"),
    cli("report/a-file", "report {in}/notimg.png", "notimg.png is not a folder"),
    cli("report/not-a-run", "report {in}/views", "views holds neither run records"),
    cli(
        "report/dest-holds-files",
        "report {in}/trial --dest {in}/views",
        "views already holds files",
    ),
    cli(
        "report/dest-is-a-file", "report {in}/trial --dest {in}/notimg.png", "notimg.png is a file"
    ),
    cli(
        "report/dest-is-the-trial",
        "report {in}/trial --dest {in}/trial",
        "trial already holds files",
    ),
    cli("report/no-out", "report", "OUT", "required"),
    cli("report/unknown-flag", "report {in}/trial --open", "unrecognized arguments: --open"),
    # --- align-mesh: every input checked before any fitting
    cli("align-mesh/missing-mesh", ALIGN.replace("box.obj", "nope.obj"), "nope.obj", "not found"),
    cli(
        "align-mesh/not-a-mesh",
        ALIGN.replace("box.obj", "notmesh.obj"),
        "notmesh.obj",
        "no triangles",
    ),
    cli("align-mesh/ref-missing", ALIGN.replace("ref_rgba", "nope"), "--ref", "nope.png"),
    cli(
        "align-mesh/ref-rgb",
        ALIGN.replace("ref_rgba", "photo"),
        "--ref",
        "photo.png",
        "no alpha channel",
    ),
    cli("align-mesh/ref-empty-mask", ALIGN.replace("ref_rgba", "empty_rgba"), "empty_rgba.png"),
    cli(
        "align-mesh/out-is-a-file",
        "align-mesh {in}/box.obj --ref {in}/ref_rgba.png --out {in}/notimg.png",
        "notimg.png",
    ),
    cli(
        "align-mesh/depth-not-an-image",
        ALIGN + " --depth {in}/notimg.png",
        "--depth",
        "not a readable image",
    ),
    cli("align-mesh/elevation-out-of-range", ALIGN + " --elevation 95", "--elevation", "95"),
    cli("align-mesh/bad-pose-axis", ALIGN + " --pose up=+q", "--pose up=+q", "+y"),
    cli("align-mesh/no-ref", "align-mesh {in}/box.obj --out {out}", "--ref", "required"),
]


def _argv(case, inputs, out, fake_ts, dirs):
    text = case.argv.replace("{in}", str(inputs)).replace("{out}", str(out))
    text = text.replace("{ts_unlinked}", fake_ts["unlinked"]).replace("{ts}", fake_ts["linked"])
    for name, path in dirs.items():
        text = text.replace("{tiny:" + name + "}", path)
    return shlex.split(text)


@pytest.mark.parametrize("case", CLI, ids=[c.id for c in CLI])
def test_cli(case, inputs, tmp_path, fake_ts, model_dirs, capsys, monkeypatch, no_model_loads):
    import torch
    from hifi123 import cli as hifi123_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device cuda:1 is not there
    argv = _argv(case, inputs, tmp_path / "out", fake_ts, model_dirs)
    before = tree_sha256(inputs)
    try:
        code = hifi123_cli.main(argv)
    except SystemExit as exit_:  # argparse usage errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == case.code, (argv, out, err)
    assert TRACEBACK not in out + err
    assert "\n  expected: " in err and "\n  fix: " in err, err
    for needle in case.needles:
        assert needle.replace("{in}", str(inputs)) in err, (needle, err)
    assert tree_sha256(inputs) == before


# ------------------------------------------------------------------------------------ install.sh
INSTALL = [
    Case(
        "install/unknown-flag",
        "--bogus",
        needles=("unknown argument '--bogus'", "bash install.sh --help"),
    ),
    Case("install/short-flag", "-t", needles=("unknown argument '-t'",)),
    Case("install/positional", "test", needles=("unknown argument 'test'",)),
    Case("install/flag-with-value", "--test=1", needles=("unknown argument '--test=1'",)),
    Case("install/upper-case", "--TEST", needles=("unknown argument '--TEST'",)),
    Case("install/bad-after-good", "--test --bogus", needles=("unknown argument '--bogus'",)),
    Case(
        "install/latest-alone",
        "--latest",
        needles=("--latest without --test", "bash install.sh --test --latest"),
    ),
    Case("install/latest-force", "--latest --force", needles=("--latest without --test",)),
    Case("install/force-latest", "--force --latest", needles=("--latest without --test",)),
    Case(
        "install/python-missing",
        "",
        code=1,
        env={"PYTHON": "/nonexistent/python3"},
        needles=("PYTHON='/nonexistent/python3' not found", "PYTHON=/path/to/python3"),
    ),
    Case(
        "install/test-python-missing",
        "--test",
        code=1,
        env={"PYTHON": "/nonexistent/python3"},
        needles=("PYTHON='/nonexistent/python3' not found", "Python 3.9-3.11"),
    ),
    Case(
        "install/python-without-torch",
        "",
        code=1,
        env={"PYTHON": "false"},
        needles=("torch is not installed in 'false'", "CUDA build of torch"),
    ),
]


def _repo_state():
    """(size, mtime) of every file of the checkout, and the top level of each virtual env (a
    pip install touches it): cheap enough to take twice per case, and any write shows."""
    state = {}
    for root, dirs, files in os.walk(REPO):
        rel = os.path.relpath(root, REPO)
        if rel.split(os.sep)[0].startswith(".venv"):
            state[rel] = sorted(
                (n, os.stat(os.path.join(root, n)).st_mtime_ns) for n in dirs + files
            )
            dirs[:] = []
            continue
        dirs[:] = [
            d for d in dirs if d not in (".git", "__pycache__", ".pytest_cache", ".ruff_cache")
        ]
        for name in files:
            st = os.stat(os.path.join(root, name))
            state[os.path.join(rel, name)] = (st.st_size, st.st_mtime_ns)
    return state


@pytest.mark.parametrize("case", INSTALL, ids=[c.id for c in INSTALL])
def test_install_sh(case, tmp_path):
    env = dict(os.environ, **(case.env or {}))
    env.pop("THREESTUDIO_ROOT", None)
    top = _repo_state()
    proc = subprocess.run(
        ["bash", str(REPO / "install.sh"), *shlex.split(case.argv)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == case.code, proc.stderr
    assert TRACEBACK not in proc.stdout + proc.stderr
    assert "\n  expected: " in proc.stderr and "\n  fix: " in proc.stderr, proc.stderr
    for needle in case.needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    # nothing created, removed or changed in the repository (no venv, no threestudio clone)
    assert _repo_state() == top
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ Python API
def _rgnv(**kw):
    from hifi123.core.hifi123.rgnv import RGNVConfig

    return lambda d: RGNVConfig(**kw).validate()


def _rgsd(files=False, **kw):
    from hifi123.core.hifi123.rgsd import RGSDConfig

    def call(d):
        fields = {k: (v.format(d=d) if isinstance(v, str) else v) for k, v in kw.items()}
        RGSDConfig(**fields).validate(check_files=files)

    return call


def _loss(**kw):
    from hifi123.core.hifi123.rgnv_loss import RGNVLossConfig

    return lambda d: RGNVLossConfig(**kw).validate(check_files=False)


def _prior(guidance=False, **kw):
    from hifi123.core.makeit3d.prior import MakeIt3DGuidanceConfig, MakeIt3DPriorConfig

    return lambda d: (MakeIt3DGuidanceConfig if guidance else MakeIt3DPriorConfig)(**kw).validate()


def _schedule(**kw):
    from hifi123.core.makeit3d.cameras import ReferenceSchedule

    return lambda d: ReferenceSchedule(**kw)


def _rgba(name, **kw):
    from hifi123.core.images import load_rgba

    return lambda d: load_rgba(str(d / name), role="reference image", **kw)


def _depth(name, shape=(64, 64)):
    from hifi123.core.images import load_depth

    return lambda d: load_depth(str(d / name), shape, role="depth map")


def _prompt(d):
    from hifi123.core.prompts import resolve_prompt

    return resolve_prompt(str(d / "photo.png"), "", prompt_field="system.prompt")


def _outputs(d):
    from hifi123.outputs import check_outputs

    return check_outputs(
        [("the depth map", str(d / "depth.png"))],
        [("--depth", str(d / "depth.png"))],
        "some command",
    )


def _claim(d):
    from hifi123.outputs import claim_folder

    return claim_folder(str(d / "views"), ".marker", "some command")


def _preflight(ref, **kw):
    from hifi123.models.loader import preflight

    return lambda d: preflight(ref.format(d=d), "model_field", **kw)


def api(id, call, raises, *needles):
    return Case(id, call=call, raises=raises, needles=needles)


API = [
    api("RGNVConfig/num_steps-0", _rgnv(num_steps=0), ValueError, "num_steps"),
    api("RGNVConfig/num_steps-text", _rgnv(num_steps="50"), ValueError, "num_steps", "a number"),
    api("RGNVConfig/inject_steps-0", _rgnv(inject_steps=0), ValueError, "inject_steps"),
    api(
        "RGNVConfig/inject_steps-above",
        _rgnv(num_steps=10, inject_steps=11),
        ValueError,
        "inject_steps",
        "num_steps=10",
    ),
    api("RGNVConfig/guidance-negative", _rgnv(guidance_scale=-1.0), ValueError, "guidance_scale"),
    api(
        "RGNVConfig/guidance-inf",
        _rgnv(guidance_scale=float("inf")),
        ValueError,
        "guidance_scale",
        "finite",
    ),
    api(
        "RGNVConfig/guidance-nan", _rgnv(guidance_scale=float("nan")), ValueError, "guidance_scale"
    ),
    api("RGNVConfig/steps_offset-negative", _rgnv(steps_offset=-1), ValueError, "steps_offset"),
    api("RGNVConfig/cfg_form", _rgnv(cfg_form="classic"), ValueError, "cfg_form", "'classic'"),
    api(
        "RGNVConfig/reference_background",
        _rgnv(reference_background="blue"),
        ValueError,
        "reference_background",
    ),
    api(
        "RGNVConfig/coarse_background", _rgnv(coarse_background=""), ValueError, "coarse_background"
    ),
    api(
        "RGNVConfig/reference_prompt",
        _rgnv(reference_prompt="a cup"),
        ValueError,
        "reference_prompt",
    ),
    api("RGSDConfig/weighting", _rgsd(weighting="sds"), ValueError, "weighting", "'sds'"),
    api("RGSDConfig/depth_source", _rgsd(depth_source="lidar"), ValueError, "depth_source"),
    api("RGSDConfig/depth_type", _rgsd(depth_type="inverse"), ValueError, "depth_type"),
    api(
        "RGSDConfig/mask_dilation-negative",
        _rgsd(mask_dilation_px=-2),
        ValueError,
        "mask_dilation_px",
    ),
    api("RGSDConfig/num_steps-nan", _rgsd(num_steps=float("nan")), ValueError, "num_steps"),
    api(
        "RGSDConfig/inject_steps-above",
        _rgsd(num_steps=20, inject_steps=21),
        ValueError,
        "inject_steps",
    ),
    api("RGSDConfig/fixed_views-empty", _rgsd(fixed_views=()), ValueError, "fixed_views"),
    api(
        "RGSDConfig/fixed_views-not-pairs",
        _rgsd(fixed_views=((0.0,), (0.0, 90.0))),
        ValueError,
        "fixed_views",
    ),
    api(
        "RGSDConfig/no-depth-at-all",
        _rgsd(load_depth_estimator=False),
        ValueError,
        "load_depth_estimator",
        "cond_depth_path",
    ),
    api("RGSDConfig/no-reference", _rgsd(files=True), InputError, "cond_image_path"),
    api(
        "RGSDConfig/reference-missing",
        _rgsd(files=True, cond_image_path="{d}/nope.png"),
        InputError,
        "cond_image_path",
        "nope.png",
    ),
    api(
        "RGSDConfig/depth-missing",
        _rgsd(files=True, cond_image_path="{d}/ref_rgba.png", cond_depth_path="{d}/nope_depth.png"),
        InputError,
        "cond_depth_path",
    ),
    api("RGNVLossConfig/loss_type", _loss(loss_type="l2"), ValueError, "loss_type", "'l2'"),
    api(
        "RGNVLossConfig/target_background",
        _loss(target_background="black"),
        ValueError,
        "target_background",
    ),
    api(
        "MakeIt3DPriorConfig/guidance-negative",
        _prior(guidance_scale=-0.5),
        ValueError,
        "guidance_scale",
    ),
    api(
        "MakeIt3DPriorConfig/min-step-above-1",
        _prior(min_step_percent=1.5),
        ValueError,
        "min_step_percent",
    ),
    api(
        "MakeIt3DPriorConfig/max-step-nan",
        _prior(max_step_percent=float("nan")),
        ValueError,
        "max_step_percent",
    ),
    api(
        "MakeIt3DPriorConfig/min-above-max",
        _prior(min_step_percent=0.7, max_step_percent=0.3),
        ValueError,
        "min_step_percent <= max_step_percent",
    ),
    api(
        "MakeIt3DPriorConfig/clip-d-step",
        _prior(clip_d_max_step_percent=-0.1),
        ValueError,
        "clip_d_max_step_percent",
    ),
    api(
        "MakeIt3DPriorConfig/back-threshold",
        _prior(back_threshold_deg=-1.0),
        ValueError,
        "back_threshold_deg",
    ),
    api(
        "MakeIt3DPriorConfig/weighting",
        _prior(weighting_strategy="sjc"),
        ValueError,
        "weighting_strategy",
    ),
    api("MakeIt3DPriorConfig/latent_mode", _prior(latent_mode="mode"), ValueError, "latent_mode"),
    api("MakeIt3DPriorConfig/grad_clip-0", _prior(grad_clip=0.0), ValueError, "grad_clip"),
    api(
        "MakeIt3DGuidanceConfig/attention",
        _prior(True, attention="flash"),
        ValueError,
        "attention",
        "'flash'",
    ),
    api(
        "MakeIt3DGuidanceConfig/clip_backend",
        _prior(True, clip_backend="openai"),
        ValueError,
        "clip_backend",
    ),
    api("ReferenceSchedule/mode", _schedule(mode="alternate"), ValueError, "mode", "'alternate'"),
    api("ReferenceSchedule/ref_fraction", _schedule(ref_fraction=1.5), ValueError, "ref_fraction"),
    api(
        "ReferenceSchedule/ref_fraction-nan",
        _schedule(ref_fraction=float("nan")),
        ValueError,
        "ref_fraction",
    ),
    api("ReferenceSchedule/block-0", _schedule(block=0), ValueError, "block"),
    api(
        "load_rgba/rgb",
        _rgba("photo.png"),
        InputError,
        "reference image",
        "photo.png",
        "no alpha channel",
    ),
    api("load_rgba/missing", _rgba("nope.png"), InputError, "nope.png", "not found"),
    api(
        "load_rgba/not-an-image",
        _rgba("notimg.png"),
        InputError,
        "notimg.png",
        "not a readable image",
    ),
    api("load_rgba/not-square", _rgba("wide_rgba.png"), InputError, "wide_rgba.png", "not square"),
    api("load_rgba/empty", _rgba("empty_rgba.png"), InputError, "empty_rgba.png", "empty mask"),
    api(
        "load_rgba/opaque",
        _rgba("opaque_rgba.png"),
        InputError,
        "opaque_rgba.png",
        "opaque everywhere",
    ),
    api(
        "load_depth/colour",
        _depth("colour_depth.png"),
        InputError,
        "colour_depth.png",
        "colour image",
    ),
    api("load_depth/size", _depth("small_depth.png"), InputError, "small_depth.png", "32x32"),
    api("load_depth/missing", _depth("nope.png"), InputError, "nope.png", "not found"),
    api("resolve_prompt/none", _prompt, InputError, "system.prompt", "photo_caption.txt"),
    api(
        "check_outputs/overwrite", _outputs, InputError, "depth.png", "which is an input (--depth)"
    ),
    api("claim_folder/foreign-files", _claim, InputError, "views", "already holds files"),
    api(
        "preflight/missing-dir",
        _preflight("{d}/no-model"),
        ModelNotFoundError,
        "model_field",
        "no-model",
    ),
    api("preflight/empty", _preflight(""), ModelNotFoundError, "model_field", "no model given"),
    api(
        "preflight/not-a-model",
        _preflight("{d}/views", subfolders=["unet", "vae"]),
        ModelNotFoundError,
        "model_field",
        "lacks unet, vae",
    ),
]


@pytest.mark.parametrize("case", API, ids=[c.id for c in API])
def test_api(case, inputs, no_model_loads):
    before = tree_sha256(inputs)
    with pytest.raises(case.raises) as info:
        case.call(inputs)
    text = str(info.value)
    for needle in case.needles:
        assert needle in text, (needle, text)
    if isinstance(info.value, Hifi123Error):
        assert "\n  expected: " in text and "\n  fix: " in text, text
    assert tree_sha256(inputs) == before


def test_the_table_covers_every_surface_with_150_cases():
    from hifi123.cli import SUBCOMMANDS

    surfaces = {c.id.split("/")[0] for c in CLI}
    commands = {m.__name__ for m in SUBCOMMANDS}
    assert {
        "tiny-models",
        "rgnv",
        "bench",
        "preprocess",
        "eval-sv",
        "eval-gso",
        "run",
        "report",
        "align-mesh",
    } <= surfaces
    assert len(commands) == 8  # a new subcommand needs its bad-input cases here
    ids = [c.id for c in CLI + INSTALL + API]
    assert len(ids) == len(set(ids)) and len(ids) >= 150
