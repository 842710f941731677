"""CLIP encoders for CLIP-D (decision 14): open_clip and transformers backends, preflight errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hifi123.errors import ModelNotFoundError
from hifi123.models.clip_encoder import load_clip_encoder, preflight_clip

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A seeded tiny open_clip model in open_clip's save layout (open_clip_config.json +
    weights)."""
    import open_clip
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny-open-clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    (d / "open_clip_config.json").write_text(
        json.dumps(
            {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
        )
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(d / "open_clip_model.safetensors"),
    )
    return d, model.eval()


def _image(seed=0, size=40):
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_open_clip_backend_matches_the_model_and_is_differentiable(tiny_open_clip):
    d, ref_model = tiny_open_clip
    enc = load_clip_encoder("open_clip", str(d))
    assert enc.backend == "open_clip" and enc.image_size == 32
    assert tuple(enc.mean) == pytest.approx(OPENAI_MEAN)
    img = _image().requires_grad_(True)
    emb = enc.encode_image(img)
    x = F.interpolate(img.detach(), (32, 32), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(ref_model.encode_image(x), dim=-1)
    assert torch.allclose(emb, expected, atol=1e-5)  # the saved weights were loaded, no crop
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    emb[:, 0].sum().backward()
    assert img.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in enc.model.parameters())
    txt = enc.encode_text(["a toy", "a chair"])
    assert txt.shape == (2, 16) and torch.allclose(txt.norm(dim=-1), torch.ones(2))


def test_transformers_backend(tiny_models):
    enc = load_clip_encoder("transformers", tiny_models["clip"], None)
    assert enc.backend == "transformers" and enc.image_size == 32
    img = _image(1).requires_grad_(True)
    emb = enc.encode_image(img)
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    emb.sum().backward()
    assert img.grad.abs().sum() > 0
    assert enc.encode_text(["a toy"]).shape == (1, emb.shape[1])


def test_openai_tag_forces_quick_gelu(monkeypatch, tiny_open_clip):
    import open_clip

    seen = {}

    def fake_create_model(name, **kw):
        seen.update(name=name, **kw)
        return open_clip.CLIP(**TINY_CFG)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    # this test is about the arguments, not the weights: pretend the OpenAI weights are cached
    from hifi123.models import loader

    monkeypatch.setattr(loader, "hub_file_cached", lambda repo, name: True)
    enc = load_clip_encoder("open_clip", "ViT-B-16", "openai")
    assert seen == {"name": "ViT-B-16", "pretrained": "openai", "force_quick_gelu": True}
    assert enc.encode_text(["x"]).shape == (1, 16)


def test_preflight_names_the_field(tmp_path, monkeypatch, tiny_models):
    with pytest.raises(ModelNotFoundError, match="clip_model.*not an open_clip architecture"):
        preflight_clip("open_clip", "ViT-Z-99", "openai")
    with pytest.raises(ModelNotFoundError, match="clip_pretrained.*not a pretrained tag"):
        preflight_clip("open_clip", "ViT-B-16-quickgelu", "laion-nonsense")
    with pytest.raises(ModelNotFoundError, match="clip_pretrained"):
        preflight_clip("open_clip", "ViT-B-16-quickgelu", None)
    with pytest.raises(ModelNotFoundError, match="no open_clip_config.json"):
        preflight_clip("open_clip", str(tmp_path), None)
    with pytest.raises(ModelNotFoundError, match="clip_pretrained"):
        preflight_clip("transformers", tiny_models["clip"], "openai")
    with pytest.raises(ValueError, match="backend"):
        preflight_clip("jax", "x", None)
    # offline and not cached: fail before loading, naming the field
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"), raising=False)
    with pytest.raises(ModelNotFoundError, match="clip_pretrained.*offline"):
        preflight_clip("open_clip", "ViT-B-16-quickgelu", "openai")
    ckpt = tmp_path / "vit_b_16_openai.pt"
    ckpt.write_bytes(b"")
    # a local checkpoint file is accepted
    preflight_clip("open_clip", "ViT-B-16-quickgelu", str(ckpt))
