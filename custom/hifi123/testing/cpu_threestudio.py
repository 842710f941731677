"""Run threestudio on a CPU-only machine, for tests: pure-torch stand-ins behind threestudio's
names.

threestudio is written for one GPU: its device helper always answers the GPU of the rank, the mesh
renderers and the mesh exporter rasterise through nvdiffrast, the hash-grid encoding is
tiny-cuda-nn, the NeRF renderer samples with nerfacc's CUDA kernels, and `launch.py` builds its
Trainer with `accelerator="gpu"`. For tests we keep threestudio's code and swap only those pieces:

* :func:`patch_threestudio_for_cpu` (after `import threestudio`, GPU-only modules stubbed by
  :mod:`hifi123.testing.threestudio_stubs`): `get_device` answers CPU in every threestudio module
  that holds it; `NVDiffRasterizerContext` is
  :class:`~hifi123.testing.torch_rasterizer.TorchRasterizerContext` wherever threestudio builds one
  (its mesh renderers, ours, the mesh exporter); the tiny-cuda-nn encoding (`HashGrid`,
  `Grid`/`Hash`, `DenseGrid`) is :class:`TorchHashGrid`; and the pure-torch volume renderer of
  :mod:`hifi123.testing.torch_renderer` is registered under its test name (smoke configs name it
  instead of `nerf-volume-renderer`).
* ``python -m hifi123.testing.cpu_threestudio launch.py ARGS...`` (from a threestudio root): the
  same patches, plus a `pytorch_lightning.Trainer` that turns `accelerator="gpu"` into the CPU, then
  runs threestudio's own, unmodified `launch.py` as `__main__` with ARGS.

Nothing here is used by the extension itself; it is test infrastructure, like the stubs.
"""

from __future__ import annotations

import math
import os
import runpy
import sys
from typing import List

#: environment variable: when "1", the launcher runs with one torch thread (CI boxes have 2 cores)
THREADS_ENV = "HIFI123_CPU_THREADS"


def _hash_grid_class():
    import torch
    import torch.nn as nn

    class TorchHashGrid(nn.Module):
        """Multi-resolution hash encoding (Instant-NGP, as tiny-cuda-nn's `HashGrid`) in plain
        torch.

        Level l has resolution floor(base_resolution * per_level_scale**l); a level whose dense
        grid ((res + 1)^3 vertices) fits the table is indexed densely, otherwise through the
        Instant-NGP spatial hash (primes 1, 2654435761, 805459861) modulo 2**log2_hashmap_size.
        Features are trilinearly interpolated, concatenated level by level, and stored in one flat
        `params` tensor initialised in [-1e-4, 1e-4] (tiny-cuda-nn's layout and init), so
        threestudio's state-dict keys and `create_from` copies work unchanged. Inputs in [0, 1].
        """

        PRIMES = (1, 2654435761, 805459861)

        def __init__(self, n_input_dims: int, config: dict, dtype=None) -> None:
            super().__init__()
            otype = str(config.get("otype", "HashGrid"))
            if n_input_dims != 3:
                raise ValueError(f"TorchHashGrid supports 3 input dimensions, got {n_input_dims}")
            self.n_input_dims = n_input_dims
            self.n_levels = int(config.get("n_levels", 16))
            self.n_features = int(config.get("n_features_per_level", 2))
            self.log2_size = int(config.get("log2_hashmap_size", 19))
            base = float(config.get("base_resolution", 16))
            scale = float(config.get("per_level_scale", 2.0))
            dense = otype == "DenseGrid" or str(config.get("type", "Hash")) == "Dense"
            self.resolutions: List[int] = []
            self.sizes: List[int] = []
            self.hashed: List[bool] = []
            for lvl in range(self.n_levels):
                res = int(math.floor(base * scale**lvl))
                n_dense = (res + 1) ** 3
                hashed = not dense and n_dense > 2**self.log2_size
                size = 2**self.log2_size if hashed else n_dense
                self.resolutions.append(res)
                self.sizes.append(size)
                self.hashed.append(hashed)
            self.offsets = [0]
            for s in self.sizes:
                self.offsets.append(self.offsets[-1] + s * self.n_features)
            self.params = nn.Parameter(torch.empty(self.offsets[-1]).uniform_(-1e-4, 1e-4))
            self.n_output_dims = self.n_levels * self.n_features

        def _index(self, corner: "torch.Tensor", lvl: int) -> "torch.Tensor":
            res = self.resolutions[lvl]
            if self.hashed[lvl]:
                h = corner[..., 0] * self.PRIMES[0]
                h = h ^ (corner[..., 1] * self.PRIMES[1])
                h = h ^ (corner[..., 2] * self.PRIMES[2])
                return h % self.sizes[lvl]
            return corner[..., 0] + (res + 1) * (corner[..., 1] + (res + 1) * corner[..., 2])

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            x = x.float().clamp(0.0, 1.0)
            outs = []
            for lvl, res in enumerate(self.resolutions):
                table = self.params[self.offsets[lvl] : self.offsets[lvl + 1]].view(
                    -1, self.n_features
                )
                pos = x * res
                lo = pos.floor().clamp(max=res - 1) if res > 0 else pos.floor()
                frac = pos - lo
                lo = lo.long()
                feat = 0.0
                for dx in (0, 1):
                    for dy in (0, 1):
                        for dz in (0, 1):
                            off = torch.tensor([dx, dy, dz], device=x.device)
                            w = torch.where(off.bool(), frac, 1.0 - frac).prod(-1, keepdim=True)
                            feat = feat + w * table[self._index(lo + off, lvl)]
                outs.append(feat)
            return torch.cat(outs, -1)

    return TorchHashGrid


