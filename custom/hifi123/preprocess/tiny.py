"""Tiny, seeded, random preprocessing models in the real repositories' layout (offline tests).

    clipseg    CLIPSegForImageSegmentation + CLIPSegProcessor (CIDAS/clipseg-rd64-refined layout)
    segformer  SegformerForSemanticSegmentation + SegformerImageProcessor, labels
               {0: background, 1: foreground} (the semantic-head path of `segment.py`)
    blip2      Blip2ForConditionalGeneration (OPT decoder) + Blip2Processor
               (Salesforce/blip2-opt-2.7b layout; on transformers >= 4.47 with the `<image>` token,
               `image_token_index` and the processor's `num_query_tokens`, as the hub repo now has)

`PREPROCESS_TINY_MODELS` maps these names to writers (for `hifi123.models.tiny.TINY_MODELS`).
`tiny_model_dirs()` returns the directories `--tiny` uses (dpt, clipseg, blip2), writing missing
ones into the tiny-model cache of `hifi123.models.tiny.ensure_tiny_models`. Outputs are noise.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Dict, Iterable, Optional

import torch

from ..models.tiny import (
    TINY_SEED,
    _bytes_to_unicode,
    _text_config,
    clip_tokenizer_in,
    save_model,
    tiny_vit,
)

TINY_SEG_SIZE = 32


def _seed(offset: int) -> None:
    torch.manual_seed(TINY_SEED + 100 + offset)


def write_clipseg(out_dir: str) -> None:
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessor,
    )

    tok_dir, vocab_size, tokenizer = clip_tokenizer_in(out_dir, "_tok")
    cfg = CLIPSegConfig(
        text_config=_text_config(vocab_size).to_dict(),
        vision_config=tiny_vit(TINY_SEG_SIZE, layers=3),
        projection_dim=16,
        extract_layers=[1, 2],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=37,
    )
    _seed(0)
    model = CLIPSegForImageSegmentation(cfg)
    proc = CLIPSegProcessor(
        image_processor=ViTImageProcessor(
            size={"height": TINY_SEG_SIZE, "width": TINY_SEG_SIZE},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],  # as CIDAS/clipseg
        ),
        tokenizer=tokenizer,
    )
    save_model(out_dir, model, proc, scratch=tok_dir)


def write_segformer(out_dir: str) -> None:
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    cfg = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=2,
        id2label={0: "background", 1: "foreground"},
        label2id={"background": 0, "foreground": 1},
    )
    _seed(1)
    model = SegformerForSemanticSegmentation(cfg)
    save_model(out_dir, model, SegformerImageProcessor(size={"height": 64, "width": 64}))


def write_blip2(out_dir: str) -> None:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )

    os.makedirs(out_dir, exist_ok=True)
    tok_dir = os.path.join(out_dir, "_tok")
    os.makedirs(tok_dir, exist_ok=True)
    # OPT's special tokens (bos = eos = "</s>" = 2, pad = 1), the printable ASCII bytes and space
    # (so the noise caption decodes to readable text), and BLIP-2's image token
    table = _bytes_to_unicode()
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + [table[b] for b in range(32, 127)] + ["<image>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    with open(os.path.join(tok_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tok_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(
        os.path.join(tok_dir, "vocab.json"),
        os.path.join(tok_dir, "merges.txt"),
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    num_query = 4
    text = OPTConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=37,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
    )
    cfg = Blip2Config(
        vision_config=tiny_vit(TINY_SEG_SIZE, layers=2),
        qformer_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            encoder_hidden_size=32,
            vocab_size=64,
            max_position_embeddings=32,
        ),
        text_config=text.to_dict(),
        num_query_tokens=num_query,
        image_token_index=vocab["<image>"],
    )
    _seed(2)
    model = Blip2ForConditionalGeneration(cfg)
    with torch.no_grad():  # make "</s>" unlikely so the (noise) caption is not empty
        model.get_input_embeddings().weight[2].zero_()
        model.get_output_embeddings().weight[2].zero_()
    kw = {}
    if "num_query_tokens" in inspect.signature(Blip2Processor.__init__).parameters:
        kw["num_query_tokens"] = num_query
    proc = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": TINY_SEG_SIZE, "width": TINY_SEG_SIZE}),
        tokenizer=tokenizer,
        **kw,
    )
    save_model(out_dir, model, proc, scratch=tok_dir)


PREPROCESS_TINY_MODELS = {
    "clipseg": write_clipseg,
    "segformer": write_segformer,
    "blip2": write_blip2,
}

#: what `hifi123 preprocess --tiny` uses
TINY_PREPROCESS_SET = ("dpt", "clipseg", "blip2")


def tiny_model_dirs(
    names: Iterable[str] = TINY_PREPROCESS_SET, root: Optional[str] = None
) -> Dict[str, str]:
    """Directories of the named tiny models under `root` (default: the per-user cache), each
    written if missing — the tiny family's own cache
    (`hifi123.models.tiny.ensure_tiny_models`)."""
    from ..models.tiny import ensure_tiny_models

    return ensure_tiny_models(root, names=names)
