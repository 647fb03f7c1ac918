"""Which query-key pairs each method computes, and whether the left-out key clusters are
compensated: SVG2 (the reference rule), the error-aware rule, and the baselines.

A selector is a function (problem, setting, density) -> Selection: token labels of the
query and key groups and a [N, groups_q, groups_k] bool block mask. `SELECTORS` is the
table the benchmark runs, in this order; adding a method is a function plus one row
there. Rows without a sweep run at every SVG2 setting (top_p, min_kc_ratio): the one
that sets the density (SVG2: top-p) first, the others at its per-head density, so they
are compared at equal density. Rows with a sweep run once per value of their own knob
(error_tolerance, target_density) and are compared along the density axis.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import sparse_worklist as wl
from svg2_jax import SVG2Config
from svg2_jax.clustering import Clustering
from svg2_jax.compensation import KeyClusterStats
from svg2_jax.kmeans import KMeansResult
from svg2_jax.layout import pallas_work, used_blocks
from svg2_jax.selection import block_density, select_by_error, select_clusters


@dataclasses.dataclass(frozen=True)
class Problem:
    """What selectors may use, per problem n (batch x head): qn, kn [N, S, D] float32;
    config: the SVG2Config of the run (QC, KC, iterations); q_clusters, k_clusters: SVG2's
    k-means on them; cluster_mass [N, QC, KC] and tile_mass [N, nb, nb]: the true softmax
    mass of every (query cluster, key cluster) block and of every fixed `block` x `block`
    tile in token order (float64, from the dense pass); key_stats: the library's
    statistics of SVG2's key clusters (`compensation.key_cluster_stats`); batch: B, the
    problems being B x H in (b h) order."""

    qn: jax.Array
    kn: jax.Array
    config: SVG2Config
    q_clusters: KMeansResult
    k_clusters: KMeansResult
    cluster_mass: np.ndarray
    tile_mass: np.ndarray
    block: int
    key_stats: KeyClusterStats | None = None
    batch: int = 1

    @property
    def q_sizes(self) -> np.ndarray:
        return np.asarray(self.q_clusters.sizes)

    @property
    def k_sizes(self) -> np.ndarray:
        return np.asarray(self.k_clusters.sizes)

    @property
    def tile_sizes(self) -> np.ndarray:
        """[N, nb] tokens per fixed block (the last may be partial)."""
        n, s = self.qn.shape[:2]
        nb = -(-s // self.block)
        return np.broadcast_to(np.bincount(np.arange(s) // self.block, minlength=nb), (n, nb))


@dataclasses.dataclass(frozen=True)
class Setting:
    """SVG2's knobs for one row of the table."""

    top_p: float
    min_kc_ratio: float

    @property
    def label(self) -> str:
        return f"top_p={self.top_p:g}, min_kc={self.min_kc_ratio:g}"


