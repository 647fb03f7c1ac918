"""Small building blocks shared by the Wan and HunyuanVideo modules (diffusers' names,
NNX modules).

Precision follows diffusers: norms compute in float32 (diffusers' `FP32LayerNorm`; the
q/k `RMSNorm`s are kept in float32 too, as the official Wan `WanRMSNorm` does); matmuls run
in the module's `dtype` with `param_dtype` weights.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.sharding.rules import EMBED, MLP


def linear(in_features: int, out_features: int, *, dtype, param_dtype, rngs: nnx.Rngs,
           names: tuple[str | None, str | None] | None = None):
    """A torch-style `nn.Linear` (with bias). kernel: [in, out] (torch's weight transposed).
    names: the logical partition names of (in, out) (`svg2_jax.sharding.rules`; the bias
    takes the out name), metadata only: nothing is placed until a mesh and rules say so.
    None: replicated."""
    if names is None:
        return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs)
    named = functools.partial(nnx.with_partitioning, eager_sharding=False)
    return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=named(nnx.nn.linear.default_kernel_init, tuple(names)),
                      bias_init=named(nnx.nn.linear.default_bias_init, (names[1],)),
                      rngs=rngs)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B, S, H*D] -> [B, S, H, D] (head-major, as diffusers' unflatten)."""
    return x.reshape(*x.shape[:2], heads, -1)


def merge_heads(x: jax.Array) -> jax.Array:
    """[B, S, H, D] -> [B, S, H*D]."""
    return x.reshape(*x.shape[:2], -1)


class FP32LayerNorm(nnx.Module):
    """LayerNorm over the last axis computed in float32 (diffusers' `FP32LayerNorm`).

    Returns float32: every caller in Wan modulates or casts the result itself. Two-pass
    variance (like torch), not E[x^2] - E[x]^2, so large activations do not cancel.
    """

    def __init__(self, dim: int, eps: float, elementwise_affine: bool):
        self.eps = eps
        if elementwise_affine:
            self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
            self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        else:
            self.scale = self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] any float dtype -> [..., D] float32."""
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale[...] + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale over the last axis, computed in float32.

    Wan normalises q and k over all heads at once (`qk_norm="rms_norm_across_heads"`),
    so D here is heads * head_dim.
    """

    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., D] -> [..., D] in x.dtype."""
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...]).astype(x.dtype)


class FeedForward(nnx.Module):
    """Linear -> GELU -> Linear (diffusers' `FeedForward`: `net.0.proj` is `proj_in`,
    `net.2` is `proj_out`; the dropouts of `net.1` are inference no-ops).

    approximate: True for GELU-tanh ("gelu-approximate", the block FFN), False for the
    exact erf GELU ("gelu", the I2V image projection).
    """

    def __init__(self, dim: int, inner_dim: int, dim_out: int, *, approximate: bool, dtype,
                 param_dtype, rngs: nnx.Rngs):
        self.approximate = approximate
        self.proj_in = linear(dim, inner_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                              names=(EMBED, MLP))
        self.proj_out = linear(inner_dim, dim_out, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs, names=(MLP, EMBED))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., dim] -> [..., dim_out]."""
        return self.proj_out(jax.nn.gelu(self.proj_in(x), approximate=self.approximate))