def _torch_encoding_class(hash_grid):
    import torch.nn as nn

    class TorchEncoding(nn.Module):
        """threestudio's `TCNNEncoding` with the pure-torch grid inside (same attribute names)."""

        def __init__(self, in_channels, config, dtype=None) -> None:
            super().__init__()
            otype = str(config.get("otype", ""))
            if otype not in ("HashGrid", "Grid", "DenseGrid"):
                raise NotImplementedError(
                    "the CPU test harness has no stand-in for the tiny-cuda-nn encoding "
                    f"{otype!r}; use HashGrid or ProgressiveBandFrequency in CPU test configs"
                )
            self.n_input_dims = in_channels
            self.encoding = hash_grid(in_channels, config)
            self.n_output_dims = self.encoding.n_output_dims

        def forward(self, x):
            return self.encoding(x)

    return TorchEncoding


def _cpu_device(*args, **kwargs):
    import torch

    return torch.device("cpu")


def patch_threestudio_for_cpu() -> List[str]:
    """Swap threestudio's CUDA-only pieces for the CPU stand-ins (see the module docstring).

    Idempotent. Needs `threestudio` imported. Returns the names of what was patched."""
    import threestudio
    import threestudio.utils.misc as misc

    from .torch_rasterizer import TorchRasterizerContext
    from .torch_renderer import register_torch_volume_renderer

    patched = []
    original = getattr(misc, "_hifi123_original_get_device", misc.get_device)
    misc._hifi123_original_get_device = original
    for name, mod in list(sys.modules.items()):
        if not (name == "threestudio" or name.startswith("threestudio.")) or mod is None:
            continue
        if getattr(mod, "get_device", None) is original:
            mod.get_device = _cpu_device
            patched.append(f"{name}.get_device")

    def cpu_context(context_type=None, device=None, *args, **kwargs):
        return TorchRasterizerContext()

    for name in (
        "threestudio.utils.rasterize",
        "threestudio.models.renderers.nvdiff_rasterizer",
        "threestudio.models.exporters.mesh_exporter",
    ):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "NVDiffRasterizerContext"):
            mod.NVDiffRasterizerContext = cpu_context
            patched.append(f"{name}.NVDiffRasterizerContext")

    networks = sys.modules.get("threestudio.models.networks")
    if networks is not None and not getattr(networks, "_hifi123_cpu", False):
        networks.TCNNEncoding = _torch_encoding_class(_hash_grid_class())
        networks._hifi123_cpu = True
        patched.append("threestudio.models.networks.TCNNEncoding")

    patched.append(register_torch_volume_renderer())
    threestudio.debug(f"hifi123 CPU harness: {', '.join(patched)}")
    return patched


