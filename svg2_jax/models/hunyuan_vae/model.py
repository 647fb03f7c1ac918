"""The HunyuanVideo VAE as Flax NNX modules (diffusers' `AutoencoderKLHunyuanVideo`).

Layout follows diffusers 0.42.1 `models/autoencoders/autoencoder_kl_hunyuan_video.py`
module for module (`encoder`, `decoder`, `quant_conv`, `post_quant_conv`; `down_blocks`,
`mid_block`, `up_blocks`, `resnets`, `attentions`, `downsamplers`, `upsamplers`, each
causal conv's inner `conv`), so the converter only moves conv kernels to channels-last.
Activations are channels-last, [B, T, H, W, C]; the public functions take and return
diffusers' [B, C, F, H, W].

Unlike Wan's, this VAE's GroupNorms and mid-block attention see the whole clip, so it has
no exact chunked form: long or large clips go through diffusers' overlapping tiles with
linear blending (`tiling.py`), which `hunyuan_vae_encode` / `hunyuan_vae_decode` apply as
diffusers does (temporal tiles by default, spatial tiles when enabled); each tile is one
compiled call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.common.layers import linear
from svg2_jax.models.common.vae import (DiagonalGaussian, channels_first, channels_last,
                                        check_video)
from svg2_jax.models.hunyuan_vae.config import HunyuanVideoVAEConfig
from svg2_jax.models.hunyuan_vae.tiling import HunyuanVAETiling, decode_tiled, encode_tiled

EPS = 1e-6  # every GroupNorm of the model (diffusers' resnet_eps and conv_norm_out)


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def group_norm(channels: int, groups: int, *, param_dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """torch's GroupNorm(groups, channels, eps=1e-6) over channels-last input: statistics
    over every axis but the batch, per group of channels, two-pass variance (as torch), in
    float32."""
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=EPS, use_fast_variance=False,
                         dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)


class HunyuanVideoCausalConv3d(nnx.Module):
    """diffusers' `HunyuanVideoCausalConv3d`: replicate-pad time on the past side
    (kernel_t - 1 frames) and space on both sides, then a valid Conv3d (`conv`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        k = _triple(kernel_size)
        # diffusers' F.pad tuple is (k[0] // 2 on W, k[1] // 2 on H, k[2] - 1 before T)
        self.pads = ((0, 0), (k[2] - 1, 0), (k[1] // 2, k[1] // 2), (k[0] // 2, k[0] // 2),
                     (0, 0))
        self.conv = nnx.Conv(in_channels, out_channels, k, _triple(stride), padding="VALID",
                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, C_in] -> [B, T', H', W', C_out]."""
        return self.conv(jnp.pad(x, self.pads, mode="edge"))


class HunyuanVideoResnetBlockCausal3D(nnx.Module):
    """GroupNorm, SiLU, causal conv, twice, plus a 1x1x1 causal-conv shortcut when the width
    changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = group_norm(in_channels, groups, param_dtype=param_dtype, rngs=rngs)
        self.conv1 = HunyuanVideoCausalConv3d(in_channels, out_channels, 3, **kw)
        self.norm2 = group_norm(out_channels, groups, param_dtype=param_dtype, rngs=rngs)
        self.conv2 = HunyuanVideoCausalConv3d(out_channels, out_channels, 3, **kw)
        self.conv_shortcut = (HunyuanVideoCausalConv3d(in_channels, out_channels, 1, **kw)
                              if in_channels != out_channels else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)).astype(x.dtype))
        h = self.conv2(jax.nn.silu(self.norm2(h)).astype(x.dtype))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


def frame_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, frame: jax.Array,
                           query_block: int = 4096) -> jax.Array:
    """Single-head attention where token i sees the keys of frames <= frame[i] (diffusers'
    `prepare_causal_attention_mask`). q, k, v: [B, S, C]; frame: [S] -> [B, S, C].

    Queries go `query_block` at a time (each row's softmax still over all its keys, so the
    result is the same), so memory is [query_block, S] scores, not [S, S]: the mid block
    sees every token of a (temporal) tile, 72,000 of them for 5 latent frames at 720p.
    """
    s = q.shape[1]

    def attend(q, frame_q):
        mask = frame_q[:, None] >= frame[None, :]
        return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None],
                                            mask=mask[None, None])[:, :, 0]

    if s <= query_block:
        return attend(q, frame)
    n = -(-s // query_block)
    pad = n * query_block - s  # padded queries (of the last frame) are computed, then cut
    qs = jnp.moveaxis(jnp.pad(q, ((0, 0), (0, pad), (0, 0))).reshape(
        q.shape[0], n, query_block, -1), 1, 0)
    frames = jnp.pad(frame, (0, pad), mode="edge").reshape(n, query_block)
    out = jax.lax.map(lambda args: attend(*args), (qs, frames))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape[0], n * query_block, -1)[:, :s]


class HunyuanVideoMidAttention(nnx.Module):
    """diffusers' `Attention(..., norm_num_groups, residual_connection=True, bias=True)` of
    the mid block, over every token of the clip with one head of the full width; a token
    sees the tokens of its own and earlier frames (`frame_causal_attention`)."""

    def __init__(self, channels: int, groups: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.group_norm = group_norm(channels, groups, param_dtype=param_dtype, rngs=rngs)
        self.to_q, self.to_k, self.to_v, self.to_out = (linear(channels, channels, **kw)
                                                        for _ in range(4))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, C] -> same shape."""
        b, t, h, w, c = x.shape
        tokens = self.group_norm(x).astype(x.dtype).reshape(b, t * h * w, c)
        out = frame_causal_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens),
                                     jnp.repeat(jnp.arange(t), h * w))
        return self.to_out(out.reshape(b, t, h, w, c)) + x


class HunyuanVideoMidBlock3D(nnx.Module):
    """resnet, then (attention, resnet) (one layer, as diffusers builds it)."""

    def __init__(self, channels: int, groups: int, add_attention: bool, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([HunyuanVideoResnetBlockCausal3D(channels, channels, groups,
                                                                 **kw) for _ in range(2)])
        self.attentions = (nnx.List([HunyuanVideoMidAttention(channels, groups, **kw)])
                           if add_attention else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class HunyuanVideoDownsampleCausal3D(nnx.Module):
    """A 3x3x3 causal conv with stride (time: 2 or 1, space: 2 or 1 on H and W)."""

    def __init__(self, channels: int, time: int, space: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.conv = HunyuanVideoCausalConv3d(channels, channels, 3, (time, space, space),
                                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)


class HunyuanVideoUpsampleCausal3D(nnx.Module):
    """Nearest upsampling by (time, space, space), the first frame only in space, then a
    3x3x3 causal conv."""

    def __init__(self, channels: int, time: int, space: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        self.time, self.space = time, space
        self.conv = HunyuanVideoCausalConv3d(channels, channels, 3, dtype=dtype,
                                             param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, self.space, axis=2), self.space, axis=3)
        x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], self.time, axis=1)], axis=1)
        return self.conv(x)


