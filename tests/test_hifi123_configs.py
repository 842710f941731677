"""HiFi-123 stage configs: parse with threestudio, no unknown keys, every lambda read; low-VRAM
variants differ from their base only where marked."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "custom" / "hifi123" / "configs"
STAGES = ["coarse.yaml", "coarse-lowvram.yaml", "refine.yaml", "refine-lowvram.yaml"]


def _flat(cfg, prefix=""):
    if not isinstance(cfg, dict):
        cfg = OmegaConf.to_container(cfg, resolve=False)  # threestudio's resolvers are not needed
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize(
    "base,low,changed",
    [
        (
            "coarse.yaml",
            "coarse-lowvram.yaml",
            {
                "data.random_camera.batch_size",
                "system.renderer.num_samples_per_ray",
                "system.guidance.enable_sequential_cpu_offload",
            },
        ),
        (
            "refine.yaml",
            "refine-lowvram.yaml",
            {
                "data.height",
                "data.width",
                "data.random_camera.height",
                "data.random_camera.width",
                "system.guidance.cache_device",
            },
        ),
        (
            "refine-mesh.yaml",
            "refine-mesh-lowvram.yaml",
            {
                "data.height",
                "data.width",
                "data.random_camera.height",
                "data.random_camera.width",
                "system.guidance.cache_device",
            },
        ),
    ],
)
def test_lowvram_variants_differ_only_where_marked(base, low, changed):
    a = _flat(OmegaConf.load(CONFIGS / base))
    b = _flat(OmegaConf.load(CONFIGS / low))
    diff = {k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>")}
    assert diff == changed
    marked = [
        ln
        for ln in (CONFIGS / low).read_text().splitlines()
        if "LOWVRAM" in ln and not ln.startswith("#")
    ]
    assert len(marked) == len(changed)
