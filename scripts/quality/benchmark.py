"""The quality benchmark's run: SVG2's clusters, the exact dense pass, every selector of
`selectors.SELECTORS` at every setting, and one masked pass that scores them all."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from scripts.quality.clustering import svg2_clusters
from scripts.quality.metrics import dense_pass, masked_pass, pad_selection, token_level_density
from scripts.quality.selectors import SELECTORS, Problem, Setting
from svg2_jax import SVG2Config, svg2_attention

DEFAULT_TOP_PS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def run_quality(q, k, v, *, top_ps=DEFAULT_TOP_PS, min_kc_ratio=0.10,
                extra_settings=((0.9, 0.0),), num_q_clusters=None, num_k_clusters=None,
                q_tokens_per_cluster=100, k_tokens_per_cluster=30, kmeans_iters=50,
                block=64, seed=0, tile=128, api_check="all", token_stride=4,
                selectors=SELECTORS, verbose=True):
    """The benchmark on given q, k, v [B, S, H, D] float32. Returns a dict of results.

    Settings are (top_p, min_kc_ratio) pairs: every top_p with `min_kc_ratio`, then
    `extra_settings`. For each setting the first selector that sets the density (SVG2)
    runs first and the others at its per-head density. api_check: "all" runs
    `svg2_attention` for every setting, "one" for top_p 0.9 with `min_kc_ratio` (or the
    first setting), "none" skips it; or a list of (top_p, min_kc_ratio) settings to check.
    """
    log = print if verbose else (lambda *a, **kw: None)
    b, s, h, d = q.shape
    qc = num_q_clusters or int(np.clip(round(s / q_tokens_per_cluster), 4, 300))
    kc = num_k_clusters or int(np.clip(round(s / k_tokens_per_cluster), 8, 1000))
    qc, kc = min(qc, s), min(kc, s)
    settings = [(float(p), float(min_kc_ratio)) for p in top_ps]
    settings += [(float(p), float(r)) for p, r in extra_settings if (p, r) not in settings]
    key = jax.random.PRNGKey(seed)
    qn, kn, vn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k, v))
    timings = {}

    t0 = time.perf_counter()
    base = SVG2Config(num_q_clusters=qc, num_k_clusters=kc, kmeans_iters_cold=kmeans_iters,
                      backend="jax", kmeans_impl="xla")
    qk, kk = jax.block_until_ready(svg2_clusters(q, k, base, key))
    timings["kmeans_s"] = time.perf_counter() - t0
    log(f"k-means: QC={qc} KC={kc}, {int(qk.iterations)}/{int(kk.iterations)} iterations "
        f"(Q/K), {timings['kmeans_s']:.1f} s")

    t0 = time.perf_counter()
    o_dense, bmass, tmass, entropy, maxprob, self_top1 = jax.block_until_ready(
        dense_pass(qn, kn, vn, qk.labels, kk.labels, tile, qc, kc, block))
    tok90 = token_level_density(qn, kn, token_stride)
    timings["dense_s"] = time.perf_counter() - t0
    ref_sq = np.asarray(jnp.sum(o_dense.astype(jnp.float32) ** 2, axis=(1, 2)))

    problem = Problem(qn=qn, kn=kn, config=base, q_clusters=qk, k_clusters=kk,
                      cluster_mass=np.asarray(bmass, np.float64),
                      tile_mass=np.asarray(tmass, np.float64), block=block)
    specs = select_all(problem, [Setting(p, r) for p, r in settings], selectors)

    cq = max(sp["selection"].selected.shape[1] for sp in specs)
    ck = max(sp["selection"].selected.shape[2] for sp in specs)
    t0 = time.perf_counter()
    (err, pairs, empty, top1), rec_q = jax.block_until_ready(
        masked_pass(qn, kn, vn, o_dense,
                    jnp.asarray(np.stack([sp["selection"].q_labels for sp in specs]),
                                jnp.int32),
                    jnp.asarray(np.stack([sp["selection"].k_labels for sp in specs]),
                                jnp.int32),
                    jnp.asarray(np.stack([pad_selection(sp["selection"].selected, cq, ck)
                                          for sp in specs])),
                    tile))
    err, pairs, empty, top1 = (np.asarray(x, np.float64) for x in (err, pairs, empty, top1))
    rec_q = np.asarray(rec_q, np.float64)
    rec = rec_q.sum(-1)
    rec_p10 = np.percentile(rec_q, 10, axis=-1)
    timings["masked_s"] = time.perf_counter() - t0

    rows = []
    for i, sp in enumerate(specs):
        method, setting, sel = sp["method"], sp["setting"], sp["selection"].selected
        rel = np.sqrt(err[i] / ref_sq)
        rows.append(dict(method=method, setting=setting.label, top_p=setting.top_p,
                         min_kc_ratio=setting.min_kc_ratio,
                         density=float(np.mean(pairs[i] / (s * s))),
                         rel_error=float(np.mean(rel)), recall=float(np.mean(rec[i] / s)),
                         density_per_head=(pairs[i] / (s * s)).tolist(),
                         rel_error_per_head=rel.tolist(),
                         recall_per_head=(rec[i] / s).tolist(),
                         recall_p10=float(np.mean(rec_p10[i])),
                         recall_p10_per_head=rec_p10[i].tolist(),
                         top1_kept=float(np.mean(top1[i] / s)),
                         top1_kept_per_head=(top1[i] / s).tolist(),
                         kept_k_per_q=float(sel.sum() / sel.shape[0] / sel.shape[1]),
                         diagonal_kept=(float(np.mean(np.diagonal(sel, axis1=1, axis2=2)))
                                        if method.startswith("block") else None),
                         target_density_per_head=sp["target_density"].tolist(),
                         empty_queries=int(empty[i].sum()),
                         blocks_selected=int(sel.sum()),
                         **_computed(sp["selection"].computed, s)))

    checks = api_checks(q, k, v, key, base, rows, o_dense, ref_sq,
                        _api_settings(api_check, settings, min_kc_ratio), timings, log)
    return dict(
        S=s, B=b, H=h, D=d, QC=qc, KC=kc, block=block, kmeans_iters=kmeans_iters,
        kmeans_iters_run=[int(qk.iterations), int(kk.iterations)],
        q_cluster_size=_size_range(problem.q_sizes), k_cluster_size=_size_range(problem.k_sizes),
        tokens_per_cluster=[s / qc, s / kc],
        attention=dict(entropy=float(np.mean(entropy)), uniform_entropy=math.log(s),
                       max_prob=float(np.mean(maxprob)),
                       self_top1=float(np.mean(self_top1)),
                       token_density_90=float(np.mean(tok90)),
                       entropy_per_head=np.asarray(entropy).tolist(),
                       max_prob_per_head=np.asarray(maxprob).tolist(),
                       token_density_90_per_head=np.asarray(tok90).tolist(),
                       token_density_stride=token_stride),
        rows=rows, api_checks=checks, timings=timings)


def select_all(problem: Problem, settings, selectors=SELECTORS) -> list[dict]:
    """Every selector at every setting, settings outermost and selectors in table order:
    [{method, setting, target_density [N], selection}]. The first density-setting
    selector's per-head density is every selector's target at that setting."""
    lead = next(i for i, sel in enumerate(selectors) if sel.sets_density)
    order = [lead] + [i for i in range(len(selectors)) if i != lead]
    specs = []
    for setting in settings:
        made = {}
        target = None
        for i in order:
            made[i] = selectors[i].select(problem, setting, target)
            if target is None:
                target = made[i].density
        specs += [dict(method=selectors[i].label(problem), setting=setting,
                       target_density=target, selection=made[i])
                  for i in range(len(selectors))]
    return specs


def _computed(computed, s) -> dict:
    """The density of pairs the kernel's tiles compute, for rows that know it."""
    if computed is None:
        return {}
    return dict(computed_density=float(np.mean(computed / (s * s))),
                computed_density_per_head=(computed / (s * s)).tolist())


