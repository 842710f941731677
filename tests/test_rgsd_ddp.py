"""Fixed-view RGSD targets are identical on every rank under DDP (2 CPU processes, gloo)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hifi123.core.hifi123.rgsd import broadcast_from_rank0


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # each rank computed slightly different targets (e.g. non-deterministic kernels)
        t = torch.full((2, 4, 3, 3), float(rank + 1))
        got = broadcast_from_rank0(t)
        torch.save(got, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_targets_identical_on_every_rank(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(a, b) and torch.all(a == 1.0)  # rank 0's targets everywhere


def test_broadcast_is_a_no_op_without_a_process_group():
    t = torch.arange(4.0)
    assert broadcast_from_rank0(t) is t and torch.equal(t, torch.arange(4.0))
