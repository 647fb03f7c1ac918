"""Which query-key pairs each method computes: SVG2 and the baselines it is compared with.

A selector is a function (problem, setting, density) -> Selection: token labels of the
query and key groups and a [N, groups_q, groups_k] bool block mask. `SELECTORS` is the
table the benchmark runs, in this order, for every setting; adding a method is a
function plus one row there. A selector that sets the density (SVG2: top-p) runs first
and the others run at its per-head density, so all are compared at equal density.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Protocol

import jax
import numpy as np

from pallas_kernels import sparse_worklist as wl
from svg2_jax import SVG2Config
from svg2_jax.clustering import Clustering
from svg2_jax.kmeans import KMeansResult
from svg2_jax.layout import pallas_work, used_blocks
from svg2_jax.selection import block_density, select_clusters


@dataclasses.dataclass(frozen=True)
class Problem:
    """What selectors may use, per problem n (batch x head): qn, kn [N, S, D] float32;
    config: the SVG2Config of the run (QC, KC, iterations); q_clusters, k_clusters: SVG2's
    k-means on them; cluster_mass [N, QC, KC] and tile_mass [N, nb, nb]: the true softmax
    mass of every (query cluster, key cluster) block and of every fixed `block` x `block`
    tile in token order (float64, from the dense pass)."""

    qn: jax.Array
    kn: jax.Array
    config: SVG2Config
    q_clusters: KMeansResult
    k_clusters: KMeansResult
    cluster_mass: np.ndarray
    tile_mass: np.ndarray
    block: int

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


@dataclasses.dataclass(frozen=True)
class Selector:
    """name: the table's method label ("{block}" becomes the block size). select: the
    method. sets_density: it chooses its own density (SVG2: top-p), and the others are
    run at it, per head; it is called with density None."""

    name: str
    select: SelectFn
    sets_density: bool = False

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


def block_topk(problem: Problem, setting: Setting, density) -> Selection:
    """Fixed blocks in token order, top-k key blocks by mean-pooled score."""
    return Selection(*block_topk_select(problem.qn, problem.kn, problem.block, density))


def block_oracle(problem: Problem, setting: Setting, density) -> Selection:
    """Fixed blocks in token order, taken by true mass per pair up to `density`."""
    labels = np.broadcast_to((np.arange(problem.qn.shape[1]) // problem.block)
                             .astype(np.int32), problem.qn.shape[:2])
    sel = oracle_select(problem.tile_mass, problem.tile_sizes, problem.tile_sizes, density)
    return Selection(labels, labels, sel)


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
    Selector("SVG2", svg2, sets_density=True),
    Selector("oracle (same clusters)", cluster_oracle),
    Selector("block top-k ({block})", block_topk),
    Selector("block oracle ({block})", block_oracle),
)
