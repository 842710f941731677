"""Mutual self-attention injection through diffusers attention processors.

HiFi-123 §3.2 (Eq. 3), algorithms.md A.6, decisions 2-3. In the selected self-attention layers the
target branch's queries attend over the *reference* branch's keys and values:

    out_tgt = softmax(Q_tgt K_ref^T / sqrt(d)) V_ref

Layers are selected by module name (`...attn1` of chosen transformer blocks), never by a call
counter, so any batch layout works. Transformer blocks are numbered in UNet execution order (down
blocks, mid block, up blocks); SD2 has 16 and the default selection {12, 13, 14, 15} is the last
32x32 decoder block plus the three 64x64 ones.

Modes of the shared `InjectionState`:
* "off":    plain attention (our processor computes exactly what the stock one does);
* "record": plain attention, and the selected layers store (K, V) for the current step in `store`
            — this is how the reference branch is cached;
* "inject": every row of the batch uses the stored reference (K, V) of the current step;
* "joint":  reference and targets in ONE batch: rows in `target_rows` use the K/V of row
            `ref_row` of the same call (the MasaCtrl layout; used to cross-check the cache).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

_BLOCK_RE = re.compile(
    r"^(?P<stage>down_blocks|mid_block|up_blocks)\.(?:(?P<b>\d+)\.)?attentions\.(?P<a>\d+)\."
    r"transformer_blocks\.(?P<t>\d+)\.(?P<kind>attn1|attn2)\.processor$"
)
_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def self_attention_layers(unet) -> List[str]:
    """Names (without `.processor`) of all self-attention layers in execution order."""
    keys = []
    for name in unet.attn_processors.keys():
        m = _BLOCK_RE.match(name)
        if m and m.group("kind") == "attn1":
            order = (
                _STAGE_ORDER[m.group("stage")],
                int(m.group("b") or 0),
                int(m.group("a")),
                int(m.group("t")),
            )
            keys.append((order, name[: -len(".processor")]))
    return [n for _, n in sorted(keys)]


def select_layers(unet, blocks: Sequence[int]) -> List[str]:
    """attn1 layer names of the transformer blocks with the given execution-order indices."""
    layers = self_attention_layers(unet)
    bad = [b for b in blocks if not -len(layers) <= int(b) < len(layers)]
    if bad:
        raise ValueError(
            f"inject_blocks {list(blocks)} out of range: this UNet has {len(layers)} transformer "
            f"blocks (0..{len(layers) - 1})"
        )
    return [layers[int(b)] for b in blocks]


@dataclass
class InjectionState:
    """Shared by all injected processors of one UNet."""

    mode: str = "off"
    step: Optional[int] = None
    store: Dict[int, Dict[str, Tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    ref_row: int = 0
    target_rows: Tuple[int, ...] = ()
    store_device: Optional[torch.device] = None

    def kv(self, layer: str) -> Tuple[torch.Tensor, torch.Tensor]:
        try:
            return self.store[self.step][layer]
        except KeyError:
            raise RuntimeError(
                f"no cached reference K/V for step {self.step}, layer {layer}: the reference "
                "cache was built with other steps or layers"
            ) from None


class MutualSelfAttentionProcessor:
    """A diffusers attention processor (SDPA) with optional reference K/V injection.

    Signature-compatible with diffusers 0.19 and current releases. `layer` is the module name;
    `state` is shared. `spy`, when set, is called as spy(layer, q, k, v, out) for instrumentation.
    """

    def __init__(self, layer: str, state: InjectionState) -> None:
        self.layer = layer
        self.state = state
        self.spy = None

    def _kv(self, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        st = self.state
        if st.mode == "record":
            dev = st.store_device or key.device
            st.store.setdefault(st.step, {})[self.layer] = (
                key.detach().to(dev),
                value.detach().to(dev),
            )
        elif st.mode == "inject":
            k_ref, v_ref = st.kv(self.layer)
            b = key.shape[0]
            key = k_ref.to(key).expand(b, *k_ref.shape[1:])
            value = v_ref.to(value).expand(b, *v_ref.shape[1:])
        elif st.mode == "joint" and st.target_rows:
            rows = torch.tensor(st.target_rows, device=key.device)
            key, value = key.clone(), value.clone()
            key[rows] = key[st.ref_row : st.ref_row + 1].expand(len(st.target_rows), *key.shape[1:])
            value[rows] = value[st.ref_row : st.ref_row + 1].expand(
                len(st.target_rows), *value.shape[1:]
            )
        elif st.mode not in ("off", "joint"):
            raise ValueError(f"unknown injection mode {st.mode!r}")
        return key, value

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif getattr(attn, "norm_cross", None):
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        key, value = self._kv(key, value)

        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        out = sdpa(q, k, v, attention_mask, float(attn.scale))
        if self.spy is not None:
            self.spy(self.layer, q, k, v, out)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / attn.rescale_output_factor


def sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float
) -> torch.Tensor:
    """softmax(scale q k^T + mask) v through `scaled_dot_product_attention`, on every torch >= 2.0.

    torch 2.0 (threestudio's stack) has no `scale=` keyword: SDPA always uses head_dim ** -0.5,
    which is the scale of every diffusers attention layer we inject into (SD2's included). A
    different scale is folded into the queries, which is the same product."""
    default = q.shape[-1] ** -0.5
    if abs(scale - default) > 1e-12 * default:
        q = q * (scale / default)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)


@contextmanager
def mutual_self_attention(unet, layers: Iterable[str], state: InjectionState):
    """Install injected processors on `layers` (attn1 module names) for the duration of the block;
    every other processor is left as it was, and all are restored afterwards."""
    original = dict(unet.attn_processors)
    layers = list(layers)
    procs = dict(original)
    missing = [n for n in layers if f"{n}.processor" not in procs]
    if missing:
        raise ValueError(f"no attention layers named {missing} in this UNet")
    installed = {}
    for n in layers:
        p = MutualSelfAttentionProcessor(n, state)
        procs[f"{n}.processor"] = p
        installed[n] = p
    unet.set_attn_processor(dict(procs))
    try:
        yield installed
    finally:
        unet.set_attn_processor(dict(original))