class _Level(nnx.Module):
    """`layers` resnets, then the level's resample (`RESAMPLE`, in a one-element list under
    diffusers' name `RESAMPLERS`) when it resamples space or time (by 2)."""

    RESAMPLE: type
    RESAMPLERS: str

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int,
                 space: bool, time: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = [in_channels] + [out_channels] * layers
        self.resnets = nnx.List([HunyuanVideoResnetBlockCausal3D(a, o, groups, **kw)
                                 for a, o in zip(dims, dims[1:])])
        setattr(self, self.RESAMPLERS, nnx.List([self.RESAMPLE(
            out_channels, 2 if time else 1, 2 if space else 1, **kw)]) if space or time else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        resample = getattr(self, self.RESAMPLERS)
        return x if resample is None else resample[0](x)


class HunyuanVideoDownBlock3D(_Level):
    RESAMPLE, RESAMPLERS = HunyuanVideoDownsampleCausal3D, "downsamplers"


class HunyuanVideoUpBlock3D(_Level):
    RESAMPLE, RESAMPLERS = HunyuanVideoUpsampleCausal3D, "upsamplers"


class HunyuanVideoEncoder3D(nnx.Module):
    """conv_in, the down levels, the mid block, GroupNorm + SiLU, conv_out to 2z channels."""

    def __init__(self, config: HunyuanVideoVAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c, groups = config, config.norm_num_groups
        widths = c.block_out_channels
        self.conv_in = HunyuanVideoCausalConv3d(c.in_channels, widths[0], 3, **kw)
        self.down_blocks = nnx.List([
            HunyuanVideoDownBlock3D(widths[max(i - 1, 0)], widths[i], c.layers_per_block, groups,
                                    space, time, **kw)
            for i, (space, time) in enumerate(zip(c.spatial_levels(), c.temporal_levels()))])
        self.mid_block = HunyuanVideoMidBlock3D(widths[-1], groups, c.mid_block_add_attention,
                                                **kw)
        self.conv_norm_out = group_norm(widths[-1], groups, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = HunyuanVideoCausalConv3d(widths[-1], 2 * c.latent_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, in_channels] -> [B, T', H', W', 2 latent_channels]."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)).astype(x.dtype))


class HunyuanVideoDecoder3D(nnx.Module):
    """conv_in, the mid block, the up levels (widths reversed), GroupNorm + SiLU, conv_out."""

    def __init__(self, config: HunyuanVideoVAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c, groups = config, config.norm_num_groups
        widths = c.block_out_channels[::-1]
        self.conv_in = HunyuanVideoCausalConv3d(c.latent_channels, widths[0], 3, **kw)
        self.mid_block = HunyuanVideoMidBlock3D(widths[0], groups, c.mid_block_add_attention,
                                                **kw)
        self.up_blocks = nnx.List([
            HunyuanVideoUpBlock3D(widths[max(i - 1, 0)], widths[i], c.layers_per_block + 1,
                                  groups, space, time, **kw)
            for i, (space, time) in enumerate(zip(c.spatial_levels(), c.temporal_levels()))])
        self.conv_norm_out = group_norm(widths[-1], groups, param_dtype=param_dtype, rngs=rngs)
        self.conv_out = HunyuanVideoCausalConv3d(widths[-1], c.out_channels, 3, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, latent_channels] -> [B, T', H', W', out_channels]."""
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)).astype(x.dtype))


class AutoencoderKLHunyuanVideo(nnx.Module):
    """diffusers' `AutoencoderKLHunyuanVideo`.

    dtype: activation dtype; param_dtype: weights' (both float32 by default, as diffusers'
    pipelines run this VAE). GroupNorms compute in float32.
    """

    def __init__(self, config: HunyuanVideoVAEConfig, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = config, dtype
        z = config.latent_channels
        self.encoder = HunyuanVideoEncoder3D(config, **kw)
        self.decoder = HunyuanVideoDecoder3D(config, **kw)
        self.quant_conv = nnx.Conv(2 * z, 2 * z, (1, 1, 1), **kw)
        self.post_quant_conv = nnx.Conv(z, z, (1, 1, 1), **kw)

    def encode_tile(self, x: jax.Array) -> jax.Array:
        """One encoder pass: video [B, C, T, H, W] -> moments [B, 2z, T', H', W']."""
        return channels_first(self.quant_conv(self.encoder(channels_last(x.astype(self.dtype)))))

    def decode_tile(self, z: jax.Array) -> jax.Array:
        """One decoder pass: latents [B, z, F, H, W] -> video [B, C, T, H', W'] (unclamped, as
        diffusers returns it)."""
        return channels_first(self.decoder(self.post_quant_conv(channels_last(
            z.astype(self.dtype)))))


@nnx.jit
def encode_tile(vae: AutoencoderKLHunyuanVideo, x: jax.Array) -> jax.Array:
    """`vae.encode_tile`, compiled once per tile shape."""
    return vae.encode_tile(x)


@nnx.jit
def decode_tile(vae: AutoencoderKLHunyuanVideo, z: jax.Array) -> jax.Array:
    """`vae.decode_tile`, compiled once per tile shape."""
    return vae.decode_tile(z)


def hunyuan_vae_encode(vae: AutoencoderKLHunyuanVideo, video: jax.Array,
                       tiling: HunyuanVAETiling = HunyuanVAETiling()) -> DiagonalGaussian:
    """video [B, in_channels, 1 + 4k, H, W] in [-1, 1] (H, W multiples of the spatial
    compression) -> the posterior over [B, z, 1 + k, H/8, W/8], in diffusers' tiles
    (`tiling.encode_tiled`)."""
    c = vae.config
    check_video("HunyuanVideo VAE", "video", video, c.in_channels, c.spatial_compression,
                c.temporal_compression)
    moments = encode_tiled(functools.partial(encode_tile, vae), video, tiling,
                           c.spatial_compression_ratio, c.temporal_compression_ratio)
    return DiagonalGaussian.from_moments(moments)


def hunyuan_vae_decode(vae: AutoencoderKLHunyuanVideo, z: jax.Array,
                       tiling: HunyuanVAETiling = HunyuanVAETiling()) -> jax.Array:
    """z [B, z, F, H, W] (unscaled latents, `latents.unscale`) -> video
    [B, out_channels, 1 + 4(F - 1), 8H, 8W], not clamped (as diffusers returns it), in
    diffusers' tiles (`tiling.decode_tiled`)."""
    c = vae.config
    check_video("HunyuanVideo VAE", "latents", z, c.latent_channels, 1, 1)
    return decode_tiled(functools.partial(decode_tile, vae), z, tiling,
                        c.spatial_compression_ratio, c.temporal_compression_ratio)
