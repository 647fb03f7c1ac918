"""Wan's self- and cross-attention (diffusers' `WanAttention` + `WanAttnProcessor`).

Self-attention hands q, k, v to the pluggable attention object of
`svg2_jax.layer_attention` (dense or SVG2); cross-attention to the text (and, for I2V, to
the CLIP image tokens through the added key/value projections) is always dense.
"""

from __future__ import annotations

import jax
from flax import nnx

from svg2_jax.models.common.embeddings import apply_rotary_emb
from svg2_jax.models.common.layers import RMSNorm, linear
from svg2_jax.models.common.layers import merge_heads as _merge_heads
from svg2_jax.models.common.layers import split_heads as _heads
from svg2_jax.sharding.rules import EMBED, HEADS


class WanAttentionProjections(nnx.Module):
    """What both Wan attentions (diffusers' `WanAttention`) have: `to_q`, `to_k`, `to_v`,
    `to_out` and the RMS q/k norms across all heads."""

    def __init__(self, dim: int, heads: int, eps: float, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (linear(dim, dim, names=(EMBED, HEADS), **kw)
                                           for _ in range(3))
        self.to_out = linear(dim, dim, names=(HEADS, EMBED), **kw)
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)


class WanSelfAttention(WanAttentionProjections):
    """attn1: q/k/v projections, RMS q/k norm across heads, 3-D RoPE, pluggable attention."""

    def __call__(self, x: jax.Array, rotary: tuple[jax.Array, jax.Array], attention, state,
                 layer_index):
        """x: [B, S, D]; rotary: (cos, sin) [S, head_dim/2]; attention(q, k, v, state,
        layer_index) with q, k, v [B, S, H, head_dim].

        Returns (out [B, S, D], new_state, density [B, H]).
        """
        q = _heads(self.norm_q(self.to_q(x)), self.heads)
        k = _heads(self.norm_k(self.to_k(x)), self.heads)
        v = _heads(self.to_v(x), self.heads)
        q, k = apply_rotary_emb(q, *rotary), apply_rotary_emb(k, *rotary)
        out, state, density = attention(q, k, v, state, layer_index)
        return self.to_out(_merge_heads(out.astype(x.dtype))), state, density


class WanCrossAttention(WanAttentionProjections):
    """attn2: queries from the video tokens, keys/values from the text; for I2V also from
    the image tokens (`add_k_proj`, `add_v_proj`, `norm_added_k`), the two attention
    outputs summed before `to_out`, as `WanAttnProcessor` does."""

    def __init__(self, dim: int, heads: int, eps: float, added_kv_proj_dim: int | None, *,
                 implementation: str | None, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        super().__init__(dim, heads, eps, **kw)
        self.implementation = implementation
        if added_kv_proj_dim is not None:
            self.add_k_proj = linear(added_kv_proj_dim, dim, names=(EMBED, HEADS), **kw)
            self.add_v_proj = linear(added_kv_proj_dim, dim, names=(EMBED, HEADS), **kw)
            self.norm_added_k = RMSNorm(dim, eps)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _attend(self, q, k, v):
        return jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)

    def __call__(self, x: jax.Array, context: jax.Array, context_image: jax.Array | None):
        """x: [B, S, D]; context: [B, L, D] text; context_image: [B, N, D] or None.
        Returns [B, S, D]."""
        q = _heads(self.norm_q(self.to_q(x)), self.heads)
        k = _heads(self.norm_k(self.to_k(context)), self.heads)
        v = _heads(self.to_v(context), self.heads)
        out = self._attend(q, k, v)
        if self.add_k_proj is not None:
            k_img = _heads(self.norm_added_k(self.add_k_proj(context_image)), self.heads)
            v_img = _heads(self.add_v_proj(context_image), self.heads)
            out = out + self._attend(q, k_img, v_img)
        return self.to_out(_merge_heads(out))
