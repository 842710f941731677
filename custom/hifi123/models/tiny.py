"""Tiny, seeded, randomly initialised models in the real repositories' on-disk layout.

`hifi123 tiny-models --out DIR` writes:

    DIR/sd2-depth/   StableDiffusionDepth2ImgPipeline layout: unet (5 input channels), vae,
                     text_encoder, tokenizer, scheduler, depth_estimator (DPT),
                     feature_extractor (DPT processor), model_index.json
    DIR/sd2-base/    StableDiffusionPipeline layout (4-channel UNet), no safety checker
    DIR/sd-x8/       the same layout with an x8 VAE, for threestudio's stock SD guidances
    DIR/dpt/         DPTForDepthEstimation + DPTImageProcessor (Intel/dpt-hybrid-midas layout)
    DIR/clip/        CLIPModel + CLIPProcessor (openai/clip-vit-base-patch16 layout)
    DIR/sd-x4-upscaler/  StableDiffusionUpscalePipeline layout (x4; optional RGNV upscaling)
    (+ the preprocessing and evaluation models registered below)

The UNets keep SD2's *structure* (3 cross-attention down blocks with 2 transformer blocks each, a
mid block, 3 cross-attention up blocks with 3 each: 16 transformer blocks in execution order), so
layer selection by module name behaves exactly as on the real model. Widths are tiny. Everything
loads with `from_pretrained(DIR/...)` on diffusers 0.19.3 / transformers 4.28.1 and on current
releases. Images are 64x64 (latent 32x32; the tiny VAE downsamples x2 instead of x8).
"""

from __future__ import annotations

import json
import os
from typing import Dict

import torch

TINY_SEED = 1234
TINY_IMAGE_SIZE = 64
TEXT_DIM = 32

#: the tokenizer's vocabulary: every byte-level unicode character, alone and word-final, plus the
#: two special tokens (highest ids, as in CLIP: the pooled output takes the eos position)
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (printable stand-ins for all 256 bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer(out_dir: str) -> int:
    """Write vocab.json / merges.txt / configs of a CLIP tokenizer with a tiny vocabulary.
    Returns the vocabulary size."""
    os.makedirs(out_dir, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    # a few merges so the BPE code path is exercised
    merges = ["t h", "th e</w>", "a n", "o n</w>", "i n", "e r"]
    for m in merges:
        merged = m.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += list(_SPECIAL)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        os.path.join(out_dir, "vocab.json"),
        os.path.join(out_dir, "merges.txt"),
        pad_token="!",  # as SD2's tokenizer
        model_max_length=77,
    )
    tok.save_pretrained(out_dir)
    return len(vocab)


def clip_tokenizer_in(out_dir: str, sub: str):
    """Write the tiny CLIP tokenizer to `out_dir/sub` (creating `out_dir`) and load it back:
    (its folder, its vocabulary size, the CLIPTokenizer)."""
    from transformers import CLIPTokenizer

    os.makedirs(out_dir, exist_ok=True)
    tok_dir = os.path.join(out_dir, sub)
    vocab_size = write_tokenizer(tok_dir)
    return tok_dir, vocab_size, CLIPTokenizer.from_pretrained(tok_dir)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0,
    )


def _unet(**kw):
    """A UNet2DConditionModel with the family's shared settings (SD2's linear attention
    projections, 8 norm groups, 32-wide text); `kw` adds or overrides."""
    from diffusers import UNet2DConditionModel

    shared = dict(
        out_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=2,
        use_linear_projection=True,  # as SD2
    )
    return UNet2DConditionModel(**{**shared, **kw})


def _vae(widths, sample_size: int, **kw):
    """An AutoencoderKL with one encoder/decoder block per width (it downsamples
    2**(len(widths) - 1) times) and 4 latent channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=sample_size,
        **kw,
    )


def tiny_vit(image_size: int, layers: int) -> dict:
    """A ViT vision-tower config (8 px patches, width 32, 4 heads): CLIP, CLIPSeg and BLIP-2."""
    return dict(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
    )


def save_model(out_dir: str, model, processor, scratch: str = None) -> None:
    """Save a model and its processor into `out_dir` (safetensors), then remove `scratch` (the
    folder a tokenizer was built in)."""
    import shutil

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    if scratch:
        shutil.rmtree(scratch)


def tiny_unet(in_channels: int):
    return _unet(
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=in_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        attention_head_dim=(2, 2, 4, 4),
    )


def tiny_vae():
    return _vae((16, 32), TINY_IMAGE_SIZE)


def tiny_scheduler():
    from diffusers import DDIMScheduler

    # SD2-depth's / SD2-base's scheduler settings
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def tiny_dpt():
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    cfg = DPTConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        reassemble_factors=[4, 2, 1, 0.5],
        fusion_hidden_size=16,
        is_hybrid=False,
    )
    proc = DPTImageProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        keep_aspect_ratio=False,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return DPTForDepthEstimation(cfg), proc


def _seed(offset: int) -> None:
    torch.manual_seed(TINY_SEED + offset)


def _sd_pipeline(parts: dict):
    """A StableDiffusionPipeline of `parts` (vae, text_encoder, tokenizer, unet) with the
    family's scheduler and no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **parts, scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip


def write_sd(out_dir: str, depth: bool) -> None:
    from diffusers import StableDiffusionDepth2ImgPipeline
    from transformers import CLIPTextModel

    tok_dir, vocab_size, tokenizer = clip_tokenizer_in(out_dir, "tokenizer")
    _seed(0)
    unet = tiny_unet(5 if depth else 4)
    _seed(1)
    vae = tiny_vae()
    _seed(2)
    text_encoder = CLIPTextModel(_text_config(vocab_size))
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    if depth:
        _seed(3)
        dpt, proc = tiny_dpt()
        pipe = StableDiffusionDepth2ImgPipeline(
            **parts, scheduler=tiny_scheduler(), depth_estimator=dpt, feature_extractor=proc
        )
    else:
        pipe = _sd_pipeline(parts)
    pipe.save_pretrained(out_dir, safe_serialization=True)


