"""scripts/bench_overhead.py on the CPU: every row runs and is written to the JSON (the
flash-kmeans peer's rows beside ours, or the reason they were skipped), and the timed
"around the kernel" function returns (so computes) every array it builds."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange

from scripts import bench_overhead as bo
from scripts import flash_kmeans_peer
from svg2_jax import SVG2Cache, SVG2Config
from svg2_jax import kmeans as km


def _lloyd_step(x, x_sq, centroids):
    """One squared-L2 k-means iteration in torch, float32, as the package's iteration:
    (new centroids, largest shift, labels); an empty cluster keeps its centroid."""
    import torch
    xf, c = x.float(), centroids.float()
    dist = x_sq.float()[..., None] - 2 * xf @ c.transpose(1, 2) + (c * c).sum(-1)[:, None]
    labels = dist.argmin(-1).to(torch.int32)
    onehot = torch.nn.functional.one_hot(labels.long(), c.shape[1]).float()
    counts = onehot.sum(1)[..., None]
    new = torch.where(counts > 0, onehot.transpose(1, 2) @ xf / counts.clamp_min(1), c)
    return new.to(x.dtype), (new - c).norm(dim=-1).max(), labels


def _lloyd(x, n_clusters, max_iters, tol, init_centroids):
    c = init_centroids
    for it in range(max_iters):
        new, shift, labels = _lloyd_step(x, (x.float() ** 2).sum(-1), c)
        if shift < tol:
            break
        c = new
    return labels, c, it + 1


@pytest.fixture
def stand_in_peer(monkeypatch):
    """flash-kmeans' interface on a plain torch k-means written here (the package is a
    GPU one and not installed on the test machine)."""
    pytest.importorskip("torch")
    peer = flash_kmeans_peer.Peer("triton", "test", _lloyd, _lloyd_step, "cpu", lambda _: None)
    monkeypatch.setattr(flash_kmeans_peer, "load", lambda cpu_fallback=False: (peer, ""))
    return peer


def test_every_row_is_in_the_json(tmp_path, stand_in_peer):
    out = tmp_path / "overhead.json"
    assert bo.main(["--tiny", "--reps", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["backend"] == "cpu" and data["meta"]["impls"] == ["xla"]
    shape = data["shapes"]["tiny"]
    assert (shape["S"], shape["H"], shape["QC"], shape["KC"]) == bo.TINY_SHAPES["tiny"]
    rows = shape["rows"]
    assert len(rows) == 16
    for label, r in rows.items():
        assert r["median_ms"] > 0 and len(r["times_ms"]) >= 1, label
        assert r["outputs"]["nonfinite"] == 0 and r["outputs"]["elements"] > 0, label
    # the peer's rows, beside ours, with every output kept: labels and centroids of Q and K
    s, h, qc, kc = bo.TINY_SHAPES["tiny"]
    for kind in ("cold, 50", "warm, 2"):
        ours = rows[f"k-means {kind} it, Q+K [xla]"]
        peer = rows[f"k-means {kind} it, Q+K [flash-kmeans]"]
        assert peer["outputs"]["leaves"] == 4
        assert peer["outputs"]["elements"] == 2 * h * s + h * (qc + kc) * 128
        assert ours["outputs"]["elements"] > peer["outputs"]["elements"]  # + sizes, shift
    assert shape["flash_kmeans"]["iterations"] == {"cold": [50, 50], "warm": [2, 2]}
    # one assignment from the same (bf16) centroids: the same labels up to near-ties
    assert shape["k_label_agreement_xla_vs_flash_kmeans_one_step"] > 0.99
    assert 0 < shape["k_label_agreement_xla_vs_flash_kmeans_after_cold"] <= 1
    dense = rows["dense attention (XLA)"]["median_ms"]
    one_jit = rows["**warm overhead, one jit [xla]**"]
    assert shape["warm_overhead_ms_xla"] == one_jit["median_ms"]
    assert abs(one_jit["percent_of_dense"] - 100 * one_jit["median_ms"] / dense) < 1e-9
    assert 0.5 < shape["random_input_density_top_p"] <= 1.0
    assert 0.5 < shape["jax_reference_density_top_p"] <= 1.0
    assert shape["dense_tflops"] > 0
    assert data["meta"]["compensation"] is False
    assert not any("compensation" in label for label in rows)


def test_default_files_per_shape_no_jax_reference_and_compensation(tmp_path, monkeypatch,
                                                                    stand_in_peer):
    """Without --json each shape goes to its own file, named by its resolution;
    --no-jax-reference drops the O(S^2) row but keeps the random inputs' density;
    --compensation adds the error-aware rule's extra work (the dry run of the GPU rows, but
    for the pallas backend's whole call, which needs a Hopper GPU)."""
    monkeypatch.setattr(bo, "default_path", lambda name: str(tmp_path / name))
    assert bo.json_name("75600x40") == "overhead_vs_dense_720p.json"
    assert bo.json_name("32760x12") == "overhead_vs_dense_480p.json"
    assert bo.main(["--tiny", "--reps", "1", "--no-jax-reference", "--compensation"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["overhead_vs_dense_tiny.json"]
    data = json.loads((tmp_path / "overhead_vs_dense_tiny.json").read_text())
    assert data["meta"]["jax_reference"] is False and list(data["shapes"]) == ["tiny"]
    shape = data["shapes"]["tiny"]
    assert len(shape["rows"]) == 15 + 5
    assert not any("backend=jax" in label for label in shape["rows"])
    assert "jax_reference_density_top_p" not in shape
    assert 0.5 < shape["random_input_density_top_p"] <= 1.0
    assert data["meta"]["compensation"] is True
    extra = {label: r for label, r in shape["rows"].items()
             if label.startswith(("key cluster stats", "error-aware selection",
                                  "compensation pass", "**stats + error-aware"))}
    assert len(extra) == 5
    for label, r in extra.items():
        assert r["median_ms"] > 0 and r["outputs"]["nonfinite"] == 0, label
    one_jit = extra[f"**stats + error-aware selection + compensation, one jit (density "
                    f"{bo.DENSITY})**"]
    assert shape["compensation_extra_ms"] == one_jit["median_ms"]
    # every array built is an output: key stats (5), selection (3), out, lse, comp_lse
    assert one_jit["outputs"]["leaves"] == 11
    assert 0 < shape["random_input_density_error_aware_fixed_density"] < 0.3
    assert 0 < shape["random_input_density_error_aware_tolerance"] <= 1


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


def test_peer_missing_is_reported_not_dropped(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_kmeans", None)  # import fails
    peer, why = flash_kmeans_peer.load(cpu_fallback=True)
    assert peer is None and "flash-kmeans==0.3.1" in why
    rows = {}
    x = jnp.zeros((1, 8, 4))
    figures = bo.flash_kmeans_rows(rows, "t", x, x, x[:, :2], x[:, :2], {}, 1,
                                   cpu_fallback=True)
    assert rows == {} and figures == {"flash_kmeans_skipped": why}


def test_the_package_fallback_assigns_as_ours():
    """With the package installed: its own torch fallback (the CPU stand-in for its
    Triton kernels) through our timing, its one-step labels against our assignment."""
    pytest.importorskip("flash_kmeans")
    peer, why = flash_kmeans_peer.load(cpu_fallback=True)
    assert peer is not None, why
    n, s, k, d = 2, 300, 7, 16
    x = jax.random.normal(jax.random.PRNGKey(0), (n, s, d), jnp.bfloat16)
    init = km.random_init(jax.random.PRNGKey(1), x, k).astype(jnp.bfloat16)
    t = flash_kmeans_peer.time_peer(peer, x, x, init, init, init, init, cold_iters=3,
                                    warm_iters=2, reps=1, cold_reps=1)
    assert t["iterations"] == {"cold": [3, 3], "warm": [2, 2]}
    for key in ("cold", "warm", "step_k", "step_q"):
        assert t[key].outputs["nonfinite"] == 0 and t[key].median_ms > 0, key
    ours = np.asarray(km.assign_xla(x, init.astype(jnp.float32)))
    assert np.mean(ours == t["step_labels_k"]) > 0.98


def test_peer_failure_is_reported_and_ours_kept(monkeypatch):
    pytest.importorskip("torch")

    def broken(*args, **kwargs):
        raise RuntimeError("triton: out of resources")

    peer = flash_kmeans_peer.Peer("triton", "test", broken, broken, "cpu", lambda _: None)
    monkeypatch.setattr(flash_kmeans_peer, "load", lambda cpu_fallback=False: (peer, ""))
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 8), jnp.bfloat16)
    init = km.random_init(jax.random.PRNGKey(1), x, 4)
    ours = {"xla": (km.kmeans(x, init, 2), km.kmeans(x, init, 2))}
    rows = {"dense": {}}
    figures = bo.flash_kmeans_rows(rows, "t", x, x, init, init, ours, 1, cpu_fallback=True)
    assert figures == {"flash_kmeans_error": "RuntimeError: triton: out of resources"}
    assert rows == {"dense": {}}
    from scripts import headline_figures
    lines = headline_figures.overhead({"shapes": {"t": {"rows": {}, **figures}}})
    assert "| t | flash_kmeans_error: RuntimeError: triton: out of resources | | |" in lines
