"""Logical partition names on the parameters and the rules that map them onto a mesh.

Every model weight carries the logical names of its axes as flax metadata
(`out_sharding`, set by `svg2_jax.models.common.layers.linear(..., names=)`; the stacked
blocks add `LAYERS` in front, `svg2_jax.models.common.stack.stacked_blocks`). A rule table
maps a logical name to mesh axes; a parameter's mesh `PartitionSpec` follows from its
names, its shape and the mesh (`partition_spec`): an axis is split only where it divides
evenly, and one mesh axis splits at most one array axis. Parameters without names are
replicated.

The default rules (`default_rules`) split the model width (`EMBED`) over every device of
the mesh: fully sharded weights (FSDP), gathered one layer at a time inside the scan, the
rest of the computation sequence and head parallel (`svg2_jax.sharding.ulysses`).
"""

from __future__ import annotations

import math
from typing import Iterable

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis names of the parameters.
LAYERS = "layers"   # the stacked blocks' leading axis
EMBED = "embed"     # the model width (heads x head_dim of the residual stream)
HEADS = "heads"     # an attention projection's heads x head_dim side
MLP = "mlp"         # a feed-forward's hidden side, or the AdaLN modulation outputs

Rules = tuple[tuple[str, tuple[str, ...]], ...]


def default_rules(mesh: Mesh) -> Rules:
    """EMBED over every axis of the mesh (fully sharded weights); the rest replicated."""
    return ((EMBED, tuple(mesh.axis_names)),)


def logical_names(variable) -> tuple | None:
    """The logical axis names a parameter (an `nnx.Variable`) carries, or None."""
    names = variable.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def partition_spec(names: Iterable | None, shape: tuple[int, ...], mesh: Mesh,
                   rules: Rules) -> PartitionSpec:
    """The mesh PartitionSpec of an array of `shape` whose axes have logical `names`
    (None: replicated). Each axis takes the mesh axes its name maps to, dropping the
    outer ones until their device count divides it, and never a mesh axis an earlier
    array axis took."""
    if names is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if a in mesh.shape and a not in used
                     and mesh.shape[a] > 1)
        while axes and size % math.prod(mesh.shape[a] for a in axes):
            axes = axes[1:]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules | None = None
                    ) -> dict[tuple[str, ...], NamedSharding]:
    """{flat parameter path (str parts): NamedSharding} of every leaf of an nnx state
    (abstract or concrete), from its logical names, shape and the rules (default:
    `default_rules(mesh)`)."""
    rules = default_rules(mesh) if rules is None else rules
    return {tuple(str(p) for p in path): NamedSharding(
                mesh, partition_spec(logical_names(v), v.shape, mesh, rules))
            for path, v in nnx.to_flat_state(state)}


def bytes_per_device(tree) -> dict:
    """{device: bytes} that the arrays of `tree` occupy on each device: the addressable
    shards of real arrays, or, for `jax.ShapeDtypeStruct`s with a sharding, the shard
    shapes they would have."""
    out: dict = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for shard in x.addressable_shards:
                out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
        else:
            per = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
            for device in x.sharding.device_set:
                out[device] = out.get(device, 0) + per
    return out
