"""Stacked blocks: every model's repeated blocks are built once with their parameters on a
leading layer axis (`stacked_blocks`) and run with one `jax.lax.scan` (`scan_blocks`), so
compile time does not grow with depth. The layer axis carries the logical partition name
`LAYERS` (`svg2_jax.sharding.rules`); under a sharded trace the scanned residual stream
stays sequence-parallel (`svg2_jax.sharding.activations`)."""

from __future__ import annotations

import jax
from flax import nnx

from svg2_jax.sharding.activations import constrain_tokens
from svg2_jax.sharding.rules import LAYERS


def stacked_blocks(num: int, make, rngs: nnx.Rngs):
    """`num` blocks built by `make(rngs)` with every parameter stacked on a leading layer
    axis (one `nnx.vmap`), so a scan over them compiles a single block."""

    @nnx.split_rngs(splits=num)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
    def build(rngs):
        return make(rngs)

    return build(rngs)


def scan_blocks(blocks, body, carry, xs):
    """`jax.lax.scan` over stacked blocks: body(block, carry, x) -> (carry, y), where x is
    this layer's slice of the pytree xs (leading layer axis). Returns (carry, stacked ys)."""
    graphdef, params = nnx.split(blocks)

    def step(carry, layer):
        block_params, x = layer
        carry, y = body(nnx.merge(graphdef, block_params), constrain_tokens(carry), x)
        return constrain_tokens(carry), y

    return jax.lax.scan(step, carry, (params, xs))
