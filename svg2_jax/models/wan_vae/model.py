"""The Wan2.1 / Wan2.2 video VAE as Flax NNX modules (diffusers' `AutoencoderKLWan`).

Layout follows diffusers 0.42.1 `models/autoencoders/autoencoder_kl_wan.py` module for
module (`encoder`, `quant_conv`, `post_quant_conv`, `decoder`; `down_blocks`, `mid_block`,
`up_blocks`, `resnets`, ...), so the converter only moves conv kernels to channels-last and
renames `resample.1` (see keys.py). Activations are channels-last, [B, T, H, W, C]; the
public `encode` / `decode` take and return diffusers' [B, C, F, H, W].

The temporal convolutions are causal: frame t sees frames <= t, the past padded with zeros.
Each one's feature cache (the last input frames it needs from the previous chunk) is
explicit state: a module's `__call__(x, cache)` returns `(y, new_cache)`, the cache a pytree
mirroring the modules, `None` for the first chunk. So a clip is walked in chunks (diffusers'
order: the first frame alone, then `chunk_frames` at a time) inside one `jax.lax.scan`,
memory bounded by a chunk, and the same code on the whole clip at once (chunk_frames=None)
gives the same result: the first chunk's rules (its first frame is not resampled in time,
Wan2.2's duplicating shortcut drops its leading frames) apply to the clip's first frame
whatever the chunk holds.

Calling it:

    vae = AutoencoderKLWan(PRESETS["wan2.1-vae"], rngs=nnx.Rngs(0))   # or load(...)
    posterior = wan_vae_encode(vae, video)      # [B, 3, 1 + 4k, H, W] in [-1, 1]
    video = wan_vae_decode(vae, posterior.mode())

(`nnx.jit`-compiled; `vae.encode` / `vae.decode` are the same, uncompiled.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.common.vae import (DiagonalGaussian, channels_first, channels_last,
                                        check_video)
from svg2_jax.models.wan_vae.config import WanVAEConfig


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def _part(cache, key):
    """A child's cache, None before the first chunk."""
    return None if cache is None else cache[key]


def run_layers(layers, x, cache):
    """Stateful layers in sequence: (x, [each layer's new cache])."""
    caches = []
    for i, layer in enumerate(layers):
        x, c = layer(x, _part(cache, i))
        caches.append(c)
    return x, caches