class Point(NamedTuple):
    """One value of a swept selector's own knob (an SVG2Config field name)."""

    param: str
    value: float
    label = property(lambda self: f"{self.param}={self.value:g}")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A selector's own knob: param (an SVG2Config field), its values, and the value that
    `--api-check one` re-runs through svg2_attention."""

    param: str
    values: tuple[float, ...]
    main: float

    def __post_init__(self):
        if self.main not in self.values:
            raise ValueError(f"Sweep {self.param}: main value {self.main} is not swept")


class Selection(NamedTuple):
    """q_labels, k_labels [N, S] int: each token's group; selected [N, GQ, GK] bool;
    density [N]: the fraction of pairs selected, from a selector that sets the density
    (None otherwise: the masked pass counts every selection's pairs); computed [N]: the
    pairs the Hopper kernel's tiles cost (`kernel_tiles`; None for other methods)."""

    q_labels: np.ndarray
    k_labels: np.ndarray
    selected: np.ndarray
    density: np.ndarray | None = None
    computed: np.ndarray | None = None


class SelectFn(Protocol):
    def __call__(self, problem: Problem, setting: Setting,
                 density: np.ndarray | None) -> Selection:
        """The pairs to compute for every problem, at `density` [N] per head (None for a
        selector that sets its own density)."""


# Compensation of the left-out key clusters in the masked pass (`metrics.masked_pass`):
# none; per query token with its own key exact (SVG2Config's); per query token
# without the own-key term; per query cluster (every member uses the cluster's mean
# query, no own key: the cheaper, coarser variant).
COMPENSATIONS = ("none", "token", "token_no_own_key", "query_cluster")


@dataclasses.dataclass(frozen=True)
class Selector:
    """name: the table's method label ("{block}" becomes the block size). select: the
    method. sets_density: it chooses its own density (SVG2: top-p), and the others are
    run at it, per head; it is called with density None. sweep: its own knob (then it
    runs once per value, with a Point as setting, not at SVG2's settings). compensation:
    one of COMPENSATIONS (cluster selections only). config: how `svg2_attention`
    reproduces the row, (run's SVG2Config, setting) -> SVG2Config, for `--api-check`
    (None: the method is not the library's)."""

    name: str
    select: SelectFn
    sets_density: bool = False
    sweep: Sweep | None = None
    compensation: str = "none"
    config: Callable[[SVG2Config, object], SVG2Config] | None = None

    def label(self, problem: Problem) -> str:
        return self.name.format(block=problem.block)


@functools.partial(jax.jit, static_argnames=("top_p", "min_clusters"))
def svg2_select(qk, kk, top_p, min_clusters):
    sel = select_clusters(qk.centroids, kk.centroids, kk.sizes, top_p, min_clusters).selected
    return sel, block_density(sel, qk.sizes, kk.sizes)


def oracle_select(block_mass, q_sizes, k_sizes, target_density):
    """Greedy by true mass per pair until the pair count is closest to the target.

    block_mass [N, QC, KC] (true softmax mass summed over the block's pairs);
    q_sizes [N, QC]; k_sizes [N, KC]; target_density [N] -> bool [N, QC, KC].
    At least one block is taken.
    """
    n, qc, kc = block_mass.shape
    sel = np.zeros((n, qc, kc), bool)
    for i in range(n):
        pairs = np.outer(q_sizes[i], k_sizes[i]).astype(np.float64)
        total = pairs.sum()
        per_pair = np.where(pairs > 0, block_mass[i] / np.maximum(pairs, 1), -1.0).ravel()
        order = np.argsort(-per_pair, kind="stable")
        order = order[per_pair[order] >= 0]  # non-empty blocks only
        cum = np.cumsum(pairs.ravel()[order])
        take = int(np.argmin(np.abs(cum - target_density[i] * total))) + 1
        sel[i].ravel()[order[:take]] = True
    return sel


def block_topk_select(qn, kn, block, target_density):
    """Static 64-token block top-k in the original token order.

    qn, kn [N, S, D] -> (q_labels [N, S], k_labels [N, S], selected [N, nqb, nkb]).
    The last block may be partial (its mean is over its tokens).
    """
    n, s, d = qn.shape
    nb = -(-s // block)
    labels = np.arange(s) // block
    counts = np.bincount(labels, minlength=nb).astype(np.float64)
    qn, kn = np.asarray(qn, np.float64), np.asarray(kn, np.float64)
    qp = np.stack([np.add.reduceat(x, np.arange(0, s, block), axis=0) for x in qn])
    kp = np.stack([np.add.reduceat(x, np.arange(0, s, block), axis=0) for x in kn])
    qp /= counts[None, :, None]
    kp /= counts[None, :, None]
    score = np.einsum("nqd,nkd->nqk", qp, kp) / math.sqrt(d)
    sel = np.zeros((n, nb, nb), bool)
    for i in range(n):
        topk = max(1, min(nb, int(round(float(target_density[i]) * nb))))
        idx = np.argsort(-score[i], axis=-1, kind="stable")[:, :topk]
        np.put_along_axis(sel[i], idx, True, axis=-1)
    lab = np.broadcast_to(labels.astype(np.int32), (n, s))
    return lab, lab, sel


def _cluster_labels(problem: Problem):
    return np.asarray(problem.q_clusters.labels), np.asarray(problem.k_clusters.labels)


def svg2(problem: Problem, setting: Setting, density=None) -> Selection:
    """SVG2 as `svg2_attention` selects: centroid-level top-p with the min_kc_ratio floor."""
    cfg = dataclasses.replace(problem.config, top_p=setting.top_p,
                              min_kc_ratio=setting.min_kc_ratio)
    sel, dens = svg2_select(problem.q_clusters, problem.k_clusters, cfg.top_p,
                            cfg.min_k_clusters)
    return Selection(*_cluster_labels(problem), np.asarray(sel), np.asarray(dens, np.float64))


def cluster_oracle(problem: Problem, setting: Setting, density) -> Selection:
    """SVG2's clusters, blocks taken by true mass per pair up to `density`."""
    sel = oracle_select(problem.cluster_mass, problem.q_sizes, problem.k_sizes, density)
    return Selection(*_cluster_labels(problem), sel)


def cluster_oracle_budget(problem: Problem, point: Point, density=None) -> Selection:
    """The oracle at the swept density `point.value` on every head."""
    target = np.full(problem.qn.shape[0], point.value)
    return cluster_oracle(problem, point, target)


@functools.partial(jax.jit, static_argnames=("scale", "by_density", "q_tile", "pool"))
def _error_select(qn, qk, kk, stats, scale, value, by_density, q_tile, pool):
    """The rule at a traced tolerance or density (one compilation for the whole sweep)."""
    sel = select_by_error(qn, Clustering(qk, kk), stats, scale,
                          error_tolerance=None if by_density else value,
                          target_density=value if by_density else None, q_tile=q_tile,
                          pool=pool)
    return sel.selected, block_density(sel.selected, qk.sizes, kk.sizes)


def error_aware(pool: str = "head") -> SelectFn:
    """The library's error-aware rule (`selection.select_by_error`) at the swept
    error_tolerance or target_density, as `svg2_attention` selects with
    error_pool=`pool`."""
    def select(problem: Problem, point: Point, density=None) -> Selection:
        if point.param not in ("error_tolerance", "target_density"):
            raise ValueError(f"error_aware sweeps error_tolerance or target_density, not "
                             f"{point.param}")
        heads = problem.qn.shape[0] // problem.batch
        sel, dens = _error_select(problem.qn, problem.q_clusters, problem.k_clusters,
                                  problem.key_stats, problem.qn.shape[-1] ** -0.5,
                                  jnp.float32(point.value), point.param == "target_density",
                                  problem.config.q_tile, heads if pool == "layer" else 1)
        return Selection(*_cluster_labels(problem), np.asarray(sel),
                         np.asarray(dens, np.float64))
    return select


def block_topk(problem: Problem, setting: Setting, density) -> Selection:
    """Fixed blocks in token order, top-k key blocks by mean-pooled score."""
    return Selection(*block_topk_select(problem.qn, problem.kn, problem.block, density))


def block_oracle(problem: Problem, setting: Setting, density) -> Selection:
    """Fixed blocks in token order, taken by true mass per pair up to `density`."""
    labels = np.broadcast_to((np.arange(problem.qn.shape[1]) // problem.block)
                             .astype(np.int32), problem.qn.shape[:2])
    sel = oracle_select(problem.tile_mass, problem.tile_sizes, problem.tile_sizes, density)
    return Selection(labels, labels, sel)


def _svg2_config(compensation: bool):
    def make(base: SVG2Config, setting: Setting) -> SVG2Config:
        return dataclasses.replace(base, selection="svg2", compensation=compensation,
                                   top_p=setting.top_p, min_kc_ratio=setting.min_kc_ratio)
    return make


def _error_config(own_key: bool = True, pool: str = "head"):
    def make(base: SVG2Config, point: Point) -> SVG2Config:
        return dataclasses.replace(base, selection="error", compensation=True,
                                   compensate_own_key=own_key, error_pool=pool,
                                   **{point.param: point.value})
    return make


TOLERANCES = Sweep("error_tolerance",
                   (0.002, 0.003, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.13, 0.2,
                    0.35),
                   SVG2Config.error_aware().error_tolerance)
DENSITIES = Sweep("target_density", (0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.25), 0.07)
# Issue #13's method (SVG2Config.error_aware()): error-aware selection at a tolerance,
# compensated.
DEFAULT_METHOD = "error-aware (tolerance) + compensation"

@functools.partial(jax.jit, static_argnames=("top_p", "min_clusters", "tuning"))
def kernel_tiles_select(qk, kk, top_p, min_clusters, tuning: wl.SparseTuningConfig):
    """SVG2's selection as the kernel's tiles use it (`layout.used_blocks`): (query token
    groups [N, S], group_selected [N, G, KC], computed pairs [N] of the work list)."""
    clustering = Clustering(qk, kk)
    selection = select_clusters(qk.centroids, kk.centroids, kk.sizes, top_p, min_clusters)
    groups, group_selected = used_blocks(clustering, selection, tuning)
    computed, _ = wl.tile_rows(pallas_work(clustering, selection, tuning).work, tuning)
    return groups, group_selected, computed


def kernel_tiles(query_tiles: str, tuning: wl.SparseTuningConfig = wl.SparseTuningConfig()
                 ) -> SelectFn:
    """A selector: SVG2's top-p selection with the pairs the kernel's tiles use under
    `query_tiles` (clusters tiles: the selection itself; spanning tiles: each CTA's rows
    over the union of its clusters' selections) and the pairs those tiles compute.
    It runs at SVG2's own selection, whatever the density asked."""
    tuning = dataclasses.replace(tuning, query_tiles=query_tiles)

    def select(problem: Problem, setting: Setting, density=None) -> Selection:
        cfg = dataclasses.replace(problem.config, top_p=setting.top_p,
                                  min_kc_ratio=setting.min_kc_ratio)
        groups, group_selected, computed = kernel_tiles_select(
            problem.q_clusters, problem.k_clusters, cfg.top_p, cfg.min_k_clusters, tuning)
        return Selection(np.asarray(groups), np.asarray(problem.k_clusters.labels),
                         np.asarray(group_selected), computed=np.asarray(computed, np.float64))

    return select


# Opt-in rows (bench_quality --query-tiles): SVG2's selection as the kernel uses it.
KERNEL_TILE_SELECTORS = {mode: Selector(f"kernel tiles: {mode}", kernel_tiles(mode))
                         for mode in wl.QUERY_TILES}

SELECTORS: tuple[Selector, ...] = (
    Selector("SVG2", svg2, sets_density=True, config=_svg2_config(False)),
    Selector("SVG2 + compensation", svg2, compensation="token", config=_svg2_config(True)),
    Selector("SVG2 + compensation per query cluster", svg2, compensation="query_cluster"),
    Selector("oracle (same clusters)", cluster_oracle),
    Selector("block top-k ({block})", block_topk),
    Selector("block oracle ({block})", block_oracle),
    Selector(DEFAULT_METHOD, error_aware(), sweep=TOLERANCES, compensation="token",
             config=_error_config()),
    Selector("error-aware (tolerance) + compensation, no own key", error_aware(),
             sweep=TOLERANCES, compensation="token_no_own_key",
             config=_error_config(own_key=False)),
    Selector("error-aware (tolerance, one pool per layer) + compensation", error_aware("layer"),
             sweep=TOLERANCES, compensation="token", config=_error_config(pool="layer")),
    Selector("error-aware (budget) + compensation", error_aware(), sweep=DENSITIES,
             compensation="token", config=_error_config()),
    Selector("oracle (same clusters) + compensation", cluster_oracle_budget, sweep=DENSITIES,
             compensation="token"),
)
