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


def bench_rgnv(
    views: int = 4, steps: int = 50, inject_steps: int = 30, repeats: int = 3, log=print
) -> dict:
    from .core.hifi123.rgnv import RGNVConfig, RGNVPipeline
    from .models.loader import load_diffusion
    from .models.tiny import ensure_tiny_models
    from .testing.counter import count_unet_evals

    torch.manual_seed(0)
    comps = load_diffusion(ensure_tiny_models()["sd2-depth"], "bench", with_depth_estimator=True)
    pipe = RGNVPipeline(
        comps, RGNVConfig(num_steps=steps, inject_steps=inject_steps, prompt="a toy")
    )
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
    log(
        f"RGNV reference cache, tiny SD2-depth on CPU ({torch.get_num_threads()} threads), "
        f"{views} views, T={steps}, S={inject_steps}, median of {repeats}"
    )
    for name in ("cached", "recomputed"):
        r = results[name]
        log(
            f"  {name:10s} UNet calls {r['unet_calls']:5d}  items {r['unet_items']:5d}  time "
            f"{r['seconds']:.3f} s"
        )
    log(f"max |cached - recomputed| = {diff:.2e}")
    log(f"UNet calls cached: {results['cached']['unet_calls']}")
    log(f"UNet calls recomputed: {results['recomputed']['unet_calls']}")
    log(f"speedup: {speedup:.2f}")
    results.update(speedup=speedup, max_abs_diff=diff)
    return results


def bench_rgsd(
    iterations: int = 8, steps: int = 20, inject_steps: int = 12, repeats: int = 3, log=print
) -> dict:
    """RGSD per-iteration UNet evaluations and CPU time: ours (reference branch cached once,
    fixed-view targets once) vs a naive loop that re-runs the reference branch every iteration.
    Both follow the same alternating schedule (t = 0 fixed view, t > 0 random view) with the same
    t sequence; every iteration back-propagates to the rendering as training does."""
    from .core.hifi123.rgsd import RGSD, FixedViewSchedule, RGSDConfig
    from .models.loader import load_diffusion
    from .models.tiny import ensure_tiny_models
    from .testing.counter import count_unet_evals

    comps = load_diffusion(ensure_tiny_models()["sd2-depth"], "bench", with_depth_estimator=True)
    ref, views = _sample_views(iterations + 2, size=64)
    ref_t = torch.from_numpy(ref)

    def as_render(v):
        x = torch.from_numpy(v)[None]
        return x[..., :3] * x[..., 3:] + (1 - x[..., 3:]), x[..., 3:], None

    fixed = [as_render(v) for v in views[:2]]
    randoms = [as_render(v) for v in views[2:]]
    sched = FixedViewSchedule(n_fixed=2, every=2)
    gen = torch.Generator().manual_seed(0)
    cfg = RGSDConfig(num_steps=steps, inject_steps=inject_steps, prompt="a toy")
    ts = [int(torch.randint(1, inject_steps + 1, (1,), generator=gen)) for _ in range(iterations)]

    def make():
        m = RGSD(comps, cfg)
        m.set_reference(ref_t)
        rgb = torch.cat([f[0] for f in fixed])
        m.compute_fixed_targets(rgb, torch.cat([f[1] for f in fixed]))
        return m

    def loop(m, naive: bool):
        for i in range(iterations):
            if naive:  # re-run the reference branch every iteration
                m.cache = None
                m.set_reference(ref_t)
            if sched.is_fixed(i):
                rgb, a, _ = fixed[sched.fixed_index(i)]
                rgb = rgb.clone().requires_grad_(True)
                out = m.loss_fixed(rgb, sched.fixed_index(i), a)
            else:
                rgb, a, _ = randoms[i]
                rgb = rgb.clone().requires_grad_(True)
                out = m.loss_random(rgb, a, t=ts[i])
            out["loss_rgsd"].backward()

    res = {}
    models = {"ours": make(), "naive": make()}
    for name, naive in (("ours", False), ("naive", True)):
        with count_unet_evals(comps.unet) as n:
            loop(models[name], naive)  # counted run (also warms up)
        res[name] = {"calls": n.calls, "items": n.items}
    times = {"ours": [], "naive": []}
    for _ in range(repeats):  # interleaved, so machine load affects both alike
        for name, naive in (("ours", False), ("naive", True)):
            t0 = time.perf_counter()
            loop(models[name], naive)
            times[name].append(time.perf_counter() - t0)
    for name in times:
        res[name]["seconds"] = statistics.median(times[name])
    nfe_ratio = res["ours"]["calls"] / res["naive"]["calls"]
    time_ratio = res["ours"]["seconds"] / res["naive"]["seconds"]
    log(
        f"RGSD, tiny SD2-depth on CPU ({torch.get_num_threads()} threads), T={steps}, "
        f"S={inject_steps}, {iterations} iterations alternating t=0 fixed / t>0 random (same t "
        f"sequence {ts})"
    )
    log("one-time setup (reference branch + 2 fixed-view targets) excluded from both")
    for name in ("ours", "naive"):
        r = res[name]
        log(
            f"  {name:6s} UNet calls/iter {r['calls'] / iterations:6.2f}  items/iter "
            f"{r['items'] / iterations:6.2f}  time/iter {r['seconds'] / iterations:.3f} s "
            f"(median of {repeats})"
        )
    log(f"NFE ratio: {nfe_ratio:.2f}")
    log(f"time ratio: {time_ratio:.2f}")
    res.update(nfe_ratio=nfe_ratio, time_ratio=time_ratio)
    return res


