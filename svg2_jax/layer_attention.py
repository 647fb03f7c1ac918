"""Pluggable self-attention for the DiT models: dense, or SVG2 with per-layer state.

A model's self-attention calls `attention(q, k, v, state, layer_index)` with q, k, v
`[B, S, H, D]` (after q/k norm and rotary embedding) and gets back
`(out [B, S, H, D], new_state, density [B, H])`, density NaN for a head whose output is not
finite (so a sampler can name the layer where NaN/Inf first appear). Joint video+text attention (HunyuanVideo)
passes `num_text=T, text_lengths=[B]`: the last T tokens are text, the first
text_lengths[b] of them real; padded text keys are masked for every query and only
video tokens are clustered (`svg2_jax.joint_attention`). A call that holds only some of
the layer's heads (head parallel, `svg2_jax.sharding.ulysses`) passes `head_group=` (their
global indices and mesh axis, `svg2_jax.head_group`) so that every head computes what it
would in the call over all heads. `state` is this layer's slice of a
pytree whose leaves carry a leading layer axis, so a model that scans over stacked
blocks scans over the states too, and a sampler carries them across steps.

Everything that changes between steps (which layers are sparse, whether k-means has
been initialised) lives in the state as arrays, so switching from dense warm-up to
sparse steps never recompiles.

The plug point is `LayerAttention`; LAYER_ATTENTIONS names its implementations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from svg2_jax.attention import svg2_attention, svg2_kmeans
from svg2_jax.clustering import SVG2Cache
from svg2_jax.config import SVG2Config
from svg2_jax.head_group import HeadGroup
from svg2_jax.joint_attention import dense_joint_attention, svg2_joint_attention
from svg2_jax.nonfinite import nan_where_not_finite
from svg2_jax.tiled_attention import TILED, tiled_attention


def _dense(q, k, v, implementation, num_text=0, text_lengths=None):
    if implementation == TILED:
        lengths = None if text_lengths is None else q.shape[1] - num_text + text_lengths
        return tiled_attention(q, k, v, lengths)
    if text_lengths is None:
        return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    return dense_joint_attention(q, k, v, text_lengths, num_text=num_text,
                                 implementation=implementation)


def _dense_density(out):
    """1 per head of a dense output out [B, S, H, D], NaN where it is not finite."""
    return nan_where_not_finite(jnp.ones((out.shape[0], out.shape[2]), jnp.float32), out)


@runtime_checkable
class LayerAttention(Protocol):
    """A model's self-attention with per-layer state (a frozen, hashable config)."""

    def init_state(self, num_layers: int, batch: int, heads: int, head_dim: int) -> Any:
        """The stacked state of `num_layers` layers (leaves with a leading layer axis),
        or None when there is none."""

    def set_mode(self, state: Any, sparse, cluster=False) -> Any:
        """The stacked state set to run sparse or dense (and, when dense, to still
        update whatever a later sparse call starts from); traced bools are fine."""

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, state: Any, layer_index, *,
                 num_text: int = 0, text_lengths: jax.Array | None = None,
                 head_group: HeadGroup | None = None) -> tuple[jax.Array, Any, jax.Array]:
        """q, k, v [B, S, H, D]; this layer's state -> (out [B, S, H, D], new state,
        density [B, H], NaN for a head whose output is not finite). Joint video + text
        sequences pass num_text and text_lengths; a call holding some of the layer's heads
        passes head_group."""


@dataclasses.dataclass(frozen=True)
class DenseAttention:
    """Plain softmax attention. implementation: passed to jax.nn.dot_product_attention
    (None = XLA chooses; "cudnn" on NVIDIA GPUs), or "tiled" (`svg2_jax.tiled_attention`:
    query blocks, for long sequences on the CPU)."""

    implementation: str | None = None

    def init_state(self, num_layers, batch, heads, head_dim):
        return None

    def set_mode(self, state, sparse, cluster=False):
        return state

    def __call__(self, q, k, v, state, layer_index, *, num_text=0, text_lengths=None,
                 head_group=None):
        out = _dense(q, k, v, self.implementation, num_text, text_lengths)
        return out, state, _dense_density(out)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SVG2LayerState:
    """One layer's SVG2 state (leaves get a leading layer axis when stacked).

    cache: the layer's centroids; initialized: [] bool, k-means has run at least once
    (else the next clustering is a cold start); sparse: [] bool, use SVG2 in this call
    (False = dense, e.g. warm-up steps or always-dense layers); cluster: [] bool, in a
    dense call, still run k-means to update the cache (so the first sparse step is warm).
    """

    cache: SVG2Cache
    initialized: jax.Array
    sparse: jax.Array
    cluster: jax.Array


