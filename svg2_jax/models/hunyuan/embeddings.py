"""HunyuanVideo's input embeddings: patches, timestep / guidance / pooled-text conditioning,
3-D rotary positions.

Mirrors diffusers' `HunyuanVideoPatchEmbed`, `HunyuanVideoConditionEmbedding`,
`CombinedTimestepTextProjEmbeddings` and `HunyuanVideoRotaryPosEmbed` (diffusers 0.42.1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models.common.embeddings import (PixArtAlphaTextProjection, TimestepEmbedding,
                                              get_timestep_embedding, patchify, rotary_tables)
from svg2_jax.models.common.layers import linear
from svg2_jax.sharding.rules import EMBED

# diffusers' `Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)`
TIME_PROJ_DIM = 256


class HunyuanVideoPatchEmbed(nnx.Module):
    """`x_embedder`: Conv3d(kernel = stride = patch) == a Linear over flattened patches."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, dim: int, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.patch = patch
        self.proj = linear(in_channels * math.prod(patch), dim, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs, names=(None, EMBED))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, C, F, H, W] -> [B, F'*H'*W', dim], tokens in (f, h, w) order."""
        return self.proj(patchify(x, self.patch))


class HunyuanVideoConditionEmbedding(nnx.Module):
    """timestep (+ guidance) + pooled-text embedding -> the conditioning vector `temb`.

    With guidance_embeds=False this is also diffusers' `CombinedTimestepTextProjEmbeddings`
    (the token refiner's `time_text_embed`: same submodule names, same arithmetic).

    The timestep / guidance MLPs keep float32 weights and compute in float32 (Wan's
    `TimestepEmbedding`): diffusers casts the sinusoids to the activation dtype first, which
    for bf16 rounds away most of the timestep resolution for no memory worth saving.
    """

    def __init__(self, dim: int, pooled_projection_dim: int, guidance_embeds: bool, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.timestep_embedder = TimestepEmbedding(TIME_PROJ_DIM, dim, rngs=rngs)
        self.text_embedder = PixArtAlphaTextProjection(pooled_projection_dim, dim, act_fn="silu",
                                                       dtype=dtype, param_dtype=param_dtype,
                                                       rngs=rngs)
        self.guidance_embedder = (TimestepEmbedding(TIME_PROJ_DIM, dim, rngs=rngs)
                                  if guidance_embeds else None)

    def __call__(self, timestep: jax.Array, pooled_projection: jax.Array,
                 guidance: jax.Array | None = None) -> jax.Array:
        """timestep: [B]; pooled_projection: [B, pooled_projection_dim]; guidance: [B]
        (required iff the module has a guidance embedder) -> temb [B, dim] in dtype."""
        def embed(embedder, t):
            return embedder(get_timestep_embedding(t, TIME_PROJ_DIM, flip_sin_to_cos=True,
                                                   downscale_freq_shift=0))

        temb = embed(self.timestep_embedder, timestep)
        if self.guidance_embedder is not None:
            temb = temb + embed(self.guidance_embedder, guidance)
        pooled = self.text_embedder(pooled_projection.astype(self.dtype))
        return (temb + pooled.astype(jnp.float32)).astype(self.dtype)


def _axis_angles(dim: int, n: int, theta: float) -> np.ndarray:
    """[n, dim/2] float32 angles pos * theta^(-2i/dim), with diffusers'
    `get_1d_rotary_pos_embed` float32 operations (freqs_dtype=float32)."""
    exponent = np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)
    freqs = np.float32(1.0) / (np.float32(theta) ** exponent)
    return np.outer(np.arange(n, dtype=np.float32), freqs).astype(np.float32)


def rotary_embedding(rope_axes_dim: tuple[int, int, int], grid: tuple[int, int, int],
                     theta: float) -> tuple[jax.Array, jax.Array]:
    """HunyuanVideoRotaryPosEmbed for a post-patch grid (F', H', W'): (cos, sin), each
    [S, D/2] float32 with D = sum(rope_axes_dim), the frame axis' pairs first.

    One value per rotated pair (diffusers repeats each twice and its `apply_rotary_emb`
    rotates interleaved pairs, as Wan's `apply_rotary_emb` does with these tables). The
    per-axis tables are small host constants; the [S, D/2] table is a device broadcast.
    """
    return rotary_tables([_axis_angles(dim, n, theta) for dim, n in zip(rope_axes_dim, grid)],
                         grid)