#: the render size of the Make-It-3D refine stage (makeit3d-refine.yaml data.height/width; M3D
#: renders its refine stage at 800 x 800): `hifi123 bench raster` measures there by default
REFINE_RENDER_SIZE = 800


def _sample_point_cloud(size: int, azimuths: int):
    """(the sample object's 360° point cloud built at `size` from its exact renders, with
    `azimuths` views per elevation; the seconds the build took)."""
    import numpy as np

    from .core.cameras import ViewCamera
    from .core.makeit3d.pointcloud import PointCloudConfig, build_point_cloud
    from .sample.make_sample import REF_DISTANCE, REF_FOVY_DEG, render_sample

    def render(cam):
        r = render_sample(
            cam.elevation_deg,
            cam.azimuth_deg,
            cam.distance,
            cam.fovy_deg,
            cam.height,
            supersample=1,
        )
        return {"rgb": r["rgb"], "depth": r["depth_z"], "opacity": r["alpha"].astype(np.float32)}

    t0 = time.perf_counter()
    ref = render_sample(0.0, 0.0, REF_DISTANCE, REF_FOVY_DEG, size, supersample=1)
    cloud = build_point_cloud(
        render,
        ViewCamera.orbit(0.0, 0.0, REF_DISTANCE, REF_FOVY_DEG, size),
        ref["rgb"],
        ref["alpha"],
        PointCloudConfig(resolution=size, n_azimuths=azimuths),
    )
    return cloud, time.perf_counter() - t0


