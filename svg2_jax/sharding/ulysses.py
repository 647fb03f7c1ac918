"""Head-parallel self-attention (DeepSpeed Ulysses) around any `LayerAttention`.

Outside attention the tokens are split over the mesh's sequence axis
(`svg2_jax.sharding.activations`). `UlyssesAttention` takes q, k, v [B, S, H, D] split
that way, and inside one `shard_map`:
  1. orders the heads into slots (this layer's `order`, `svg2_jax.sharding.balance`),
     padding heads (zeros) filling the count up to a multiple of the P devices;
  2. all-to-all: [B, S/P, Hp, D] -> [B, S, Hp/P, D], every device now holding whole
     sequences of its Hp/P head slots;
  3. runs the wrapped attention (dense or SVG2) on them, with a `HeadGroup` naming the
     global heads, so SVG2's k-means starts and stops exactly as in the unsharded call;
  4. all-to-all back, slots back to head order, padding heads dropped.
Joint video + text attention (HunyuanVideo) sends only the video tokens through the
all-to-all; the text tokens (a few hundred) are kept whole on every device, each
device attends with its heads' slice of them, and the text outputs are gathered again,
so the text is exact. A video length that does not divide by P is padded for the
exchange and cut back before attention.

SVG2's per-layer state lives on the devices of its heads: the wrapped attention's state
is stacked over the padded heads in slot order, its head axis split over the sequence
axis (and its batch axis over the CFG axis), with `order` [L, Hp] saying which head each
slot holds. `rebalance` moves heads (and their centroids) between devices from measured
work; results do not change, only placement.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from svg2_jax.head_group import HeadGroup
from svg2_jax.sharding.balance import balanced_order, head_work, identity_order, padded_heads


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UlyssesState:
    """inner: the wrapped attention's stacked state over the padded heads, in slot order
    (None for dense attention); order: [L, Hp] int32, the virtual head each slot holds
    (`svg2_jax.sharding.balance`)."""

    inner: Any
    order: jax.Array


@dataclasses.dataclass(frozen=True)
class StateAxes:
    """Where the batch and head axes are in each leaf of an attention's stacked state
    (None: the leaf has no such axis); two pytrees shaped like the state."""

    batch: Any
    head: Any


@functools.lru_cache(maxsize=None)
def state_axes(attention) -> StateAxes:
    """The batch and head axes of every leaf of `attention.init_state(L, B, H, D)`, found
    from the shapes (no allocation) of states of different batch and head counts."""
    def shapes(batch, heads):
        return jax.tree.map(lambda x: x.shape,
                            jax.eval_shape(lambda: attention.init_state(2, batch, heads, 8)))

    def differing(a, b):
        axes = [i for i, (m, n) in enumerate(zip(a, b)) if m != n]
        return axes[0] if axes else None

    base, batch, heads = shapes(2, 3), shapes(5, 3), shapes(2, 7)
    is_shape = lambda x: isinstance(x, tuple)
    return StateAxes(jax.tree.map(differing, base, batch, is_leaf=is_shape),
                     jax.tree.map(differing, base, heads, is_leaf=is_shape))


def _leaf_spec(ndim, batch_axis, head_axis, batch_mesh, seq_mesh, offset=0):
    spec = [None] * (ndim - offset)
    if batch_axis is not None and batch_mesh is not None:
        spec[batch_axis - offset] = batch_mesh
    if head_axis is not None:
        spec[head_axis - offset] = seq_mesh
    return PartitionSpec(*spec)


def concat_batch(attention, a, b):
    """Two stacked states of `attention` joined along their batch axes (leaves without one
    are taken from `a`)."""
    axes = state_axes(attention).batch
    return jax.tree.map(lambda x, y, ax: x if ax is None else jnp.concatenate([x, y], ax),
                        a, b, axes)


def split_batch(attention, state):
    """The inverse of `concat_batch` for two equal halves."""
    axes = state_axes(attention).batch
    halves = jax.tree.map(lambda x, ax: (x, x) if ax is None else tuple(jnp.split(x, 2, ax)),
                          state, axes)
    first = jax.tree.map(lambda _, h: h[0], state, halves)
    second = jax.tree.map(lambda _, h: h[1], state, halves)
    return first, second


def _pad_axis(x, axis, size):
    """x padded with zeros along `axis` up to `size`."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


