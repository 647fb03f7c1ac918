"""Wan's input embeddings: timestep + text + CLIP image conditioning and 3-D rotary positions.

Mirrors diffusers' `WanTimeTextImageEmbedding`, `WanImageEmbedding` and
`WanRotaryPosEmbed` (diffusers 0.42.1, `models/transformers/transformer_wan.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models.common.embeddings import (PixArtAlphaTextProjection, TimestepEmbedding,
                                              get_timestep_embedding, rotary_tables)
from svg2_jax.models.common.layers import FeedForward, FP32LayerNorm, linear
from svg2_jax.models.wan.config import WanConfig
from svg2_jax.sharding.rules import EMBED, MLP


class WanImageEmbedding(nnx.Module):
    """CLIP image features to the model width (I2V): LayerNorm, FF (exact GELU), LayerNorm.

    The two LayerNorms have affine parameters and torch's default eps 1e-5 (diffusers'
    `FP32LayerNorm(in_features)`), unlike the blocks' norms.
    """

    def __init__(self, in_features: int, out_features: int, pos_embed_seq_len: int | None, *,
                 dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.norm1 = FP32LayerNorm(in_features, 1e-5, elementwise_affine=True)
        self.ff = FeedForward(in_features, in_features, out_features, approximate=False,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = FP32LayerNorm(out_features, 1e-5, elementwise_affine=True)
        self.pos_embed = (None if pos_embed_seq_len is None else nnx.Param(
            jnp.zeros((1, pos_embed_seq_len, in_features), param_dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, N, in_features] -> [B, N, out_features]; with a position embedding (FLF2V)
        the first- and last-frame features arrive as 2B rows: [2B, N, E] -> [B, 2N, out]."""
        if self.pos_embed is not None:
            _, n, e = x.shape
            x = x.reshape(-1, 2 * n, e) + self.pos_embed[...]
        h = self.ff(self.norm1(x).astype(self.dtype))
        return self.norm2(h).astype(self.dtype)


class WanTimeTextImageEmbedding(nnx.Module):
    """Timestep, text and (I2V) image conditioning (diffusers' `condition_embedder`)."""

    def __init__(self, config: WanConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        dim = config.inner_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.freq_dim = config.freq_dim
        self.time_embedder = TimestepEmbedding(config.freq_dim, dim, rngs=rngs)
        self.time_proj = linear(dim, 6 * dim, names=(EMBED, MLP), **kw)
        self.text_embedder = PixArtAlphaTextProjection(config.text_dim, dim, act_fn="gelu_tanh",
                                                       **kw)
        self.image_embedder = (None if config.image_dim is None else WanImageEmbedding(
            config.image_dim, dim, config.pos_embed_seq_len, **kw))

    def __call__(self, timestep: jax.Array, encoder_hidden_states: jax.Array,
                 encoder_hidden_states_image: jax.Array | None):
        """timestep: [B], or [B, S] one per video token (Wan2.2 TI2V, diffusers'
        `expand_timesteps`); encoder_hidden_states: [B, L, text_dim];
        encoder_hidden_states_image: [B, N, image_dim] or None.

        Returns temb [B, T, D], timestep_proj [B, T, 6D] (T = 1, or S per token), text
        [B, L, D], image [B, N, D] | None, all in the activation dtype (diffusers casts temb
        to the text states' dtype).
        """
        b = timestep.shape[0]
        t = get_timestep_embedding(timestep.reshape(-1), self.freq_dim, flip_sin_to_cos=True,
                                   downscale_freq_shift=0)
        temb = self.time_embedder(t).astype(self.dtype)
        temb = temb.reshape(b, -1, temb.shape[-1])
        timestep_proj = self.time_proj(jax.nn.silu(temb))
        text = self.text_embedder(encoder_hidden_states.astype(self.dtype))
        image = None
        if encoder_hidden_states_image is not None:
            image = self.image_embedder(encoder_hidden_states_image.astype(self.dtype))
        return temb, timestep_proj, text, image


def rope_dims(attention_head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) parts of the head dim: h = w = 2 * (D // 6), t = the rest."""
    h = w = 2 * (attention_head_dim // 6)
    return attention_head_dim - h - w, h, w


def _axis_angles(dim: int, n: int, theta: float) -> np.ndarray:
    """[n, dim/2] float64 angles pos * theta^(-2i/dim), as diffusers builds them."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return np.outer(np.arange(n, dtype=np.float64), inv_freq)


def rotary_embedding(attention_head_dim: int, grid: tuple[int, int, int],
                     theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """WanRotaryPosEmbed for a post-patch grid (F', H', W'): (cos, sin), each [S, D/2] f32.

    One value per rotated pair: diffusers stores every value twice (repeat_interleave)
    and reads back the even (cos) / odd (sin) copies. Angles are computed in float64 on
    the host, then rounded to float32 as diffusers does.
    """
    return rotary_tables([_axis_angles(dim, n, theta)
                          for dim, n in zip(rope_dims(attention_head_dim), grid)], grid)