class WanCausalConv3d(nnx.Conv):
    """diffusers' `WanCausalConv3d`: a Conv3d padded in time on the past side only
    (2 x its time padding), in space on both sides.

    cache: the last `time_pad` frames of its time-padded input, [B, time_pad, H, W, C_in]
    (None: zeros, i.e. the causal padding of a clip's start); None when time_pad is 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 *, dtype, param_dtype, rngs: nnx.Rngs):
        (pt, ph, pw) = _triple(padding)
        super().__init__(in_channels, out_channels, _triple(kernel_size), _triple(stride),
                         padding=((0, 0), (ph, ph), (pw, pw)), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.time_pad = 2 * pt

    def __call__(self, x: jax.Array, cache: jax.Array | None = None):
        """x: [B, T, H, W, C_in] -> ([B, T', H', W', C_out], new cache)."""
        if not self.time_pad:
            return super().__call__(x), None
        if cache is None:
            cache = jnp.zeros((x.shape[0], self.time_pad, *x.shape[2:]), x.dtype)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        return super().__call__(x), x[:, -self.time_pad:]


class WanRMSNorm(nnx.Module):
    """diffusers' `WanRMS_norm` over channels: F.normalize(x) * sqrt(dim) * gamma, in float32.
    `gamma` keeps diffusers' broadcast shape ([dim, 1, 1, 1]; [dim, 1, 1] for `images`) so
    checkpoints copy unchanged."""

    def __init__(self, dim: int, images: bool, *, param_dtype):
        self.root_dim = dim ** 0.5
        self.gamma = nnx.Param(jnp.ones((dim, 1, 1) if images else (dim, 1, 1, 1), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., C] -> [..., C] in x.dtype."""
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        y = xf / jnp.maximum(norm, 1e-12) * self.root_dim
        return (y * self.gamma[...].reshape(-1).astype(jnp.float32)).astype(x.dtype)


class WanAttentionBlock(nnx.Module):
    """diffusers' `WanAttentionBlock` (in the mid blocks): single-head self-attention within
    each frame (no state: frames do not see each other)."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = WanRMSNorm(dim, images=True, param_dtype=param_dtype)
        self.to_qkv = nnx.Conv(dim, 3 * dim, (1, 1), **kw)
        self.proj = nnx.Conv(dim, dim, (1, 1), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, C] -> same shape."""
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
        return self.proj(out) + x


class WanResidualBlock(nnx.Module):
    """diffusers' `WanResidualBlock`: RMSNorm, SiLU, causal conv, twice, plus a (1x1x1 conv)
    shortcut. cache: {"conv1", "conv2"}."""

    def __init__(self, in_dim: int, out_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = WanRMSNorm(in_dim, images=False, param_dtype=param_dtype)
        self.conv1 = WanCausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
        self.norm2 = WanRMSNorm(out_dim, images=False, param_dtype=param_dtype)
        self.conv2 = WanCausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
        self.conv_shortcut = (WanCausalConv3d(in_dim, out_dim, 1, **kw) if in_dim != out_dim
                              else None)

    def __call__(self, x: jax.Array, cache):
        h = x if self.conv_shortcut is None else self.conv_shortcut(x)[0]
        x, c1 = self.conv1(jax.nn.silu(self.norm1(x)), _part(cache, "conv1"))
        x, c2 = self.conv2(jax.nn.silu(self.norm2(x)), _part(cache, "conv2"))
        return x + h, {"conv1": c1, "conv2": c2}


def _double_frames(y: jax.Array) -> jax.Array:
    """[B, T, H, W, 2C] -> [B, 2T, H, W, C]: frame 2t from the first C channels at t, 2t+1
    from the second (diffusers' reshape(b, 2, c, ...) + stack)."""
    b, t, h, w, c2 = y.shape
    y = jnp.moveaxis(y.reshape(b, t, h, w, 2, c2 // 2), 4, 2)
    return y.reshape(b, 2 * t, h, w, c2 // 2)


class WanResample(nnx.Module):
    """diffusers' `WanResample`: 2x spatial up- ("upsample2d", nearest + 3x3 conv) or down-
    sampling ("downsample2d", zero pad right/bottom + stride-2 3x3 conv) per frame, and for
    the "3d" modes also 2x in time (a causal (3, 1, 1) conv to twice the channels, split
    into two frames; or a stride-2 (3, 1, 1) conv). A clip's first frame is never resampled
    in time (T -> 1 + 2(T - 1) up, 1 + (T - 1) / 2 down).

    `resample` is the conv of diffusers' `resample` nn.Sequential (its key `resample.1`).
    cache: the time conv's (upsample3d: its last 2 input frames, zeros after the first
    frame; downsample3d: the last input frame), None for the 2d modes.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        if mode not in self.MODES:
            raise ValueError(f"WanResample: mode must be one of {self.MODES}, got {mode!r}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        if mode.startswith("upsample"):
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.resample = nnx.Conv(dim, out, (3, 3), padding=((1, 1), (1, 1)), **kw)
        else:
            self.resample = nnx.Conv(dim, dim, (3, 3), strides=2, padding=((0, 1), (0, 1)),
                                     **kw)
        if mode == "upsample3d":
            self.time_conv = WanCausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
        elif mode == "downsample3d":
            self.time_conv = WanCausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)
        else:
            self.time_conv = None

    def _upsample_time(self, x, cache):
        if cache is not None:
            y, cache = self.time_conv(x, cache)
            return _double_frames(y), cache
        first, rest = x[:, :1], x[:, 1:]
        if not rest.shape[1]:
            return first, jnp.zeros((x.shape[0], self.time_conv.time_pad, *x.shape[2:]),
                                    x.dtype)
        y, cache = self.time_conv(rest, None)
        return jnp.concatenate([first, _double_frames(y)], axis=1), cache

    def _downsample_time(self, x, cache):
        last = x[:, -1:]
        if cache is not None:
            return self.time_conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))[0], last
        if x.shape[1] == 1:
            return x, last
        return jnp.concatenate([x[:, :1], self.time_conv(x)[0]], axis=1), last

    def __call__(self, x: jax.Array, cache):
        """x: [B, T, H, W, C] -> ([B, T', H', W', C'], new cache)."""
        new = None
        if self.mode == "upsample3d":
            x, new = self._upsample_time(x, cache)
        if self.mode.startswith("upsample"):
            # nearest-exact at an integer factor is repetition (computed exactly in any dtype)
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        x = self.resample(x)
        if self.mode == "downsample3d":
            x, new = self._downsample_time(x, cache)
        return x, new


class AvgDown3D(nnx.Module):
    """diffusers' `AvgDown3D` (Wan2.2's down-block shortcut, no parameters): zero-pad time at
    the front to a multiple of factor_t, fold factor_t x factor_s x factor_s neighbours into
    channels, average groups of channels down to out_channels."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        factor = factor_t * factor_s * factor_s
        if in_channels * factor % out_channels:
            raise ValueError(f"AvgDown3D: in_channels ({in_channels}) x factor ({factor}) must "
                             f"be divisible by out_channels ({out_channels})")
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, T, H, W, C] -> [B, ceil(T / ft), H / fs, W / fs, out_channels]."""
        ft, fs = self.factor_t, self.factor_s
        x = jnp.pad(x, ((0, 0), ((ft - x.shape[1] % ft) % ft, 0), (0, 0), (0, 0), (0, 0)))
        b, t, h, w, c = x.shape
        x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
        x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # channel index c * factor + (ft, fs, fs)
        x = x.reshape(b, t // ft, h // fs, w // fs, self.out_channels, -1)
        return jnp.mean(x, axis=-1)


class DupUp3D(nnx.Module):
    """diffusers' `DupUp3D` (Wan2.2's up-block shortcut, no parameters): repeat channels, then
    unfold them into factor_t x factor_s x factor_s neighbours; on a clip's first chunk the
    first factor_t - 1 frames are dropped (its first frame is not doubled in time)."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int):
        self.factor = factor_t * factor_s * factor_s
        if out_channels * self.factor % in_channels:
            raise ValueError(f"DupUp3D: out_channels ({out_channels}) x factor ({self.factor}) "
                             f"must be divisible by in_channels ({in_channels})")
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.repeats = out_channels * self.factor // in_channels

    def __call__(self, x: jax.Array, first_chunk: bool) -> jax.Array:
        """x: [B, T, H, W, C_in] -> [B, T ft (- (ft - 1) on the first chunk), H fs, W fs,
        C_out]."""
        ft, fs = self.factor_t, self.factor_s
        b, t, h, w, _ = x.shape
        x = jnp.repeat(x, self.repeats, axis=-1).reshape(b, t, h, w, self.out_channels, ft, fs, fs)
        x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, -1)
        return x[:, ft - 1:] if first_chunk else x


class WanMidBlock(nnx.Module):
    """diffusers' `WanMidBlock`: resnet, then (attention, resnet) x num_layers.
    cache: [each resnet's]."""

    def __init__(self, dim: int, num_layers: int = 1, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([WanResidualBlock(dim, dim, **kw)
                                 for _ in range(num_layers + 1)])
        self.attentions = nnx.List([WanAttentionBlock(dim, **kw) for _ in range(num_layers)])

    def __call__(self, x: jax.Array, cache):
        x, c = self.resnets[0](x, _part(cache, 0))
        caches = [c]
        for i, (attn, resnet) in enumerate(zip(self.attentions, self.resnets[1:]), 1):
            x, c = resnet(attn(x), _part(cache, i))
            caches.append(c)
        return x, caches


class WanResidualDownBlock(nnx.Module):
    """diffusers' `WanResidualDownBlock` (Wan2.2): resnets and a resample, plus the averaging
    shortcut. cache: {"resnets", "downsampler"}."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temperal_downsample: bool,
                 down_flag: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temperal_downsample else 1,
                                      2 if down_flag else 1)
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nnx.List([WanResidualBlock(a, b, **kw) for a, b in zip(dims, dims[1:])])
        self.downsampler = (WanResample(out_dim, "downsample3d" if temperal_downsample
                                       else "downsample2d", **kw) if down_flag else None)

    def __call__(self, x: jax.Array, cache):
        shortcut = self.avg_shortcut(x)
        x, c_res = run_layers(self.resnets, x, _part(cache, "resnets"))
        c_down = None
        if self.downsampler is not None:
            x, c_down = self.downsampler(x, _part(cache, "downsampler"))
        return x + shortcut, {"resnets": c_res, "downsampler": c_down}


class WanEncoder3d(nnx.Module):
    """diffusers' `WanEncoder3d`. Wan2.1: `down_blocks` is the flat list of resnets and
    resamples (`attn_scales` is empty); Wan2.2 (is_residual): one
    `WanResidualDownBlock` per level. cache: {"conv_in", "down_blocks", "mid_block",
    "conv_out"}."""

    def __init__(self, config: WanVAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c = config
        dims = [c.base_dim * u for u in (1, *c.dim_mult)]
        self.conv_in = WanCausalConv3d(c.in_channels, dims[0], 3, padding=1, **kw)
        blocks, last = [], len(c.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims, dims[1:])):
            if c.is_residual:
                blocks.append(WanResidualDownBlock(
                    in_dim, out_dim, c.num_res_blocks,
                    temperal_downsample=c.temperal_downsample[i] if i != last else False,
                    down_flag=i != last, **kw))
                continue
            for _ in range(c.num_res_blocks):
                blocks.append(WanResidualBlock(in_dim, out_dim, **kw))
                in_dim = out_dim
            if i != last:
                mode = "downsample3d" if c.temperal_downsample[i] else "downsample2d"
                blocks.append(WanResample(out_dim, mode, **kw))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = WanMidBlock(dims[-1], 1, **kw)
        self.norm_out = WanRMSNorm(dims[-1], images=False, param_dtype=param_dtype)
        self.conv_out = WanCausalConv3d(dims[-1], 2 * c.z_dim, 3, padding=1, **kw)

    def __call__(self, x: jax.Array, cache):
        """x: [B, T, H, W, C] -> ([B, T', H', W', 2 z_dim], new cache)."""
        x, c_in = self.conv_in(x, _part(cache, "conv_in"))
        x, c_down = run_layers(self.down_blocks, x, _part(cache, "down_blocks"))
        x, c_mid = self.mid_block(x, _part(cache, "mid_block"))
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _part(cache, "conv_out"))
        return x, {"conv_in": c_in, "down_blocks": c_down, "mid_block": c_mid, "conv_out": c_out}


class WanUpBlock(nnx.Module):
    """diffusers' `WanUpBlock` (Wan2.1): num_res_blocks + 1 resnets and an optional
    resample (to half the channels). cache: {"resnets", "upsamplers"}."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample_mode, *, dtype,
                 param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([WanResidualBlock(a, b, **kw) for a, b in zip(dims, dims[1:])])
        self.upsamplers = (None if upsample_mode is None
                           else nnx.List([WanResample(out_dim, upsample_mode, **kw)]))

    def __call__(self, x: jax.Array, cache, first_chunk: bool):
        x, c_res = run_layers(self.resnets, x, _part(cache, "resnets"))
        c_up = None
        if self.upsamplers is not None:
            x, c_up = run_layers(self.upsamplers, x, _part(cache, "upsamplers"))
        return x, {"resnets": c_res, "upsamplers": c_up}


class WanResidualUpBlock(nnx.Module):
    """diffusers' `WanResidualUpBlock` (Wan2.2): resnets and a resample (same channels), plus
    the duplicating shortcut. cache: {"resnets", "upsampler"}."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temperal_upsample: bool,
                 up_flag: bool, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.avg_shortcut = (DupUp3D(in_dim, out_dim, 2 if temperal_upsample else 1, 2)
                             if up_flag else None)
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([WanResidualBlock(a, b, **kw) for a, b in zip(dims, dims[1:])])
        self.upsampler = (WanResample(out_dim, "upsample3d" if temperal_upsample else "upsample2d",
                                      upsample_out_dim=out_dim, **kw) if up_flag else None)

    def __call__(self, x: jax.Array, cache, first_chunk: bool):
        shortcut = x
        x, c_res = run_layers(self.resnets, x, _part(cache, "resnets"))
        c_up = None
        if self.upsampler is not None:
            x, c_up = self.upsampler(x, _part(cache, "upsampler"))
        if self.avg_shortcut is not None:
            x = x + self.avg_shortcut(shortcut, first_chunk)
        return x, {"resnets": c_res, "upsampler": c_up}


class WanDecoder3d(nnx.Module):
    """diffusers' `WanDecoder3d`. cache: {"conv_in", "mid_block", "up_blocks", "conv_out"};
    a None cache is a clip's first chunk."""

    def __init__(self, config: WanVAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        c = config
        mult = c.dim_mult
        dims = [c.decoder_dim * u for u in (mult[-1], *mult[::-1])]
        upsample = c.temperal_downsample[::-1]
        self.conv_in = WanCausalConv3d(c.z_dim, dims[0], 3, padding=1, **kw)
        self.mid_block = WanMidBlock(dims[0], 1, **kw)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims, dims[1:])):
            up_flag = i != len(mult) - 1
            if c.is_residual:
                blocks.append(WanResidualUpBlock(
                    in_dim, out_dim, c.num_res_blocks,
                    temperal_upsample=upsample[i] if up_flag else False, up_flag=up_flag, **kw))
            else:
                # Wan2.1's resamples halve the channels, so each later level starts at half
                mode = None if not up_flag else "upsample3d" if upsample[i] else "upsample2d"
                blocks.append(WanUpBlock(in_dim // 2 if i else in_dim, out_dim,
                                         c.num_res_blocks, mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = WanRMSNorm(dims[-1], images=False, param_dtype=param_dtype)
        self.conv_out = WanCausalConv3d(dims[-1], c.out_channels, 3, padding=1, **kw)

    def __call__(self, x: jax.Array, cache):
        """x: [B, T, H, W, z_dim] -> ([B, T', H', W', out_channels], new cache)."""
        first = cache is None
        x, c_in = self.conv_in(x, _part(cache, "conv_in"))
        x, c_mid = self.mid_block(x, _part(cache, "mid_block"))
        c_up = []
        for i, block in enumerate(self.up_blocks):
            x, c = block(x, _part(_part(cache, "up_blocks"), i), first)
            c_up.append(c)
        x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), _part(cache, "conv_out"))
        return x, {"conv_in": c_in, "mid_block": c_mid, "up_blocks": c_up, "conv_out": c_out}


def patchify(x: jax.Array, p: int) -> jax.Array:
    """diffusers' Wan `patchify`, channels-last: [B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p],
    channels in (c, p_w, p_h) order."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """The inverse of `patchify`: [B, T, H, W, C*p*p] -> [B, T, H*p, W*p, C]."""
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


def walk_chunks(module: nnx.Module, x: jax.Array, chunk: int | None) -> jax.Array:
    """`module(x, cache) -> (y, cache)` over a clip x [B, T, ...] in diffusers' order: the
    first frame alone (cache None), then `chunk` frames at a time through one
    `jax.lax.scan` carrying the cache, a shorter last chunk after it. chunk=None: the whole
    clip in one call. Returns the ys concatenated on axis 1."""
    if chunk is None or x.shape[1] == 1:
        return module(x, None)[0]
    graphdef, state = nnx.split(module)

    def step(cache, x_chunk):
        y, cache = nnx.merge(graphdef, state)(x_chunk, cache)
        return cache, y

    cache, first = step(None, x[:, :1])
    rest = x[:, 1:]
    n, tail = divmod(rest.shape[1], chunk)
    ys = [first]
    if n:
        b = rest.shape[0]
        chunks = jnp.moveaxis(rest[:, :n * chunk].reshape(b, n, chunk, *rest.shape[2:]), 1, 0)
        cache, scanned = jax.lax.scan(step, cache, chunks)  # [n, B, T_chunk, ...]
        ys.append(jnp.moveaxis(scanned, 0, 1).reshape(b, -1, *scanned.shape[3:]))
    if tail:
        ys.append(step(cache, rest[:, n * chunk:])[1])
    return jnp.concatenate(ys, axis=1)


class AutoencoderKLWan(nnx.Module):
    """diffusers' `AutoencoderKLWan` (Wan2.1 and Wan2.2 configs).

    dtype: activation dtype; param_dtype: weights' (both float32 by default, as diffusers'
    pipelines run this VAE). Norms compute in float32.
    """

    def __init__(self, config: WanVAEConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = config, dtype
        z = config.z_dim
        self.encoder = WanEncoder3d(config, **kw)
        self.quant_conv = WanCausalConv3d(2 * z, 2 * z, 1, **kw)
        self.post_quant_conv = WanCausalConv3d(z, z, 1, **kw)
        self.decoder = WanDecoder3d(config, **kw)

    def encode(self, video: jax.Array, chunk_frames: int | None = 4) -> DiagonalGaussian:
        """video: [B, in_channels / patch**2, 1 + 4k, H, W] in [-1, 1] (H, W multiples of
        the spatial compression) -> the posterior over [B, z_dim, 1 + k, H/s, W/s].

        chunk_frames: frames per encoder step after the first frame (diffusers: 4; a
        multiple of the temporal compression), None for the whole clip in one step.
        """
        c, p = self.config, self.config.patch
        if chunk_frames is not None and (chunk_frames < 1 or chunk_frames % c.temporal_compression):
            raise ValueError(f"Wan VAE: encode chunk_frames={chunk_frames} must be a positive "
                             f"multiple of the temporal compression {c.temporal_compression}")
        check_video("Wan VAE", "video", video, c.in_channels // (p * p), c.spatial_compression,
                    c.temporal_compression)
        x = patchify(channels_last(video.astype(self.dtype)), p)
        moments = self.quant_conv(walk_chunks(self.encoder, x, chunk_frames))[0]
        return DiagonalGaussian.from_moments(channels_first(moments))

    def decode(self, z: jax.Array, chunk_frames: int | None = 1) -> jax.Array:
        """z: [B, z_dim, F, H, W] (un-normalised latents, `latents.denormalize`) ->
        video [B, out_channels / patch**2, 1 + 4(F - 1), H*s, W*s] clamped to [-1, 1].

        chunk_frames: latent frames per decoder step after the first (diffusers: 1), None
        for the whole clip in one step (the same result; memory grows with the clip).
        """
        c = self.config
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError(f"Wan VAE: decode chunk_frames={chunk_frames} must be >= 1 or None")
        check_video("Wan VAE", "latents", z, c.z_dim, 1, 1)
        x = self.post_quant_conv(channels_last(z.astype(self.dtype)))[0]
        out = unpatchify(walk_chunks(self.decoder, x, chunk_frames), c.patch)
        return channels_first(jnp.clip(out, -1.0, 1.0))


@functools.partial(nnx.jit, static_argnames="chunk_frames")
def wan_vae_encode(vae: AutoencoderKLWan, video: jax.Array, chunk_frames: int | None = 4
                   ) -> DiagonalGaussian:
    """`vae.encode`, compiled (once per input shape and chunk_frames)."""
    return vae.encode(video, chunk_frames)


@functools.partial(nnx.jit, static_argnames="chunk_frames")
def wan_vae_decode(vae: AutoencoderKLWan, z: jax.Array, chunk_frames: int | None = 1
                   ) -> jax.Array:
    """`vae.decode`, compiled (once per latent shape and chunk_frames)."""
    return vae.decode(z, chunk_frames)
