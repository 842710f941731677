"""A fabricated coarse threestudio trial for CPU tests of refine stages: `configs/parsed.yaml` and
`ckpts/last.ckpt` of a small pure-torch NeRF (frequency encoding + VanillaMLP; render it with
`hifi123.testing.torch_renderer`). Needs threestudio imported (GPU-only modules stubbed)."""

from __future__ import annotations

from pathlib import Path


def torch_field(n_frequencies: int) -> dict:
    """Encoding and MLP settings of a small implicit field that runs in pure torch (frequency
    encoding, a 16-wide one-hidden-layer MLP): a geometry block's update for CPU tests."""
    return {
        "pos_encoding_config": {
            "otype": "ProgressiveBandFrequency",
            "n_frequencies": n_frequencies,
        },
        "mlp_network_config": {
            "otype": "VanillaMLP",
            "activation": "ReLU",
            "output_activation": "none",
            "n_neurons": 16,
            "n_hidden_layers": 1,
        },
    }


COARSE_SYSTEM = {
    "geometry_type": "implicit-volume",
    "geometry": {
        "radius": 1.0,
        "normal_type": "analytic",
        "density_bias": "blob_magic3d",
        "density_activation": "softplus",
        "density_blob_scale": 10.0,
        "density_blob_std": 0.5,
        **torch_field(n_frequencies=2),
    },
    "material_type": "diffuse-with-point-light-material",
    "material": {"ambient_only_steps": 0},
    "background_type": "solid-color-background",
    "background": {},
    "renderer_type": "nerf-volume-renderer",
    "renderer": {"radius": 1.0},
}


def write_coarse_trial(root, seed: int = 0) -> Path:
    """Write <root>/coarse/{configs/parsed.yaml, ckpts/last.ckpt}; returns the checkpoint path."""
    import threestudio
    import torch
    import yaml

    trial = Path(root) / "coarse"
    (trial / "configs").mkdir(parents=True, exist_ok=True)
    (trial / "ckpts").mkdir(exist_ok=True)
    (trial / "configs" / "parsed.yaml").write_text(yaml.safe_dump({"system": COARSE_SYSTEM}))
    torch.manual_seed(seed)
    modules = {
        k: threestudio.find(COARSE_SYSTEM[f"{k}_type"])(COARSE_SYSTEM[k])
        for k in ("geometry", "material", "background")
    }
    state = {f"{k}.{n}": t for k, m in modules.items() for n, t in m.state_dict().items()}
    ckpt = trial / "ckpts" / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 0, "global_step": 10}, ckpt)
    return ckpt
