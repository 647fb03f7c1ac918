"""Fused k-means assignment step (Pallas on Triton): nearest centroid per token.

labels[n, s] = argmin_k ||c_k||^2 - 2 x_s . c_k   (||x_s||^2 is constant per row).

Each program owns `block_s` tokens of one problem and sweeps the problem's centroids
`block_k` at a time, keeping a running (min, argmin), so the [N, S, K] distance
matrix only ever exists as one [block_s, block_k] tile in registers.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_X_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
MAX_DIM = 256


def _is_pow2(v: int) -> bool:
    return isinstance(v, int) and v > 0 and (v & (v - 1)) == 0


@dataclasses.dataclass(frozen=True)
class AssignTuningConfig:
    """Tile sizes and launch parameters of `kmeans_assign` (tune per GPU and shape).

    block_s: tokens per program. block_k: centroids per inner-loop step. Both are
    powers of two >= 16 (Triton's dot needs tiles of at least 16); they are shrunk
    for problems smaller than one block.
    """

    block_s: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_s", "block_k"):
            v = getattr(self, name)
            if not _is_pow2(v) or v < 16:
                raise ValueError(f"AssignTuningConfig.{name} must be a power of two >= 16, got {v!r}")
        if not _is_pow2(self.num_warps):
            raise ValueError(f"AssignTuningConfig.num_warps must be a power of two, got {self.num_warps!r}")
        if not isinstance(self.num_stages, int) or self.num_stages < 1:
            raise ValueError(f"AssignTuningConfig.num_stages must be an int >= 1, got {self.num_stages!r}")


def _assign_kernel(x_ref, c_ref, cnorm_ref, labels_ref, *, seq_len: int, block_s: int,
                   block_k: int, num_k_blocks: int):
    # x_ref: [block_s, D] (rows past seq_len are out of bounds); c_ref: [Kpad, D];
    # cnorm_ref: [Kpad] float32, +inf on padding; labels_ref: [block_s].
    rows = pl.program_id(1) * block_s + jnp.arange(block_s, dtype=jnp.int32)
    valid = rows < seq_len
    # The last tile overhangs S: masking (rather than padding x in HBM) saves a
    # full copy of x per call.
    x = plgpu.load(x_ref, mask=valid[:, None], other=0.0)

    def body(j, carry):
        best_d, best_k = carry
        start = pl.multiple_of(j * block_k, block_k)
        c = c_ref[pl.ds(start, block_k), :]
        cnorm = cnorm_ref[pl.ds(start, block_k)]
        # HIGHEST keeps float32 inputs off TF32 (Triton's default); 16-bit inputs
        # are unaffected.
        dots = plgpu.dot(x, c, trans_b=True, precision=lax.Precision.HIGHEST)
        d = cnorm[None, :] - 2.0 * dots  # [block_s, block_k] float32
        tile_d = jnp.min(d, axis=1)
        tile_k = lax.argmin(d, 1, jnp.int32) + start  # first minimum within the tile
        # Strict '<': on a tie the earlier tile, i.e. the smaller index, wins.
        better = tile_d < best_d
        return jnp.where(better, tile_d, best_d), jnp.where(better, tile_k, best_k)

    init = (jnp.full((block_s,), jnp.inf, jnp.float32), jnp.zeros((block_s,), jnp.int32))
    _, best_k = lax.fori_loop(0, num_k_blocks, body, init)
    plgpu.store(labels_ref, best_k, mask=valid)


def _check_inputs(x, centroids):
    if x.ndim != 3 or centroids.ndim != 3:
        raise ValueError(f"kmeans_assign expects x [N, S, D] and centroids [N, K, D], got "
                         f"shapes {x.shape} and {centroids.shape}")
    if x.dtype not in _X_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if not jnp.issubdtype(centroids.dtype, jnp.floating):
        raise ValueError(f"centroids must be a float array, got {centroids.dtype}")
    (n, s, d), (nc, k, dc) = x.shape, centroids.shape
    if n != nc or d != dc:
        raise ValueError(f"x {x.shape} and centroids {centroids.shape} disagree on N or D")
    if s < 1 or k < 1 or n < 1:
        raise ValueError(f"need N >= 1, S >= 1 and K >= 1, got x {x.shape}, centroids "
                         f"{centroids.shape}")
    if d % 16 or d > MAX_DIM:
        raise ValueError(f"D must be a multiple of 16 and at most {MAX_DIM}, got D={d}")


def _launch(x, centroids, config, interpret):
    _check_inputs(x, centroids)
    config = config or AssignTuningConfig()
    n, s, d = x.shape
    k = centroids.shape[1]
    # Tiles never larger than the (power-of-two rounded) problem, never below 16.
    block_s = min(config.block_s, max(16, pl.next_power_of_2(s)))
    block_k = min(config.block_k, max(16, pl.next_power_of_2(k)))
    k_pad = pl.cdiv(k, block_k) * block_k
    d_pad = pl.next_power_of_2(d)  # Triton tensors are power-of-two shaped

    c32 = centroids.astype(jnp.float32)
    cnorm = jnp.sum(c32 * c32, axis=-1)
    # +inf norms make padded centroids lose to every real one.
    cnorm = jnp.pad(cnorm, ((0, 0), (0, k_pad - k)), constant_values=jnp.inf)
    # Zero columns leave dot products unchanged; centroids are small, so padding them is cheap.
    c = jnp.pad(centroids.astype(x.dtype), ((0, 0), (0, k_pad - k), (0, d_pad - d)))
    if d_pad != d:  # rare (D not a power of two): costs one copy of x
        x = jnp.pad(x, ((0, 0), (0, 0), (0, d_pad - d)))

    kernel = functools.partial(_assign_kernel, seq_len=s, block_s=block_s, block_k=block_k,
                               num_k_blocks=k_pad // block_k)
    in_specs = [
        pl.BlockSpec((None, block_s, d_pad), lambda b, i: (b, i, 0)),
        pl.BlockSpec((None, k_pad, d_pad), lambda b, i: (b, 0, 0)),
        pl.BlockSpec((None, k_pad), lambda b, i: (b, 0)),
    ]
    return pl.pallas_call(
        kernel,
        grid=(n, pl.cdiv(s, block_s)),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, block_s), lambda b, i: (b, i)),
        out_shape=jax.ShapeDtypeStruct((n, s), jnp.int32),
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                             num_stages=config.num_stages),
        interpret=interpret,
        name="kmeans_assign",
    )(x, c, cnorm)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def kmeans_assign(x: jax.Array, centroids: jax.Array, *, config: AssignTuningConfig | None = None,
                  interpret: bool = False) -> jax.Array:
    """Nearest centroid of every token, per problem.

    x: [N, S, D] float16/bfloat16/float32; centroids: [N, K, D] any float dtype
    -> labels [N, S] int32. ||c||^2 is taken in float32 from the given centroids; the
    dot runs on centroids cast to x.dtype with float32 accumulation. Ties go to the
    smallest k. D must be a multiple of 16, at most 256.
    """
    return _launch(x, centroids, config, interpret)


@jax.jit
def kmeans_assign_reference(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Pure-JAX `kmeans_assign`: x: [N, S, D], centroids: [N, K, D] -> labels [N, S] int32.

    Materialises the [N, S, K] distances; for testing and small problems.
    """
    c32 = centroids.astype(jnp.float32)
    cnorm = jnp.sum(c32 * c32, axis=-1)
    dots = jnp.einsum("nsd,nkd->nsk", x, centroids.astype(x.dtype),
                      preferred_element_type=jnp.float32, precision=lax.Precision.HIGHEST)
    return jnp.argmin(cnorm[:, None, :] - 2.0 * dots, axis=-1).astype(jnp.int32)
