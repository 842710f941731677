"""DDIM inversion / sampling (HiFi-123 §3.1-3.2; algorithms.md A.4-A.5)."""

import copy

import pytest
import torch
from hifi123.core.diffusion import ddim, sd
from hifi123.models.tiny import tiny_scheduler
from hifi123.testing.oracle import CleanLatentOracle, TrajectoryOracle


@pytest.fixture(scope="module")
def scheduler():
    return tiny_scheduler()


@pytest.mark.parametrize("T,S", [(50, 50), (50, 30), (20, 12), (7, 3)])
def test_inversion_then_sampling_is_exact_with_the_oracle(scheduler, T, S):
    grid = ddim.DDIMGrid.from_scheduler(scheduler, T)
    torch.manual_seed(T + S)
    z0 = torch.randn(2, 4, 16, 16)
    oracle = TrajectoryOracle(torch.randn_like(z0))
    zS = ddim.invert(oracle, z0, grid, S)
    back = ddim.sample(oracle, zS, grid, start=T - S)
    assert (back - z0).abs().max() <= 1e-5
    assert oracle.calls == 2 * S
    # and the inverted latent really is noisier: it sits at level a(t_{T-S}) of the trajectory
    a = grid.alpha(T - S)
    x0 = (z0 - (1 - grid.final_alpha_cumprod) ** 0.5 * oracle.noise) / grid.final_alpha_cumprod**0.5
    assert torch.allclose(zS, a**0.5 * x0 + (1 - a) ** 0.5 * oracle.noise, atol=1e-5)


def test_grid_and_step_order_follow_the_scheduler(scheduler):
    grid = ddim.DDIMGrid.from_scheduler(scheduler, 50)
    scheduler.set_timesteps(50)
    assert torch.equal(grid.timesteps, scheduler.timesteps.long())
    assert grid.t(0) > grid.t(49) and grid.final_alpha_cumprod == pytest.approx(
        float(scheduler.alphas_cumprod[0])
    )
    inv, smp = [], []
    oracle = TrajectoryOracle(torch.zeros(1, 4, 4, 4))
    z = ddim.invert(oracle, torch.zeros(1, 4, 4, 4), grid, 30, record=inv)
    ddim.sample(oracle, z, grid, start=20, record=smp)
    # inversion climbs the last 30 grid points; sampling descends through exactly the same ones
    assert [r.index for r in inv] == list(range(49, 19, -1))
    assert [r.index for r in smp] == list(range(20, 50))
    assert sorted(r.t for r in inv) == sorted(r.t for r in smp)


def test_inversion_evaluates_on_the_source_latent_at_the_destination_timestep(scheduler):
    grid = ddim.DDIMGrid.from_scheduler(scheduler, 10)
    seen = []

    def eps_fn(z, t, **kw):
        seen.append((z.clone(), t))
        return torch.zeros_like(z)

    z0 = torch.ones(1, 4, 2, 2)
    rec = []
    ddim.invert(eps_fn, z0, grid, 2, record=rec)
    assert seen[0][1] == grid.t(9) and torch.equal(seen[0][0], z0)
    assert seen[1][1] == grid.t(8) and torch.equal(seen[1][0], rec[0].z_out)


def test_cfg_forms_are_named_and_related():
    torch.manual_seed(0)
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(ddim.cfg_combine(u, c, 7.5, "textbook"), u + 7.5 * (c - u))
    assert torch.allclose(ddim.cfg_combine(u, c, 7.5, "threestudio"), c + 7.5 * (c - u))
    # threestudio's scale s is the textbook scale s + 1 (Make-It-3D's (1+w) eps_c - w eps_u, w = s)
    assert torch.allclose(
        ddim.cfg_combine(u, c, 10, "threestudio"), ddim.cfg_combine(u, c, 11, "textbook"), atol=1e-6
    )
    assert torch.allclose(ddim.cfg_combine(u, c, 10, "threestudio"), 11 * c - 10 * u, atol=1e-5)
    with pytest.raises(ValueError, match="cfg_form"):
        ddim.cfg_combine(u, c, 1, "other")


def _smooth_unet(sd2_depth, scale=0.1):
    u = copy.deepcopy(sd2_depth.unet)
    with torch.no_grad():  # a smooth eps field, as a trained model has (a random UNet does not)
        u.conv_out.weight.mul_(scale)
        u.conv_out.bias.mul_(scale)
    return u


def test_tiny_unet_round_trip_error_shrinks_with_more_steps(sd2_depth):
    u = _smooth_unet(sd2_depth)
    torch.manual_seed(0)
    z0 = torch.randn(1, 4, 32, 32) * 0.8
    depth = torch.rand(1, 1, 32, 32) * 2 - 1
    fn = sd.UNetNoisePredictor(
        u, sd2_depth.scheduler.alphas_cumprod, torch.zeros(1, 77, 32), depth=depth
    )
    errs = []
    for T in (5, 10, 25, 50):
        grid = ddim.DDIMGrid.from_scheduler(sd2_depth.scheduler, T)
        back = ddim.sample(fn, ddim.invert(fn, z0, grid), grid)
        errs.append(float((back - z0).norm() / z0.norm()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.5 * errs[0], errs


def test_clean_latent_oracle_sampling_lands_on_x0(scheduler):
    grid = ddim.DDIMGrid.from_scheduler(scheduler, 20)
    torch.manual_seed(3)
    x0 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    oracle = CleanLatentOracle(x0, scheduler.alphas_cumprod)
    rec = []
    zT = torch.randn_like(x0)
    ddim.sample(oracle, zT, grid, record=rec)
    assert all(torch.allclose(r.x0, x0, atol=1e-9) for r in rec)


def test_grid_steps_offset_follows_the_official_rgnv_script_by_request():
    sched = tiny_scheduler()  # SD2's steps_offset = 1
    own = ddim.DDIMGrid.from_scheduler(sched, 50)
    official = ddim.DDIMGrid.from_scheduler(sched, 50, steps_offset=0)
    assert own.timesteps[0] == 981 and own.timesteps[-1] == 1
    assert official.timesteps[0] == 980 and official.timesteps[-1] == 0
    assert torch.equal(official.timesteps, torch.arange(980, -1, -20))
    assert sched.config.steps_offset == 1  # the caller's scheduler is left as it was
    assert ddim.DDIMGrid.from_scheduler(sched, 20, steps_offset=0).timesteps[0] == 950
