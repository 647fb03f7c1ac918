"""scripts/bench_overhead.py on the CPU: every row runs and is written to the JSON, and
the timed "around the kernel" function returns (so computes) every array it builds."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from scripts import bench_overhead as bo
from svg2_jax import SVG2Cache, SVG2Config
from svg2_jax import kmeans as km


def test_every_row_is_in_the_json(tmp_path):
    out = tmp_path / "overhead.json"
    assert bo.main(["--tiny", "--reps", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["backend"] == "cpu" and data["meta"]["impls"] == ["xla"]
    shape = data["shapes"]["tiny"]
    assert (shape["S"], shape["H"], shape["QC"], shape["KC"]) == bo.TINY_SHAPES["tiny"]
    rows = shape["rows"]
    assert len(rows) == 12
    for label, r in rows.items():
        assert r["median_ms"] > 0 and len(r["times_ms"]) >= 1, label
        assert r["outputs"]["nonfinite"] == 0 and r["outputs"]["elements"] > 0, label
    dense = rows["dense attention (XLA)"]["median_ms"]
    one_jit = rows["**warm overhead, one jit [xla]**"]
    assert shape["warm_overhead_ms_xla"] == one_jit["median_ms"]
    assert abs(one_jit["percent_of_dense"] - 100 * one_jit["median_ms"] / dense) < 1e-9
    assert 0.5 < shape["random_input_density_top_p"] <= 1.0
    assert shape["dense_tflops"] > 0


def _problem(s=512, h=2, qc=8, kc=32, d=128):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(x, (1, s, h, d), jnp.bfloat16) for x in (kq, kk, kv))
    qn, kn = (rearrange(x, "b s h d -> (b h) s d") for x in (q, k))
    rq = km.kmeans(qn, km.random_init(jax.random.PRNGKey(1), qn, qc), 10)
    rk = km.kmeans(kn, km.random_init(jax.random.PRNGKey(2), kn, kc), 10)
    cache = SVG2Cache(rearrange(rq.centroids, "(b h) c d -> b h c d", b=1),
                      rearrange(rk.centroids, "(b h) c d -> b h c d", b=1))
    return q, k, v, cache, SVG2Config(num_q_clusters=qc, num_k_clusters=kc).kernel


def test_around_the_kernel_keeps_every_output():
    q, k, v, cache, tuning = _problem()
    kw = dict(impl="xla", tuning=tuning, min_clusters=3)
    slots, lse_slots = bo.kernel_slots(q, k, v, cache, **kw)
    from scripts.timing import time_jax
    timing, out = time_jax(lambda *a: bo.around_kernel(*a, **kw), q, k, v, cache, slots,
                           lse_slots, reps=1, warmup=1)
    assert set(out) == {"q_kmeans", "k_kmeans", "selected", "work", "q_layout", "k_layout",
                        "v_layout", "q_order", "out", "lse"}
    leaves = jax.tree.leaves(out)
    # the timed program's outputs are all of these arrays, whole
    assert timing.outputs["leaves"] == len(leaves)
    assert timing.outputs["elements"] == sum(x.size for x in leaves)
    s, d = q.shape[1], q.shape[-1]
    n = q.shape[2]
    assert out["k_layout"].shape[1] >= s and out["q_layout"].shape[1] >= s
    kn, vn = (np.asarray(rearrange(x, "b s h d -> (b h) s d"), np.float64) for x in (k, v))
    order = np.asarray(out["q_order"])
    work = out["work"]
    # output gather: token order[n, p] takes slot q_slot[n, p]
    want = np.zeros((n, s, d), np.float32)
    for i in range(n):
        want[i, order[i]] = np.asarray(slots, np.float32)[np.asarray(work.q_slot)[i]]
    got = np.asarray(rearrange(out["out"], "b s h d -> (b h) s d"), np.float32)
    np.testing.assert_array_equal(got, want)
    # every query cluster keeps some key cluster; the key and value layouts hold the
    # tokens, permuted (their rows sum to the tokens' sum)
    selected = out["selected"].selected
    assert selected.shape == (n, 8, 32) and bool(selected.any(-1).all())
    kept_k = np.asarray(out["k_layout"], np.float64)[:, :s].sum(1)
    np.testing.assert_allclose(kept_k, kn.sum(1), rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(np.asarray(out["v_layout"], np.float64)[:, :s].sum(1),
                               vn.sum(1), rtol=1e-3, atol=1e-2)
