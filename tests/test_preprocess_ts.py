"""The threestudio-marked half of `test_preprocess.py` (skipped without a threestudio checkout)."""

from __future__ import annotations

import numpy as np
import pytest
from hifi123.preprocess import pipeline as pp
from hifi123.sample import make_sample as ms
from test_preprocess import cfg_for, cv2_read_unchanged, out_to_in, sidecar

SAMPLE = str(ms.DEFAULT_ASSETS_DIR / "sample_rgba.png")

pytestmark = pytest.mark.threestudio


def test_threestudio_datamodule_reads_the_outputs(tiny, tmp_path):
    """threestudio's own SingleImageDataBase.load_images on our files (rank 'cpu' instead of the
    CUDA device index it would use; everything else is its code)."""
    import torch
    from threestudio.data.image import SingleImageDataBase, SingleImageDataModuleConfig
    from threestudio.utils.config import parse_structured

    geo = ms.load_sample_geometry()
    size = 128
    res = pp.preprocess_image(
        SAMPLE, str(tmp_path), cfg_for(tiny, size=size), depth_z=geo["depth_z"]
    )
    data = SingleImageDataBase()
    data.cfg = parse_structured(
        SingleImageDataModuleConfig,
        {
            "image_path": res.paths.rgba,
            "height": size,
            "width": size,
            "requires_depth": True,
            "requires_normal": True,
        },
    )
    data.rank, data.height, data.width = "cpu", size, size
    data.load_images()

    rgba = cv2_read_unchanged(res.paths.rgba)[..., [2, 1, 0, 3]]
    assert data.rgb.shape == (1, size, size, 3) and data.mask.shape == (1, size, size, 1)
    assert torch.equal(data.mask[0, ..., 0], torch.from_numpy(rgba[..., 3] / 255.0 > 0.5))
    assert torch.allclose(data.rgb[0], torch.from_numpy(rgba[..., :3] / 255.0).float(), atol=1e-6)
    assert data.depth.shape == (1, size, size)
    mask = data.mask[0, ..., 0]
    assert data.depth[0][~mask].max() == 0 and data.depth[0][mask].max() == 1.0
    assert data.normal.shape == (1, size, size, 3)

    # threestudio's normal loss: 1 - 2 * ref_normal is the world normal; compare with the truth
    meta = sidecar(tmp_path, "sample")
    iy, ix = out_to_in(meta, size)
    gt = torch.from_numpy(
        geo["normal_world"][np.clip(iy, 0, 511)[:, None], np.clip(ix, 0, 511)[None]]
    ).float()
    inner = mask & torch.from_numpy(
        geo["mask"][np.clip(iy, 0, 511)[:, None], np.clip(ix, 0, 511)[None]]
    )
    cos = torch.nn.functional.cosine_similarity(1 - 2 * data.normal[0][inner], gt[inner])
    assert cos.median() > 0.99
