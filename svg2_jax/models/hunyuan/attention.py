"""HunyuanVideo's attention layers (diffusers' `Attention` + `HunyuanVideoAttnProcessor2_0`,
and the token refiner's plain `Attention` + `AttnProcessor2_0`).

The dual- and single-stream blocks attend over the joint sequence [video | text]: the
video tokens first, then T text tokens (diffusers concatenates in this order in both
block types), rotary embedding on the video part only. They hand q, k, v to the pluggable
attention object of `svg2_jax.layer_attention` with `num_text=T` and
`text_lengths` = valid text tokens per sample, so padded text keys are masked for every
query (diffusers' [B, 1, 1, Sv + T] key mask) and SVG2 clusters only the video tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.common.embeddings import apply_rotary_emb
from svg2_jax.models.common.layers import RMSNorm, linear
from svg2_jax.models.common.layers import merge_heads as _merge_heads
from svg2_jax.models.common.layers import split_heads as _heads
from svg2_jax.models.hunyuan.layers import EPS
from svg2_jax.sharding.rules import EMBED, HEADS


def _project(x, to_q, to_k, to_v, norm_q, norm_k, heads: int):
    """x: [B, S, dim] -> q, k, v [B, S, H, head_dim]; q/k normalised per head (diffusers'
    qk_norm="rms_norm": RMSNorm(head_dim, eps=1e-6) after splitting the heads)."""
    return (norm_q(_heads(to_q(x), heads)), norm_k(_heads(to_k(x), heads)),
            _heads(to_v(x), heads))


def _rope_video(x: jax.Array, rotary, num_video: int) -> jax.Array:
    """Rotate the first num_video tokens of x [B, S, H, D]; the rest (text) pass through."""
    return jnp.concatenate([apply_rotary_emb(x[:, :num_video], *rotary), x[:, num_video:]],
                           axis=1)


class HunyuanVideoAttentionProjections(nnx.Module):
    """What the dual and single blocks' attentions both have: `to_q`, `to_k`, `to_v` and
    the per-head RMS q/k norms."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (linear(dim, dim, names=(EMBED, HEADS), **kw)
                                           for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim, EPS), RMSNorm(head_dim, EPS)


class HunyuanVideoJointAttention(HunyuanVideoAttentionProjections):
    """The dual-stream blocks' `attn`: video projections (`to_q`, `to_k`, `to_v`, `norm_q`,
    `norm_k`, `to_out`) and text projections (`add_q_proj`, `add_k_proj`, `add_v_proj`,
    `norm_added_q`, `norm_added_k`, `to_add_out`), one attention over [video | text]."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(dim, heads, head_dim, **kw)
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (
            linear(dim, dim, names=(EMBED, HEADS), **kw) for _ in range(3))
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, EPS), RMSNorm(head_dim, EPS)
        self.to_out = linear(dim, dim, names=(HEADS, EMBED), **kw)
        self.to_add_out = linear(dim, dim, names=(HEADS, EMBED), **kw)

    def __call__(self, x: jax.Array, context: jax.Array, rotary, text_lengths: jax.Array,
                 attention, state, layer_index):
        """x: [B, Sv, D] video; context: [B, T, D] text; rotary: (cos, sin) [Sv, head_dim/2];
        text_lengths: [B] int32.

        Returns (video out [B, Sv, D], text out [B, T, D], new state, density [B, H]).
        """
        sv, t = x.shape[1], context.shape[1]
        q, k, v = _project(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k,
                           self.heads)
        q, k = apply_rotary_emb(q, *rotary), apply_rotary_emb(k, *rotary)
        cq, ck, cv = _project(context, self.add_q_proj, self.add_k_proj, self.add_v_proj,
                              self.norm_added_q, self.norm_added_k, self.heads)
        q, k, v = (jnp.concatenate(pair, axis=1) for pair in ((q, cq), (k, ck), (v, cv)))
        out, state, density = attention(q, k, v, state, layer_index, num_text=t,
                                        text_lengths=text_lengths)
        out = _merge_heads(out.astype(x.dtype))
        return self.to_out(out[:, :sv]), self.to_add_out(out[:, sv:]), state, density


class HunyuanVideoSingleAttention(HunyuanVideoAttentionProjections):
    """The single-stream blocks' `attn` (diffusers' pre_only=True: no output projection;
    the block's `proj_out` mixes the attention output with its MLP)."""

    def __call__(self, x: jax.Array, rotary, num_text: int, text_lengths: jax.Array,
                 attention, state, layer_index):
        """x: [B, Sv + T, D] joint sequence, the last T = num_text tokens text.

        Returns (out [B, Sv + T, D], new state, density [B, H]).
        """
        sv = x.shape[1] - num_text
        q, k, v = _project(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k,
                           self.heads)
        q, k = _rope_video(q, rotary, sv), _rope_video(k, rotary, sv)
        out, state, density = attention(q, k, v, state, layer_index, num_text=num_text,
                                        text_lengths=text_lengths)
        return _merge_heads(out.astype(x.dtype)), state, density


def refiner_attention_mask(mask: jax.Array) -> jax.Array:
    """The token refiner's self-attention mask, exactly as diffusers'
    `HunyuanVideoIndividualTokenRefiner` builds it: query i attends key j iff both are real
    tokens, and every query attends key 0 (so padded queries, whose outputs are unused, are
    never fully masked).

    mask: [B, T] (bool or 0/1) -> [B, 1, T, T] bool (query, key).
    """
    m = mask.astype(bool)
    pair = m[:, :, None] & m[:, None, :]
    return pair.at[:, :, 0].set(True)[:, None]


class HunyuanVideoRefinerAttention(nnx.Module):
    """The token refiner's `attn`: q/k/v/out projections with bias, no q/k norm, no rotary,
    dense masked attention over the text tokens only."""

    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (linear(dim, dim, names=(EMBED, HEADS), **kw)
                                           for _ in range(3))
        self.to_out = linear(dim, dim, names=(HEADS, EMBED), **kw)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [B, T, D]; mask: [B, 1, T, T] bool from `refiner_attention_mask` -> [B, T, D]."""
        q, k, v = (_heads(p(x), self.heads) for p in (self.to_q, self.to_k, self.to_v))
        # XLA attention: T is a few hundred tokens and the mask is arbitrary [T, T]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        return self.to_out(_merge_heads(out.astype(x.dtype)))