@dataclasses.dataclass(frozen=True)
class SVG2Attention:
    """SVG2 self-attention with a per-layer centroid cache.

    dense_layers: layer indices that always run dense (the reference keeps layer 0 dense).
    seed: cold-start k-means initialisation uses fold_in(PRNGKey(seed), layer_index).
    dense_implementation: for the dense layers and steps.
    """

    config: SVG2Config
    dense_layers: tuple[int, ...] = (0,)
    seed: int = 0
    dense_implementation: str | None = None

    def init_state(self, num_layers, batch, heads, head_dim) -> SVG2LayerState:
        """Stacked state for `num_layers` layers: not initialised, sparse except dense_layers."""
        cfg = self.config
        cache = SVG2Cache(
            jnp.zeros((num_layers, batch, heads, cfg.num_q_clusters, head_dim), jnp.float32),
            jnp.zeros((num_layers, batch, heads, cfg.num_k_clusters, head_dim), jnp.float32))
        off = jnp.zeros((num_layers,), bool)
        return self.set_mode(SVG2LayerState(cache, off, off, off), sparse=True)

    def set_mode(self, state: SVG2LayerState, sparse, cluster=False) -> SVG2LayerState:
        """The stacked state with every layer set to run sparse (`sparse`) or dense, and,
        when dense, to still update its centroids (`cluster`). Layers in dense_layers are
        always dense and never cluster. Traced bools are fine: no recompilation."""
        num_layers = state.sparse.shape[0]
        eligible = ~jnp.isin(jnp.arange(num_layers), jnp.asarray(self.dense_layers or (-1,)))
        return dataclasses.replace(state, sparse=eligible & sparse,
                                   cluster=eligible & jnp.logical_and(cluster, jnp.logical_not(sparse)))

    def __call__(self, q, k, v, state: SVG2LayerState, layer_index, *, num_text=0,
                 text_lengths=None, head_group=None):
        cfg = self.config
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), layer_index)
        clustered = dataclasses.replace(state, initialized=jnp.bool_(True))
        joint = text_lengths is not None
        sv = q.shape[1] - num_text if joint else q.shape[1]

        def attend(cache, key):
            if joint:
                return svg2_joint_attention(q, k, v, text_lengths, cache, cfg, key,
                                            num_text=num_text, head_group=head_group)
            return svg2_attention(q, k, v, cache, cfg, key, head_group=head_group)

        def dense(_):
            def recluster(_):  # video tokens only, as the sparse path clusters them
                qv, kv = q[:, :sv], k[:, :sv]
                cache = jax.lax.cond(state.initialized,
                                     lambda: svg2_kmeans(qv, kv, state.cache, cfg,
                                                         head_group=head_group),
                                     lambda: svg2_kmeans(qv, kv, None, cfg, key, head_group))
                return dataclasses.replace(clustered, cache=cache)

            new_state = jax.lax.cond(state.cluster, recluster, lambda _: state, None)
            out = _dense(q, k, v, self.dense_implementation, num_text, text_lengths)
            return out, new_state, _dense_density(out)

        def sparse(_):
            out, cache, stats = jax.lax.cond(state.initialized,
                                             lambda: attend(state.cache, None),
                                             lambda: attend(None, key))
            # non-finite input makes the output NaN there (`svg2_jax.nonfinite`)
            density = jnp.where(stats.nonfinite_input, jnp.float32(jnp.nan), stats.density)
            return out, dataclasses.replace(clustered, cache=cache), density

        return jax.lax.cond(state.sparse, sparse, dense, None)


LAYER_ATTENTIONS: dict[str, type] = {"dense": DenseAttention, "svg2": SVG2Attention}
