"""The text token refiner (`context_embedder`): diffusers' `HunyuanVideoTokenRefiner`,
`HunyuanVideoIndividualTokenRefiner` and `HunyuanVideoIndividualTokenRefinerBlock`.

The LLM text states are projected to the model width and refined by a few transformer
blocks that attend over the text tokens only, modulated by a timestep + mean-pooled-text
embedding. Padding is honoured exactly as diffusers does: the pooled mean is over real
tokens, and attention uses `refiner_attention_mask` (real-real pairs, plus key 0 for every
query).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.hunyuan.attention import HunyuanVideoRefinerAttention, refiner_attention_mask
from svg2_jax.models.hunyuan.embeddings import HunyuanVideoConditionEmbedding
from svg2_jax.models.common.layers import FP32LayerNorm, linear
from svg2_jax.models.common.stack import scan_blocks, stacked_blocks
from svg2_jax.models.hunyuan.layers import (EPS, HunyuanVideoAdaNorm, SiLUFeedForward,
                                            gated_residual)
from svg2_jax.sharding.rules import EMBED

# diffusers' HunyuanVideoTokenRefiner is built with its default mlp_ratio=4.0 (the model's
# own mlp_ratio is not passed to it)
REFINER_MLP_RATIO = 4.0


class HunyuanVideoIndividualTokenRefinerBlock(nnx.Module):
    """LayerNorm -> masked self-attention -> gated residual; LayerNorm -> SiLU MLP -> gated
    residual; the two gates from `norm_out(temb)` (no shift/scale modulation)."""

    def __init__(self, dim: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.norm1 = FP32LayerNorm(dim, EPS, elementwise_affine=True)
        self.attn = HunyuanVideoRefinerAttention(dim, heads, **kw)
        self.norm2 = FP32LayerNorm(dim, EPS, elementwise_affine=True)
        self.ff = SiLUFeedForward(dim, int(dim * REFINER_MLP_RATIO), **kw)
        self.norm_out = HunyuanVideoAdaNorm(dim, **kw)

    def __call__(self, x: jax.Array, temb: jax.Array, mask: jax.Array) -> jax.Array:
        """x: [B, T, D]; temb: [B, D]; mask: [B, 1, T, T] bool -> [B, T, D]."""
        attn_out = self.attn(self.norm1(x).astype(self.dtype), mask)
        gate_msa, gate_mlp = self.norm_out(temb)
        x = gated_residual(x, attn_out, gate_msa)
        return gated_residual(x, self.ff(self.norm2(x).astype(self.dtype)), gate_mlp)


class HunyuanVideoIndividualTokenRefiner(nnx.Module):
    """`token_refiner`: `refiner_blocks` stacked on a layer axis and scanned."""

    def __init__(self, dim: int, heads: int, num_layers: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.refiner_blocks = stacked_blocks(
            num_layers, lambda r: HunyuanVideoIndividualTokenRefinerBlock(
                dim, heads, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)

    def __call__(self, x: jax.Array, temb: jax.Array, text_mask: jax.Array) -> jax.Array:
        """x: [B, T, D]; temb: [B, D]; text_mask: [B, T] -> [B, T, D]."""
        mask = refiner_attention_mask(text_mask)

        def body(block, x, _):
            return block(x, temb, mask), None

        x, _ = scan_blocks(self.refiner_blocks, body, x, None)
        return x


class HunyuanVideoTokenRefiner(nnx.Module):
    """`context_embedder`: LLM text states [B, T, text_embed_dim] -> refined [B, T, D]."""

    def __init__(self, in_channels: int, heads: int, head_dim: int, num_layers: int, *,
                 dtype, param_dtype, rngs: nnx.Rngs):
        dim = heads * head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        # diffusers' CombinedTimestepTextProjEmbeddings(dim, pooled_projection_dim=in_channels)
        self.time_text_embed = HunyuanVideoConditionEmbedding(dim, in_channels, False, **kw)
        self.proj_in = linear(in_channels, dim, names=(None, EMBED), **kw)
        self.token_refiner = HunyuanVideoIndividualTokenRefiner(dim, heads, num_layers, **kw)

    def __call__(self, x: jax.Array, timestep: jax.Array, text_mask: jax.Array) -> jax.Array:
        """x: [B, T, text_embed_dim]; timestep: [B]; text_mask: [B, T] (1 = real token).

        A sample without any real token gets NaN (0 / 0 in the pooled mean), as in diffusers.
        """
        m = text_mask.astype(jnp.float32)[..., None]
        pooled = jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.sum(m, axis=1)
        temb = self.time_text_embed(timestep, pooled.astype(self.dtype))
        x = self.proj_in(x.astype(self.dtype))
        return self.token_refiner(x, temb, text_mask)