def write_sd_x8(out_dir: str) -> None:
    """A tiny StableDiffusionPipeline for threestudio's own SD guidances
    (`stable-diffusion-guidance`, `-unified-`, `-vsd-`), which resize every render to 512 px and
    encode it: this VAE downsamples x8 like SD's (512 px -> 64x64 latents, not the x2 of the
    others), the UNet attends only at its lowest resolution (16x16 tokens), and its time embedding
    is 1280 wide, the width threestudio's camera-conditioned LoRA (VSD) hard-codes. Everything else
    as `sd2-base`."""
    from transformers import CLIPTextModel

    tok_dir, vocab_size, tokenizer = clip_tokenizer_in(out_dir, "tokenizer")
    _seed(7)
    unet = _unet(
        sample_size=64,
        in_channels=4,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        time_embedding_dim=1280,
    )
    _seed(8)
    vae = _vae((8, 8, 16, 16), 512)
    _seed(9)
    text_encoder = CLIPTextModel(_text_config(vocab_size))
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    _sd_pipeline(parts).save_pretrained(out_dir, safe_serialization=True)


def write_upscaler(out_dir: str) -> None:
    """A tiny StableDiffusionUpscalePipeline (x4: the VAE downsamples x4, the UNet takes the latent
    and the low-res image: 7 channels, and a noise-level class embedding)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from transformers import CLIPTextModel

    tok_dir, vocab_size, tokenizer = clip_tokenizer_in(out_dir, "tokenizer")
    _seed(5)
    unet = _unet(
        sample_size=32,
        in_channels=7,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=1000,
    )
    _seed(6)
    vae = _vae((8, 16, 16), 128, scaling_factor=0.08333)
    _seed(7)
    text_encoder = CLIPTextModel(_text_config(vocab_size))
    low_res = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02
    )
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    pipe = StableDiffusionUpscalePipeline(
        **parts, low_res_scheduler=low_res, scheduler=sched, max_noise_level=350
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def write_dpt(out_dir: str) -> None:
    _seed(3)
    save_model(out_dir, *tiny_dpt())


def write_clip(out_dir: str) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok_dir, vocab_size, tokenizer = clip_tokenizer_in(out_dir, "_tok")
    text_cfg = _text_config(vocab_size).to_dict()
    vision_cfg = dict(tiny_vit(32, layers=2), projection_dim=16)
    text_cfg["projection_dim"] = 16
    _seed(4)
    model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=16))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    save_model(out_dir, model, proc, scratch=tok_dir)


def _lazy(module: str, table: str, name: str):
    """A writer that imports its module on first use (those modules import this one)."""

    def write(d):
        import importlib

        getattr(importlib.import_module(module, __package__), table)[name](d)

    return write


def _preprocess_tiny(name):
    return _lazy("..preprocess.tiny", "PREPROCESS_TINY_MODELS", name)


TINY_MODELS = {
    "sd2-depth": lambda d: write_sd(d, depth=True),
    "sd2-base": lambda d: write_sd(d, depth=False),
    "sd-x8": write_sd_x8,  # threestudio's stock SD guidances (512 px renders) on CPU
    "dpt": write_dpt,
    "clip": write_clip,
    "sd-x4-upscaler": write_upscaler,
    # preprocessing (hifi123 preprocess): segmenters and a captioner
    **{n: _preprocess_tiny(n) for n in ("clipseg", "segformer", "blip2")},
    # evaluation (hifi123 eval): open_clip CLIP, VGG19 features (contextual loss), LPIPS
    **{
        n: _lazy("..evaluation.models", "TINY_EVAL_WRITERS", n)
        for n in ("open-clip", "vgg19", "lpips")
    },
}


def write_tiny_models(out: str, only=None) -> Dict[str, str]:
    """Write the tiny family under `out`; returns {name: directory}. Deterministic."""
    from ..outputs import check_output_dir

    out = check_output_dir(out, "--out")
    written = {}
    for name, writer in TINY_MODELS.items():
        if only and name not in only:
            continue
        d = os.path.join(out, name)
        writer(d)
        written[name] = d
    return written


_CACHE: Dict[str, Dict[str, str]] = {}


def default_tiny_root() -> str:
    """Per-user cache folder of the tiny family, tagged with our and the libraries' versions."""
    import diffusers
    import transformers

    from .. import __version__

    tag = f"{__version__}-d{diffusers.__version__}-t{transformers.__version__}"
    return os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "hifi123",
        "tiny-models",
        tag,
    )


def ensure_tiny_models(out: str = None, names=None) -> Dict[str, str]:
    """The tiny family under `out` (default: `default_tiny_root()`), each model written atomically
    the first time it is needed; returns {name: directory} for `names` (default: all)."""
    import shutil
    import tempfile

    key = os.path.abspath(os.path.expanduser(out or default_tiny_root()))
    names = list(names) if names is not None else list(TINY_MODELS)
    done = _CACHE.setdefault(key, {})
    for name in names:
        if name in done:
            continue
        d = os.path.join(key, name)
        if not os.path.isfile(os.path.join(d, ".hifi123-complete")):
            os.makedirs(key, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=key)
            try:
                TINY_MODELS[name](tmp)
                open(os.path.join(tmp, ".hifi123-complete"), "w").close()
                if os.path.isdir(d):  # an interrupted or stale leftover
                    shutil.rmtree(d)
                os.replace(tmp, d)
            finally:
                if os.path.isdir(tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
        done[name] = d
    return {n: done[n] for n in names}