def _patch_trainer() -> None:
    """`launch.py` builds `Trainer(accelerator="gpu", devices=-1, ...)`: run that on the CPU."""
    import pytorch_lightning as pl

    if getattr(pl.Trainer, "_hifi123_cpu", False):
        return
    base = pl.Trainer

    class CPUTrainer(base):
        _hifi123_cpu = True

        def __init__(self, *args, **kwargs):
            if kwargs.get("accelerator") in ("gpu", "cuda", "auto", None):
                kwargs["accelerator"] = "cpu"
                kwargs["devices"] = 1
            super().__init__(*args, **kwargs)

    CPUTrainer.__name__ = CPUTrainer.__qualname__ = "Trainer"
    pl.Trainer = CPUTrainer


def quiet_cpu_trainer(max_steps: int, **kwargs):
    """A one-process CPU `pytorch_lightning.Trainer` for in-process system tests: no logger,
    checkpoints, progress bar, model summary, validation or sanity steps unless `kwargs` says so."""
    import pytorch_lightning as pl

    settings = dict(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**settings, **kwargs})


def prepare_cpu_process() -> None:
    """Everything the launcher does before handing over to launch.py (also usable in-process)."""
    from .threestudio_stubs import import_threestudio

    import_threestudio(os.getcwd())
    patch_threestudio_for_cpu()
    _patch_trainer()


USAGE = """usage (from a threestudio root with custom/hifi123):
  python -m hifi123.testing.cpu_threestudio launch.py --config CONFIG
      --train|--test|--export [k=v ...]
  python -m hifi123.testing.cpu_threestudio launch.py --smoke coarse.yaml [--tiny DIR]
      --train [k=v ...]
--smoke NAME expands to --config <the shipped NAME> plus the overrides of configs/smoke/NAME on the
tiny offline models (--tiny DIR, default: written once to hifi123's cache folder)."""


def expand_smoke(args: List[str]) -> List[str]:
    """Replace `--smoke NAME [--tiny DIR]` by `--config <shipped> <overrides...>`."""
    if "--smoke" not in args:
        return args
    args = list(args)
    i = args.index("--smoke")
    if i + 1 >= len(args):
        sys.exit("--smoke needs a shipped config name, e.g. --smoke coarse.yaml\n" + USAGE)
    name = args[i + 1]
    del args[i : i + 2]
    tiny = None
    if "--tiny" in args:
        j = args.index("--tiny")
        if j + 1 >= len(args):
            sys.exit("--tiny needs the folder `hifi123 tiny-models --out DIR` wrote\n" + USAGE)
        tiny = args[j + 1]
        del args[j : j + 2]
    from ..models.tiny import ensure_tiny_models
    from .smoke import base_config, smoke_args

    if tiny is None:
        tiny = os.path.dirname(ensure_tiny_models()["sd2-base"])
    try:
        base = base_config(name)
    except FileNotFoundError as err:
        sys.exit(f"{err}\n{USAGE}")
    return ["--config", base, *smoke_args(name, tiny), *args]


def main(argv: List[str] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].endswith(".py"):
        sys.exit(USAGE)
    script = argv[0]
    argv = [script, *expand_smoke(argv[1:])]
    if os.environ.get(THREADS_ENV):
        import torch

        torch.set_num_threads(int(os.environ[THREADS_ENV]))
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    prepare_cpu_process()
    sys.argv = [script] + argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