def _size_range(sizes) -> list[int]:
    """[smallest non-empty cluster, largest, empty clusters] over all problems."""
    return [int(sizes[sizes > 0].min()), int(sizes.max()), int((sizes == 0).sum())]


def _api_settings(api_check, settings, min_kc_ratio):
    if not isinstance(api_check, str):
        return [(float(p), float(r)) for p, r in api_check]
    if api_check == "all":
        return settings
    if api_check == "one":
        main_setting = (0.9, float(min_kc_ratio))
        return [main_setting if main_setting in settings else settings[0]]
    return []


def api_checks(q, k, v, key, base: SVG2Config, rows, o_dense, ref_sq, todo, timings, log):
    """`svg2_attention` itself must give the SVG2 rows' per-head density and output
    error: one check per (top_p, min_kc_ratio) in `todo`; adds api_rel_error to the rows."""
    checks = []
    if not todo:
        return checks
    t0 = time.perf_counter()
    for top_p, ratio in todo:
        cfg = SVG2Config(num_q_clusters=base.num_q_clusters, num_k_clusters=base.num_k_clusters,
                         top_p=top_p, min_kc_ratio=ratio,
                         kmeans_iters_cold=base.kmeans_iters_cold, backend="jax",
                         kmeans_impl="xla")
        out, _, stats = svg2_attention(q, k, v, None, cfg, key=key)
        on = rearrange(out, "b s h d -> (b h) s d")
        rel_api = np.sqrt(np.asarray(jnp.sum((on - o_dense) ** 2, axis=(1, 2))) / ref_sq)
        dens_api = np.asarray(stats.density).reshape(-1)
        row = next(r for r in rows if r["method"] == "SVG2"
                   and r["top_p"] == top_p and r["min_kc_ratio"] == ratio)
        checks.append(dict(
            top_p=top_p, min_kc_ratio=ratio,
            max_density_diff=float(np.max(np.abs(dens_api
                                                 - np.asarray(row["density_per_head"])))),
            api_rel_error=float(np.mean(rel_api)),
            max_rel_error_diff=float(np.max(np.abs(rel_api
                                                   - np.asarray(row["rel_error_per_head"]))))))
        row["api_rel_error"] = float(np.mean(rel_api))
    timings["api_check_s"] = time.perf_counter() - t0
    worst_d = max(c["max_density_diff"] for c in checks)
    worst_e = max(c["max_rel_error_diff"] for c in checks)
    log(f"svg2_attention check ({len(checks)} settings): max |density diff| {worst_d:.2e}, "
        f"max |rel. error diff| {worst_e:.2e}")
    return checks
