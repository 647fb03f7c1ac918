"""Every SVG2Stats field against numpy, on clusters built with known sizes and known empty
clusters, different in every (batch, head) problem."""

import numpy as np
import pytest
from einops import rearrange

import npref
from svg2_jax import SVG2Cache, SVG2Config, SparseTuningConfig, svg2_attention

B, H, D = 2, 3, 8
SQ, SK = 120, 150  # Sq != Sk: the stats must not mix the query and key sides
QC, KC = 6, 10
# empty clusters per problem ((b h) order): every problem differs from its neighbours
Q_EMPTY = (0, 1, 2, 0, 3, 1)
K_EMPTY = (2, 0, 1, 3, 0, 4)


COMPENSATION_FIELDS = ("compensated_mass", "estimated_error")


def known_clusters(rng, s, num_clusters, empty, offset):
    """Per problem: num_clusters - empty[n] well separated blobs of random distinct sizes
    summing to s, and initial centroids at each blob's mean + `offset` plus `empty[n]` far
    away (which k-means leaves empty). -> x [N, s, D], init [N, C, D], sizes [N] (each
    sorted). offset 0 converges in one k-means iteration, a small one in two."""
    xs, inits, sizes = [], [], []
    for n, e in enumerate(empty):
        m = num_clusters - e
        while True:  # distinct sizes, each at least 2
            cuts = np.sort(rng.choice(np.arange(1, s), m - 1, replace=False))
            size = np.diff(np.concatenate([[0], cuts, [s]]))
            if size.min() >= 2 and len(set(size)) == m:
                break
        centres = rng.normal(size=(m, D))
        x = (np.repeat(centres, size, axis=0) + 0.02 * rng.normal(size=(s, D))).astype(np.float32)
        means = np.stack([blob.mean(0) for blob in np.split(x, np.cumsum(size)[:-1])])
        xs.append(x[rng.permutation(s)])
        far = 100.0 * (1 + np.arange(e))[:, None] * np.ones((e, D))
        init = np.concatenate([means + offset, far])
        inits.append(init[rng.permutation(num_clusters)])
        sizes.append(np.sort(size))
    return np.stack(xs).astype(np.float32), np.stack(inits).astype(np.float32), sizes


def numpy_stats(ref):
    """Each SVG2Stats field from the numpy pipeline's clusterings and selection, per
    problem [N] (iteration counts: scalars)."""
    qs, ks, sel = ref["q"][2], ref["k"][2], ref["selected"]
    out = {}
    for side, sizes in (("q", qs), ("k", ks)):
        out[f"{side}_size_min"] = np.array([row[row > 0].min() for row in sizes])
        out[f"{side}_size_max"] = sizes.max(-1)
        out[f"{side}_empty"] = (sizes == 0).sum(-1)
        out[f"{side}_kmeans_iters"] = ref[side][3]
    kept = sel.sum(-1)  # [N, QC] key clusters kept per query cluster
    out["kept_k_clusters"] = np.array([kept[n][qs[n] > 0].mean() for n in range(len(qs))])
    out["density"] = ref["density"]
    out["compensated_mass"] = ref["compensated"]
    out["estimated_error"] = ref["estimated"]
    return out


# the reference rule; the same with compensation; the error-aware rule (its preset)
RULES = [dict(selection="svg2", compensation=False, top_p=0.6, min_kc_ratio=0.2),
         dict(selection="svg2", compensation=True, top_p=0.9, min_kc_ratio=0.0),
         dict(selection="error", compensation=True, error_tolerance=0.05, min_kc_ratio=0.0)]


@pytest.mark.parametrize("rule,backend", [(RULES[0], "jax"), (RULES[1], "masked_dense"),
                                          (RULES[2], "pallas_reference")],
                         ids=["svg2-jax", "svg2-compensated-masked_dense",
                              "error-compensated-pallas_reference"])
def test_every_stats_field_equals_numpy_on_known_clusters(rule, backend):
    rng = np.random.default_rng(int(rule["top_p"] * 10) if "top_p" in rule else 3)
    q, qc0, q_sizes = known_clusters(rng, SQ, QC, Q_EMPTY, offset=0.0)
    k, kc0, k_sizes = known_clusters(rng, SK, KC, K_EMPTY, offset=0.01)
    v = rng.normal(size=k.shape).astype(np.float32)
    cfg = SVG2Config(num_q_clusters=QC, num_k_clusters=KC, kmeans_iters_warm=3,
                     backend=backend, kernel=SparseTuningConfig(block_kv=64, box_rows=8),
                     **rule)
    to_bshd = lambda x: rearrange(x, "(b h) s d -> b s h d", b=B)
    to_cache = lambda c: rearrange(c, "(b h) c d -> b h c d", b=B)
    _, _, stats = svg2_attention(to_bshd(q), to_bshd(k), to_bshd(v),
                                 SVG2Cache(to_cache(qc0), to_cache(kc0)), cfg)

    ref = npref.svg2(q, k, v, qc0, kc0, 3, cfg.kmeans_tol, cfg.top_p,
                     int(cfg.min_kc_ratio * KC),
                     tau=cfg.error_tolerance if cfg.selection == "error" else None,
                     compensation=cfg.compensation)
    # the numpy clustering found exactly the clusters that were built
    for side, built in (("q", q_sizes), ("k", k_sizes)):
        for n, sizes in enumerate(ref[side][2]):
            np.testing.assert_array_equal(np.sort(sizes[sizes > 0]), built[n])
    want = numpy_stats(ref)
    fields = {f for f in type(stats).__dataclass_fields__}
    assert set(want) <= fields
    for name, value in want.items():
        got = np.asarray(getattr(stats, name))
        if name.endswith("kmeans_iters"):
            assert got.shape == () and int(got) == value, name
            continue
        assert got.shape == (B, H), name
        # float32 exponentials against float64 for the compensation's figures
        tol = dict(rtol=1e-4, atol=1e-6) if name in COMPENSATION_FIELDS else dict(rtol=1e-6)
        np.testing.assert_allclose(got, rearrange(value, "(b h) -> b h", b=B), err_msg=name,
                                   **tol)
    # the data exercises what the fields summarise: empties, per-head differences, sparsity
    np.testing.assert_array_equal(np.asarray(stats.q_empty).ravel(), Q_EMPTY)
    np.testing.assert_array_equal(np.asarray(stats.k_empty).ravel(), K_EMPTY)
    assert len(set(np.asarray(stats.kept_k_clusters).ravel().round(4))) > 1
    assert (np.asarray(stats.density) < 1).all()
    if cfg.compensation:  # the compensation supplied part of every head's softmax
        assert (np.asarray(stats.compensated_mass) > 1e-3).all()
    est = np.asarray(stats.estimated_error)
    assert (est == -1).all() if cfg.selection == "svg2" else (est > 0).all()
    # converged, and not together: the iteration counts are neither the cap nor each other
    assert (want["q_kmeans_iters"], want["k_kmeans_iters"]) == (1, 2)
