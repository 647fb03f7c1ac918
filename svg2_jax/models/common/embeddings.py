"""Embedding pieces shared by the Wan and HunyuanVideo DiTs: the sinusoidal timestep
embedding and its MLP, the text projection, patchify of [B, C, F, H, W] latents and the
two models' unpatchify orders, and the interleaved-pair rotary embedding, each matching
the diffusers function of that name.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models.common.layers import linear
from svg2_jax.sharding.rules import EMBED


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int, flip_sin_to_cos: bool,
                           downscale_freq_shift: float, max_period: int = 10000) -> jax.Array:
    """Sinusoidal embedding, the same float32 operations as diffusers' function of that name.

    timesteps: [B] (fractional allowed) -> [B, embedding_dim] float32.
    """
    half = embedding_dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    exponent = exponent / (half - downscale_freq_shift)
    emb = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if embedding_dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """linear_1 -> SiLU -> linear_2, in float32 (diffusers keeps `time_embedder` in fp32)."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, rngs: nnx.Rngs):
        f32 = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
        self.linear_1 = linear(in_channels, time_embed_dim, names=(None, EMBED), **f32)
        self.linear_2 = linear(time_embed_dim, time_embed_dim, names=(EMBED, EMBED), **f32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, in_channels] -> [B, time_embed_dim] float32."""
        return self.linear_2(jax.nn.silu(self.linear_1(x.astype(jnp.float32))))


def patchify(x: jax.Array, patch_size: tuple[int, int, int]) -> jax.Array:
    """[B, C, F, H, W] -> [B, F'*H'*W', C*p_t*p_h*p_w], tokens in (f, h, w) order and
    features in (c, p_t, p_h, p_w) order: the flattening of diffusers' Conv3d weight, so
    the strided Conv3d is exactly a Linear on these rows."""
    b, c, f, h, w = x.shape
    pt, ph, pw = patch_size
    x = x.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    x = x.transpose(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify_channels_last(x: jax.Array, grid: tuple[int, int, int],
                             patch: tuple[int, int, int]) -> jax.Array:
    """Wan's output order: [B, S, p_t*p_h*p_w*C] (features in (p_t, p_h, p_w, c) order, as
    diffusers' Wan `proj_out`) -> [B, C, F'*p_t, H'*p_h, W'*p_w]."""
    b, (f, h, w), (pt, ph, pw) = x.shape[0], grid, patch
    x = x.reshape(b, f, h, w, pt, ph, pw, -1).transpose(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, x.shape[1], f * pt, h * ph, w * pw)


def unpatchify_channels_first(x: jax.Array, grid: tuple[int, int, int],
                              patch: tuple[int, int, int]) -> jax.Array:
    """HunyuanVideo's output order, the inverse of `patchify`: [B, S, C*p_t*p_h*p_w]
    (features in (c, p_t, p_h, p_w) order, as diffusers' HunyuanVideo `proj_out` and the
    official `unpatchify`) -> [B, C, F'*p_t, H'*p_h, W'*p_w]."""
    b, (f, h, w), (pt, ph, pw) = x.shape[0], grid, patch
    x = x.reshape(b, f, h, w, -1, pt, ph, pw).transpose(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, x.shape[1], f * pt, h * ph, w * pw)


class PixArtAlphaTextProjection(nnx.Module):
    """diffusers' PixArtAlphaTextProjection: linear_1 -> activation -> linear_2.

    act_fn: "gelu_tanh" (diffusers' default; Wan's text embedder) or "silu"
    (HunyuanVideo's pooled-text embedder).
    """

    ACTIVATIONS = {"gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
                   "silu": jax.nn.silu}

    def __init__(self, in_features: int, hidden_size: int, *, act_fn: str, dtype, param_dtype,
                 rngs: nnx.Rngs):
        if act_fn not in self.ACTIVATIONS:
            raise ValueError(f"PixArtAlphaTextProjection: act_fn must be one of "
                             f"{sorted(self.ACTIVATIONS)}, got {act_fn!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act_fn = act_fn
        self.linear_1 = linear(in_features, hidden_size, names=(None, EMBED), **kw)
        self.linear_2 = linear(hidden_size, hidden_size, names=(EMBED, EMBED), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., in_features] -> [..., hidden_size]."""
        return self.linear_2(self.ACTIVATIONS[self.act_fn](self.linear_1(x)))


def rotary_tables(axis_angles: list[np.ndarray], grid: tuple[int, int, int]
                  ) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each [S, sum of the axes' pairs] float32, over a post-patch grid
    (F', H', W') from one angle table [n, pairs] per axis (frame, height, width): the
    frame axis' pairs first. Only the small per-axis tables become host constants (cos /
    sin taken in the angles' own precision, then rounded to float32); the [S, D/2] table is
    a broadcast on the device."""
    cos, sin = [], []
    for axis, angles in enumerate(axis_angles):
        n, pairs = angles.shape
        shape = [1, 1, 1, pairs]
        shape[axis] = n
        for table, fn in ((cos, np.cos), (sin, np.sin)):
            part = jnp.asarray(fn(angles).astype(np.float32).reshape(shape))
            table.append(jnp.broadcast_to(part, (*grid, pairs)))
    s = math.prod(grid)
    return (jnp.concatenate(cos, axis=-1).reshape(s, -1),
            jnp.concatenate(sin, axis=-1).reshape(s, -1))


def apply_rotary_emb(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) in float32, return x.dtype.

    x: [B, S, H, D]; cos, sin: [S, D/2].
    """
    b, s, h, d = x.shape
    xf = x.astype(jnp.float32).reshape(b, s, h, d // 2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    c, sn = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * sn, x1 * sn + x2 * c], axis=-1)
    return out.reshape(b, s, h, d).astype(x.dtype)