def _interleaved_medians(fns: dict, repeats: int) -> dict:
    """name -> the median seconds of `fns[name]()` over `repeats` runs, interleaved so that
    machine load affects all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _log_raster(
    log,
    res: dict,
    ratio: float,
    size: int,
    settings,
    repeats: int,
    cloud,
    build_s: float,
    cover: list,
) -> None:
    """The report of :func:`bench_raster`."""
    log(
        f"Make-It-3D refine rasteriser vs deferred U-Net on CPU "
        f"({torch.get_num_threads()} threads), "
        f"{size}x{size}{' (the refine render size)' if size == REFINE_RENDER_SIZE else ''}, "
        f"K={settings.n_scales} scales, radius {settings.radius_px:g} px, "
        f"{settings.points_per_pixel} points/pixel, median of {repeats}"
    )
    log(
        f"point cloud: {len(cloud)} points from {len(cloud.cameras) + 1} views of the sample "
        f"object (built in {build_s:.1f} s); "
        f"coverage per scale {', '.join(f'{c:.1%}' for c in cover)}"
    )
    log(f"  rasterise all scales, forward + backward: {res['raster'] * 1000:8.1f} ms")
    log(f"  U-Net forward + backward:                 {res['unet'] * 1000:8.1f} ms")
    log(f"goal <= 0.10: {'met' if ratio <= 0.10 else 'not met'}")
    log(f"raster/unet ratio: {ratio:.2f}")


def bench_raster(
    size: int = REFINE_RENDER_SIZE,
    repeats: int = 5,
    threads: int = 1,
    azimuths: int = 12,
    log=print,
) -> dict:
    """Make-It-3D refine: rasterising the point cloud at all K scales (forward + backward to the
    descriptors and the background) vs one deferred U-Net forward + backward at the same
    resolution, on CPU. The cloud is the sample object's 360° point cloud built at `size` from its
    exact renders (as the refine stage builds it from the coarse NeRF at the render size); by
    default at the refine stage's render size."""
    import math

    from .core.cameras import ViewCamera
    from .core.makeit3d.deferred_unet import DeferredUNet
    from .core.makeit3d.point_raster import PointRasterSettings, rasterize_points
    from .sample.make_sample import REF_DISTANCE, REF_FOVY_DEG

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)

    cloud, build_s = _sample_point_cloud(size, azimuths)
    n = len(cloud)
    feats = torch.cat([cloud.colors, torch.randn(n, 16)], 1).requires_grad_(True)
    background = torch.ones(19, requires_grad=True)
    settings = PointRasterSettings()  # 2 px at full resolution, 8 points per pixel, K = 3
    cam = ViewCamera.orbit(10.0, 30.0, REF_DISTANCE, REF_FOVY_DEG, size)
    c2w = cam.c2w_tensor()
    unet = DeferredUNet()
    grads: list = []  # upstream gradients in the layout the U-Net returns them (that of its inputs)
    grad_rgb = torch.randn(1, 3, size, size)

    def raster():
        outs = rasterize_points(
            cloud.positions, feats, c2w, cam.fovy, size, size, settings, background
        )
        torch.autograd.backward([o.features for o in outs], grads)
        feats.grad = background.grad = None
        return outs

    grads[:] = [
        torch.randn_like(o.features)
        for o in rasterize_points(
            cloud.positions,
            feats.detach(),
            c2w,
            cam.fovy,
            size,
            size,
            settings,
            background.detach(),
        )
    ]
    outs = raster()  # warm-up; the U-Net gets the real descriptor images
    inputs = [o.features.detach().requires_grad_(True) for o in outs]

    def deferred():
        unet(inputs).backward(grad_rgb)
        unet.zero_grad(set_to_none=True)

    deferred()
    res = _interleaved_medians({"raster": raster, "unet": deferred}, repeats)
    ratio = res["raster"] / res["unet"]
    cover = [float((o.coverage > 0).float().mean()) for o in outs]
    _log_raster(log, res, ratio, size, settings, repeats, cloud, build_s, cover)
    res.update(
        ratio=ratio,
        points=n,
        size=size,
        threads=torch.get_num_threads(),
        finite=math.isfinite(ratio),
    )
    return res


def run(args) -> int:
    if args.bench == "raster":
        bench_raster(args.size, args.repeats, args.threads, args.azimuths)
        return 0
    if args.bench == "rgnv":
        bench_rgnv(args.views, args.steps, args.inject_steps, args.repeats)
        return 0
    if args.bench == "rgsd":
        bench_rgsd(args.iterations, args.steps, args.inject_steps, args.repeats)
        return 0
    raise SystemExit(f"unknown benchmark {args.bench!r}")
