"""diffusers' tiled encode / decode of `AutoencoderKLHunyuanVideo`, over compiled tiles.

A clip longer than a temporal tile goes through overlapping temporal tiles (on by default
in diffusers: `use_framewise_encoding` / `use_framewise_decoding`); with `use_tiling`
(diffusers' `enable_tiling()`), a frame larger than a spatial tile goes through
overlapping spatial tiles. Each tile's output fades linearly into its neighbour over the
overlap (diffusers' `blend_v` / `blend_h` / `blend_t`, applied in raster order to the
already blended neighbours, as diffusers' in-place updates do) and is cropped to the
stride. The tile sizes and strides are in sample pixels and frames; latent ones are those
divided by the configured compression ratios, as diffusers computes them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from svg2_jax.models.common.config import pos_int

_H, _W, _T = 3, 4, 2  # axes of [B, C, T, H, W]


@dataclasses.dataclass(frozen=True)
class HunyuanVAETiling:
    """diffusers' tiling attributes of `AutoencoderKLHunyuanVideo`, its defaults (0.42.1).

    use_tiling: spatial tiles (diffusers' `enable_tiling()`; off by default, and the
      HunyuanVideo pipeline does not turn it on).
    use_framewise_encoding, use_framewise_decoding: temporal tiles (on by default).
    tile_sample_min_*: tile size; tile_sample_stride_*: distance between tile starts (the
      overlap, min - stride, is blended).
    """

    use_tiling: bool = False
    use_framewise_encoding: bool = True
    use_framewise_decoding: bool = True
    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_sample_min_num_frames: int = 16
    tile_sample_stride_height: int = 192
    tile_sample_stride_width: int = 192
    tile_sample_stride_num_frames: int = 12

    def __post_init__(self):
        problems = [f"{f.name} must be a positive int, got {getattr(self, f.name)!r}"
                    for f in dataclasses.fields(self)
                    if f.name.startswith("tile_") and not pos_int(getattr(self, f.name))]
        problems += [f"tile_sample_stride_{a} ({getattr(self, 'tile_sample_stride_' + a)}) must "
                     f"not exceed tile_sample_min_{a} ({getattr(self, 'tile_sample_min_' + a)})"
                     for a in ("height", "width", "num_frames")
                     if not problems and getattr(self, "tile_sample_stride_" + a)
                     > getattr(self, "tile_sample_min_" + a)]
        if problems:
            raise ValueError("HunyuanVAETiling: " + "; ".join(problems))

    def check_ratios(self, spatial: int, temporal: int):
        """Every tile size and stride must leave at least one latent pixel / frame."""
        small = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name.startswith("tile_") and getattr(self, f.name)
                 < (temporal if f.name.endswith("num_frames") else spatial)]
        if small:
            raise ValueError(f"HunyuanVAETiling: {', '.join(small)} are below the compression "
                             f"({spatial}x spatial, {temporal}x temporal)")


def blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """b with its first `extent` entries along `axis` faded in from a's last ones: entry y
    becomes a[-extent + y] * (1 - y / extent) + b[y] * (y / extent) (diffusers' blend_v,
    blend_h, blend_t; the weights are float64 ratios rounded to b's dtype, as torch's
    python-float scalars)."""
    extent = min(a.shape[axis], b.shape[axis], extent)
    if extent <= 0:
        return b
    shape = [1] * b.ndim
    shape[axis] = extent
    w = np.arange(extent, dtype=np.float64) / extent
    up = jnp.asarray(w.reshape(shape), b.dtype)
    down = jnp.asarray((1 - w).reshape(shape), b.dtype)
    n = a.shape[axis]
    head = (jax.lax.slice_in_dim(a, n - extent, n, axis=axis) * down
            + jax.lax.slice_in_dim(b, 0, extent, axis=axis) * up)
    return jnp.concatenate([head, jax.lax.slice_in_dim(b, extent, b.shape[axis], axis=axis)],
                           axis=axis)


def tiled_spatial(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: tuple[int, int],
                  stride: tuple[int, int], out_stride: tuple[int, int],
                  out_blend: tuple[int, int], out_size: tuple[int, int]) -> jax.Array:
    """diffusers' tiled_encode / tiled_decode: `fn` over the tiles of x [B, C, T, H, W]
    starting every `stride` (H, W) pixels, `tile` large (smaller at the far edges), then
    `stitch_spatial`."""
    (th, tw), (sh, sw) = tile, stride
    rows = [[fn(x[:, :, :, i:i + th, j:j + tw]) for j in range(0, x.shape[_W], sw)]
            for i in range(0, x.shape[_H], sh)]
    return stitch_spatial(rows, out_blend, out_stride, out_size)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def stitch_spatial(rows: list[list[jax.Array]], out_blend: tuple[int, int],
                   out_stride: tuple[int, int], out_size: tuple[int, int]) -> jax.Array:
    """Each output tile (in raster order) blended with its already blended upper then left
    neighbour over `out_blend` (H, W), cropped to `out_stride`, stitched, and cropped to
    `out_size`. One compiled program per tile layout."""
    done: list[list[jax.Array]] = []
    for row in rows:
        out_row = []
        for j, tile in enumerate(row):
            if done:
                tile = blend(done[-1][j], tile, out_blend[0], _H)
            if out_row:
                tile = blend(out_row[-1], tile, out_blend[1], _W)
            out_row.append(tile)
        done.append(out_row)
    oh, ow = out_stride
    stitched = jnp.concatenate([jnp.concatenate([t[:, :, :, :oh, :ow] for t in row], axis=_W)
                                for row in done], axis=_H)
    return stitched[:, :, :, :out_size[0], :out_size[1]]


def tiled_temporal(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: int, stride: int,
                   out_stride: int, out_blend: int, out_frames: int) -> jax.Array:
    """diffusers' _temporal_tiled_encode / _temporal_tiled_decode: `fn` over frames
    [i, i + tile + 1) of x [B, C, T, H, W] for i every `stride`, then `stitch_temporal`."""
    tiles = [fn(x[:, :, i:i + tile + 1]) for i in range(0, x.shape[_T], stride)]
    return stitch_temporal(tiles, out_blend, out_stride, out_frames)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def stitch_temporal(tiles: list[jax.Array], out_blend: int, out_stride: int,
                    out_frames: int) -> jax.Array:
    """After the first tile, each tile's first frame (the causal repeat of the previous
    tile's last) dropped; each blended with the (blended) previous over `out_blend` frames,
    cropped to `out_stride` (+ 1 for the first), stitched, and cropped to `out_frames`."""
    kept, previous = [], None
    for i, out in enumerate(tiles):
        if i:
            out = blend(previous, out[:, :, 1:], out_blend, _T)
        previous = out
        kept.append(out[:, :, :out_stride + (0 if i else 1)])
    return jnp.concatenate(kept, axis=_T)[:, :, :out_frames]


def encode_tiled(encode_tile: Callable[[jax.Array], jax.Array], x: jax.Array,
                 tiling: HunyuanVAETiling, s: int, r: int) -> jax.Array:
    """diffusers' `AutoencoderKLHunyuanVideo._encode` with these settings:
    encode_tile(video [B, C, T, h, w]) -> moments [B, 2z, (T - 1) // r + 1, h / s, w / s]
    (one encoder pass) over x [B, C, T, H, W] -> moments of the clip; s, r: the configured
    spatial and temporal compression ratios."""
    t = tiling
    t.check_ratios(s, r)
    frames = x.shape[_T]

    def spatial(x):
        if t.use_tiling and (x.shape[_W] > t.tile_sample_min_width
                             or x.shape[_H] > t.tile_sample_min_height):
            return tiled_spatial(
                encode_tile, x, (t.tile_sample_min_height, t.tile_sample_min_width),
                (t.tile_sample_stride_height, t.tile_sample_stride_width),
                (t.tile_sample_stride_height // s, t.tile_sample_stride_width // s),
                (t.tile_sample_min_height // s - t.tile_sample_stride_height // s,
                 t.tile_sample_min_width // s - t.tile_sample_stride_width // s),
                (x.shape[_H] // s, x.shape[_W] // s))
        return encode_tile(x)

    if t.use_framewise_encoding and frames > t.tile_sample_min_num_frames:
        return tiled_temporal(
            spatial, x, t.tile_sample_min_num_frames, t.tile_sample_stride_num_frames,
            t.tile_sample_stride_num_frames // r,
            t.tile_sample_min_num_frames // r - t.tile_sample_stride_num_frames // r,
            (frames - 1) // r + 1)
    return spatial(x)


def decode_tiled(decode_tile: Callable[[jax.Array], jax.Array], z: jax.Array,
                 tiling: HunyuanVAETiling, s: int, r: int) -> jax.Array:
    """diffusers' `AutoencoderKLHunyuanVideo._decode` with these settings:
    decode_tile(latents [B, z, F, h, w]) -> video [B, C, (F - 1) r + 1, h s, w s] (one
    decoder pass) over z [B, z, F, H, W] -> the clip's video; s, r: the configured spatial
    and temporal compression ratios."""
    t = tiling
    t.check_ratios(s, r)
    frames = z.shape[_T]
    min_h, min_w = t.tile_sample_min_height // s, t.tile_sample_min_width // s

    def spatial(z):
        if t.use_tiling and (z.shape[_W] > min_w or z.shape[_H] > min_h):
            return tiled_spatial(
                decode_tile, z, (min_h, min_w),
                (t.tile_sample_stride_height // s, t.tile_sample_stride_width // s),
                (t.tile_sample_stride_height, t.tile_sample_stride_width),
                (t.tile_sample_min_height - t.tile_sample_stride_height,
                 t.tile_sample_min_width - t.tile_sample_stride_width),
                (z.shape[_H] * s, z.shape[_W] * s))
        return decode_tile(z)

    if t.use_framewise_decoding and frames > t.tile_sample_min_num_frames // r:
        return tiled_temporal(
            spatial, z, t.tile_sample_min_num_frames // r, t.tile_sample_stride_num_frames // r,
            t.tile_sample_stride_num_frames,
            t.tile_sample_min_num_frames - t.tile_sample_stride_num_frames,
            (frames - 1) * r + 1)
    return spatial(z)
