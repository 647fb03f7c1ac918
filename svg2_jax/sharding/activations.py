"""Sequence-parallel activations: while a sharded forward is traced, the residual stream
[B, S, D] of every scanned block is pinned to batch over the CFG axis and tokens over the
sequence axis (`constrain_tokens`, called by `svg2_jax.models.common.stack.scan_blocks`),
so norms, projections and feed-forwards run on each device's slice of the tokens and
only attention exchanges data (`svg2_jax.sharding.ulysses`).

The rule is set for the duration of a trace with `token_sharding(...)` (the sharded
sampler's model function does it); outside it `constrain_tokens` is the identity.
Constraints never change values, only where they live.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class TokenSharding:
    """mesh; batch_axis: the mesh axis the batch is split over (None: not split);
    seq_axis: the mesh axis the tokens are split over."""

    mesh: Mesh
    batch_axis: str | None
    seq_axis: str

    def axis_if_divides(self, axis: str | None, size: int) -> str | None:
        """`axis` when the array axis of `size` splits evenly over it, else None."""
        return axis if axis is not None and size % self.mesh.shape[axis] == 0 else None

    def spec(self, shape: tuple[int, ...]) -> PartitionSpec:
        """[B, S, ...]: batch and tokens split where they divide evenly."""
        return PartitionSpec(self.axis_if_divides(self.batch_axis, shape[0]),
                             self.axis_if_divides(self.seq_axis, shape[1]))

    def constrain(self, x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, self.spec(x.shape)))


_ACTIVE: contextvars.ContextVar[TokenSharding | None] = contextvars.ContextVar(
    "svg2_token_sharding", default=None)


@contextlib.contextmanager
def token_sharding(rule: TokenSharding | None):
    """While active (during a trace), `constrain_tokens` pins [B, S, D] activations."""
    token = _ACTIVE.set(rule)
    try:
        yield rule
    finally:
        _ACTIVE.reset(token)


def constrain_tokens(tree):
    """Every [B, S, D] leaf of `tree` pinned by the active `token_sharding` rule (other
    leaves, and everything when no rule is active, unchanged)."""
    rule = _ACTIVE.get()
    if rule is None:
        return tree
    return jax.tree.map(lambda x: rule.constrain(x) if getattr(x, "ndim", 0) == 3 else x, tree)
