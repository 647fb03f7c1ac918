"""Small HunyuanVideo building blocks: the AdaLN variants, the SiLU MLP, modulation.

Shared with Wan (`svg2_jax.models.common`): `linear`, `FP32LayerNorm`, `RMSNorm`,
`FeedForward` (GELU-tanh), the stacked blocks and their scan. Precision as in the Wan
model: norms compute in float32, the AdaLN shift/scale/gate are applied in float32 and the
gated residual sums happen in float32 before casting back to the activation dtype; matmuls
run in `dtype`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.models.common.layers import FP32LayerNorm, linear
from svg2_jax.sharding.rules import EMBED, MLP

# diffusers builds every HunyuanVideo LayerNorm and RMSNorm with eps 1e-6
EPS = 1e-6


def modulate(normed: jax.Array, shift: jax.Array, scale: jax.Array, dtype) -> jax.Array:
    """normed * (1 + scale) + shift in float32, cast to dtype.
    normed: [B, S, D] float32; shift, scale: [B, 1, D] float32."""
    return (normed * (1 + scale) + shift).astype(dtype)


def gated_residual(x: jax.Array, y: jax.Array, gate: jax.Array) -> jax.Array:
    """x + gate * y summed in float32, returned in x.dtype. x, y: [B, S, D]; gate: [B, 1, D]."""
    return (x.astype(jnp.float32) + gate * y.astype(jnp.float32)).astype(x.dtype)


class AdaLayerNormZero(nnx.Module):
    """diffusers' AdaLayerNormZero(norm_type="layer_norm"): modulated LayerNorm for the
    attention input, plus gate_msa and the MLP's shift / scale / gate."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.linear = linear(dim, 6 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             names=(EMBED, MLP))
        self.norm = FP32LayerNorm(dim, EPS, elementwise_affine=False)

    def __call__(self, x: jax.Array, temb: jax.Array):
        """x: [B, S, D]; temb: [B, D] -> (x_mod [B, S, D] in dtype, gate_msa, shift_mlp,
        scale_mlp, gate_mlp each [B, 1, D] float32)."""
        emb = self.linear(jax.nn.silu(temb)).astype(jnp.float32)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            c[:, None, :] for c in jnp.split(emb, 6, axis=-1))
        return (modulate(self.norm(x), shift_msa, scale_msa, self.dtype), gate_msa, shift_mlp,
                scale_mlp, gate_mlp)


class AdaLayerNormZeroSingle(nnx.Module):
    """diffusers' AdaLayerNormZeroSingle(norm_type="layer_norm"): modulated LayerNorm + gate."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.linear = linear(dim, 3 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             names=(EMBED, MLP))
        self.norm = FP32LayerNorm(dim, EPS, elementwise_affine=False)

    def __call__(self, x: jax.Array, temb: jax.Array):
        """x: [B, S, D]; temb: [B, D] -> (x_mod [B, S, D] in dtype, gate [B, 1, D] float32)."""
        emb = self.linear(jax.nn.silu(temb)).astype(jnp.float32)
        shift, scale, gate = (c[:, None, :] for c in jnp.split(emb, 3, axis=-1))
        return modulate(self.norm(x), shift, scale, self.dtype), gate


class AdaLayerNormContinuous(nnx.Module):
    """diffusers' AdaLayerNormContinuous(elementwise_affine=False, eps=1e-6), the output
    norm. Note the chunk order (scale, shift): the official checkpoint stores (shift, scale)
    and the converters swap the halves."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.linear = linear(dim, 2 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             names=(EMBED, MLP))
        self.norm = FP32LayerNorm(dim, EPS, elementwise_affine=False)

    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
        """x: [B, S, D]; temb: [B, D] -> [B, S, D] in dtype."""
        emb = self.linear(jax.nn.silu(temb)).astype(jnp.float32)
        scale, shift = (c[:, None, :] for c in jnp.split(emb, 2, axis=-1))
        return modulate(self.norm(x), shift, scale, self.dtype)


class HunyuanVideoAdaNorm(nnx.Module):
    """The token refiner blocks' `norm_out`: linear(silu(temb)) -> (gate_msa, gate_mlp)."""

    def __init__(self, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.linear = linear(dim, 2 * dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                             names=(EMBED, MLP))

    def __call__(self, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        """temb: [B, D] -> (gate_msa, gate_mlp) each [B, 1, D] float32."""
        emb = self.linear(jax.nn.silu(temb)).astype(jnp.float32)
        gate_msa, gate_mlp = jnp.split(emb, 2, axis=-1)
        return gate_msa[:, None, :], gate_mlp[:, None, :]


class SiLUFeedForward(nnx.Module):
    """diffusers' FeedForward(activation_fn="linear-silu"): Linear -> SiLU -> Linear
    (`net.0.proj` is `proj_in`, `net.2` is `proj_out`, as in Wan's FeedForward)."""

    def __init__(self, dim: int, inner_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj_in = linear(dim, inner_dim, names=(EMBED, MLP), **kw)
        self.proj_out = linear(inner_dim, dim, names=(MLP, EMBED), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., dim] -> [..., dim]."""
        return self.proj_out(jax.nn.silu(self.proj_in(x)))
