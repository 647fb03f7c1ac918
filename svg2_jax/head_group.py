"""`HeadGroup`: which heads of a layer one attention call holds, when the heads are spread
over devices (head-parallel attention, `svg2_jax.sharding.ulysses`).

SVG2 runs one independent problem per (batch, head), except for two things that look at
all of a call's problems at once: the cold start draws every problem's random initial
rows from one key, and k-means stops early on the largest centroid shift over all
problems. A call that holds only some heads (in any order) gives each problem the same
random rows and the same stopping step as the call over all heads would, when it is
told the global index of each of its heads and the mesh axis that holds the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HeadGroup:
    """ids: [H_local] int32, each local head's index among the layer's `total` heads (an id
    >= total is a padding head, whose results are dropped); total: the layer's head count
    (static); axis: the mesh axis name(s) over which the other heads are spread, inside a
    `shard_map` (static; None when every head is here)."""

    ids: jax.Array
    total: int = dataclasses.field(metadata=dict(static=True))
    axis: Any = dataclasses.field(default=None, metadata=dict(static=True))

    def problem_rows(self, batch: int) -> jax.Array:
        """[batch * H_local] int32: each local (b, h) problem's row, b * total + id, among
        the batch * total problems of the whole call ((b h) order, as `rearrange(x,
        "b s h d -> (b h) s d")`); padding heads take the last head's row."""
        ids = jnp.minimum(self.ids.astype(jnp.int32), self.total - 1)
        return (jnp.arange(batch, dtype=jnp.int32)[:, None] * self.total + ids[None]).reshape(-1)

    def global_max(self, x: jax.Array) -> jax.Array:
        """x's maximum over every device of `axis` (x itself when axis is None)."""
        return x if self.axis is None else jax.lax.pmax(x, self.axis)