@dataclasses.dataclass(frozen=True)
class UlyssesAttention:
    """Head-parallel wrapper of a `LayerAttention` (see the module docstring).

    inner: the attention each device runs on its heads (`DenseAttention`, `SVG2Attention`).
    mesh: the device mesh; seq_axis: its axis the tokens (outside attention) and the heads
    (inside) are split over; batch_axis: its axis the batch is split over (CFG parallel:
    conditional and unconditional passes as one batch), None or absent from the mesh: not
    split. balance: `rebalance` reassigns heads by measured work (False: contiguous split).
    """

    inner: Any
    mesh: Mesh
    seq_axis: str = "sp"
    batch_axis: str | None = "cfg"
    balance: bool = True

    def __post_init__(self):
        if self.seq_axis not in self.mesh.shape:
            raise ValueError(f"UlyssesAttention: the mesh {dict(self.mesh.shape)} has no "
                             f"sequence axis {self.seq_axis!r}")
        if isinstance(self.inner, UlyssesAttention):
            raise ValueError("UlyssesAttention: the wrapped attention is already head parallel")

    @property
    def devices(self) -> int:
        return self.mesh.shape[self.seq_axis]

    def _batch_mesh_axis(self, batch: int) -> str | None:
        ax = self.batch_axis
        if ax is None or ax not in self.mesh.shape or batch % self.mesh.shape[ax]:
            return None
        return ax

    def init_state(self, num_layers, batch, heads, head_dim) -> UlyssesState:
        hp = padded_heads(heads, self.devices)
        return UlyssesState(self.inner.init_state(num_layers, batch, hp, head_dim),
                            identity_order(num_layers, heads, self.devices))

    def set_mode(self, state: UlyssesState, sparse, cluster=False) -> UlyssesState:
        if state.inner is None:
            return state
        return dataclasses.replace(state, inner=self.inner.set_mode(state.inner, sparse,
                                                                    cluster))

    def state_axes(self) -> StateAxes:
        inner = state_axes(self.inner)
        return StateAxes(UlyssesState(inner.batch, None), UlyssesState(inner.head, 1))

    def state_shardings(self, state: UlyssesState):
        """NamedShardings of a stacked state: head axes over the sequence axis, batch axes
        over the batch axis (where they divide evenly), the rest replicated."""
        axes = self.state_axes()

        def spec(x, b, h):
            bm = None if b is None else self._batch_mesh_axis(x.shape[b])
            return NamedSharding(self.mesh, _leaf_spec(x.ndim, b, h, bm, self.seq_axis))
        return jax.tree.map(spec, state, axes.batch, axes.head)

    def rebalance(self, state: UlyssesState, density: jax.Array) -> UlyssesState:
        """The state with heads reassigned by this step's density ([L, B, H] or
        [passes, L, B, H]): each layer's `balanced_order`, the wrapped state's head axes
        gathered to follow. Unchanged with balance=False."""
        if not self.balance:
            return state
        hp = state.order.shape[-1]
        new = jax.vmap(lambda w: balanced_order(w, self.devices))(head_work(density, hp))
        if state.inner is None:
            return UlyssesState(None, new)
        # new slot s holds virtual head new[s], which sits in old slot inverse_old[new[s]]
        inverse_old = jnp.argsort(state.order, axis=-1)
        source = jnp.take_along_axis(inverse_old, new, axis=-1)  # [L, Hp]

        def move(x, ax):
            if ax is None:
                return x
            return jax.vmap(lambda leaf, idx: jnp.take(leaf, idx, axis=ax - 1))(x, source)
        inner = jax.tree.map(move, state.inner, state_axes(self.inner).head)
        return UlyssesState(inner, new)

    def __call__(self, q, k, v, state: UlyssesState, layer_index, *, num_text=0,
                 text_lengths=None, head_group=None):
        if head_group is not None:
            raise ValueError("UlyssesAttention: called with a head_group (nested head "
                             "parallelism is not supported)")
        b, s, h, d = q.shape
        p, sp = self.devices, self.seq_axis
        order = state.order
        hp = order.shape[-1]
        if hp != padded_heads(h, p):
            raise ValueError(f"UlyssesAttention: state made for {hp} head slots, q has {h} "
                             f"heads on {p} devices")
        joint = text_lengths is not None
        sv = s - num_text if joint else s
        sv_pad = padded_heads(sv, p)  # the video tokens rounded up to a multiple of P
        bm = self._batch_mesh_axis(b)
        seq_spec, whole_spec = PartitionSpec(bm, sp), PartitionSpec(bm)
        inner_axes = state_axes(self.inner)
        inner_specs = jax.tree.map(
            lambda x, ba, ha: _leaf_spec(x.ndim + 1, ba, ha, bm, sp, offset=1),
            state.inner, inner_axes.batch, inner_axes.head)
        inner, per = self.inner, hp // p

        def body(video, text, inner_state, order, layer_index, text_lengths):
            me = jax.lax.axis_index(sp)
            slots = lambda x: jnp.take(_pad_axis(x, 2, hp), order, axis=2)
            mine = lambda x: jax.lax.dynamic_slice_in_dim(x, me * per, per, axis=2)
            # [Bl, Sv_pad/P, Hp, D] -> [Bl, Sv, Hp/P, D]: whole sequences of my slots
            parts = [jax.lax.all_to_all(slots(x), sp, 2, 1, tiled=True)[:, :sv]
                     for x in video]
            kw = {}
            if joint:
                parts = [jnp.concatenate([x, mine(slots(t))], axis=1)
                         for x, t in zip(parts, text)]
                kw = dict(num_text=num_text, text_lengths=text_lengths)
            group = HeadGroup(jax.lax.dynamic_slice_in_dim(order, me * per, per), total=h,
                              axis=sp)
            out, inner_state, density = inner(*parts, inner_state, layer_index,
                                              head_group=group, **kw)
            heads = jnp.argsort(order)[:h]  # the slot of each head
            out_video = jax.lax.all_to_all(_pad_axis(out[:, :sv], 1, sv_pad), sp, 1, 2,
                                           tiled=True)
            out_text = None
            if joint:
                out_text = jnp.take(jax.lax.all_gather(out[:, sv:], sp, axis=2, tiled=True),
                                    heads, axis=2)
            return jnp.take(out_video, heads, axis=2), out_text, inner_state, density

        video = tuple(_pad_axis(x[:, :sv], 1, sv_pad) for x in (q, k, v))
        text = tuple(x[:, sv:] for x in (q, k, v)) if joint else None
        run = jax.shard_map(
            body, mesh=self.mesh,
            in_specs=((seq_spec,) * 3, None if text is None else (whole_spec,) * 3,
                      inner_specs, PartitionSpec(), PartitionSpec(),
                      None if text_lengths is None else whole_spec),
            out_specs=(seq_spec, None if text is None else whole_spec, inner_specs,
                       PartitionSpec(bm, sp)),
            check_vma=False)
        out_video, out_text, inner_state, density = run(video, text, state.inner, order,
                                                        layer_index, text_lengths)
        out = out_video[:, :sv]
        if joint:
            out = jnp.concatenate([out, out_text], axis=1)
        density = jnp.take(density, jnp.argsort(order)[:h], axis=1)  # slots -> heads
        return out, UlyssesState(inner_state, order), density
