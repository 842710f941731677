"""`hifi123 bench`: UNet-evaluation counts and CPU wall-time ratios on tiny models, in one run.

Absolute CPU times of tiny models mean nothing; ratios measured in the same process do.
"""
from __future__ import annotations

import statistics
import time

import torch


def _sample_views(n: int, size: int = 128):
    """The reference and `n` coarse views of our synthetic object (RGBA float arrays)."""
    import numpy as np

    from .sample.make_sample import render_sample

    def rgba(elev, azim):
        r = render_sample(elev, azim, size=size)
        return np.concatenate([r["rgb"], r["alpha"][..., None]], -1).astype(np.float32)

    ref = rgba(0.0, 0.0)
    views = [rgba(0.0, 360.0 * (k + 1) / (n + 1)) for k in range(n)]
    return ref, views


def bench_rgnv(views: int = 4, steps: int = 50, inject_steps: int = 30, repeats: int = 3, log=print) -> dict:
    from .core.rgnv import RGNVConfig, RGNVPipeline
    from .models.loader import load_diffusion
    from .models.tiny import ensure_tiny_models
    from .testing.counter import count_unet_evals

    torch.manual_seed(0)
    comps = load_diffusion(ensure_tiny_models()["sd2-depth"], "bench", with_depth_estimator=True)
    pipe = RGNVPipeline(comps, RGNVConfig(num_steps=steps, inject_steps=inject_steps, prompt="a toy"))
    ref, coarse = _sample_views(views)

    def cached():
        cache = pipe.build_reference(ref)
        return pipe.enhance(cache, coarse).images

    def recomputed():
        return torch.cat([pipe.enhance(pipe.build_reference(ref), [v]).images for v in coarse])

    results = {}
    outs = {}
    for name, fn in (("cached", cached), ("recomputed", recomputed)):
        with count_unet_evals(comps.unet) as n:
            outs[name] = fn()
        results[name] = {"unet_calls": n.calls, "unet_items": n.items}
    # interleave the timed repeats so machine load affects both alike
    times = {"cached": [], "recomputed": []}
    for _ in range(repeats):
        for name, fn in (("cached", cached), ("recomputed", recomputed)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name in times:
        results[name]["seconds"] = statistics.median(times[name])
    diff = float((outs["cached"] - outs["recomputed"]).abs().max())
    speedup = results["recomputed"]["seconds"] / results["cached"]["seconds"]
    log(f"RGNV reference cache, tiny SD2-depth on CPU ({torch.get_num_threads()} threads), "
        f"{views} views, T={steps}, S={inject_steps}, median of {repeats}")
    for name in ("cached", "recomputed"):
        r = results[name]
        log(f"  {name:10s} UNet calls {r['unet_calls']:5d}  items {r['unet_items']:5d}  time {r['seconds']:.3f} s")
    log(f"max |cached - recomputed| = {diff:.2e}")
    log(f"UNet calls cached: {results['cached']['unet_calls']}")
    log(f"UNet calls recomputed: {results['recomputed']['unet_calls']}")
    log(f"speedup: {speedup:.2f}")
    results.update(speedup=speedup, max_abs_diff=diff)
    return results


def run(args) -> int:
    if args.bench == "rgnv":
        bench_rgnv(args.views, args.steps, args.inject_steps, args.repeats)
        return 0
    raise SystemExit(f"unknown benchmark {args.bench!r}")
