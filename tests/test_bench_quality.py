"""The quality benchmark on a tiny problem: structural facts its numbers must satisfy."""

import math

import numpy as np
import pytest

pytest.importorskip("skimage")

from scripts import bench_quality  # noqa: E402
from scripts.quality import benchmark, flops, inputs, selectors, targets  # noqa: E402
from svg2_jax import SVG2Config  # noqa: E402

FOLLOW = [s for s in selectors.SELECTORS if s.sweep is None]
SWEPT = sum(len(s.sweep.values) for s in selectors.SELECTORS if s.sweep is not None)


@pytest.fixture(scope="module")
def tiny():
    # 3 frames of 64x96 px, 8x8-px tokens -> 3 x 8 x 12 = 288 tokens, 2 heads.
    q, k, v, meta = inputs.build_qkv(("astronaut",), frames=3, height=64, width=96, heads=2,
                                 patch=8, pool=4, pan_px=4, seed=0)
    res = benchmark.run_quality(q, k, v, top_ps=(0.5, 0.9, 1.0), min_kc_ratio=0.1,
                         extra_settings=((1.0, 1.0), (0.9, 0.0)), num_q_clusters=6,
                         num_k_clusters=16, kmeans_iters=10, block=32, tile=64,
                         api_check=((0.9, 0.1),), token_stride=1,
                         verbose=False)
    return q, k, v, meta, res


def _every_other_key_block(problem, setting, density):
    """A test selector: fixed blocks, every other key block for every query block."""
    s = problem.qn.shape[1]
    labels = np.broadcast_to((np.arange(s) // problem.block).astype(np.int32),
                             problem.qn.shape[:2])
    nb = -(-s // problem.block)
    sel = np.zeros((problem.qn.shape[0], nb, nb), bool)
    sel[:, :, ::2] = True
    return selectors.Selection(labels, labels, sel)


def row(res, method, top_p, ratio):
    return next(r for r in res["rows"] if r["method"].startswith(method)
                and r["top_p"] == top_p and r["min_kc_ratio"] == ratio)


def test_inputs_shapes_and_grid(tiny):
    q, k, v, meta, _ = tiny
    assert meta["grid"] == [3, 8, 12] and meta["S"] == 288
    for x in (q, k, v):
        assert x.shape == (1, 288, 2, 128) and str(x.dtype) == "float32"
        assert np.isfinite(np.asarray(x)).all()


def test_ranges_and_api_agreement(tiny):
    *_, res = tiny
    assert len(res["rows"]) == len(FOLLOW) * 5 + SWEPT
    for r in res["rows"]:
        for d in r["density_per_head"]:
            assert 0.0 <= d <= 1.0 + 1e-9, r
            assert d > 0 or r["param"] == "error_tolerance", r  # a tolerance may drop all
        for rc in r["recall_per_head"]:
            assert -1e-6 <= rc <= 1.0 + 1e-5, r
        for e in r["rel_error_per_head"]:
            assert math.isfinite(e) and e >= 0.0, r
        assert 0.0 <= r["top1_kept"] <= 1.0 and -1e-6 <= r["recall_p10"] <= 1.0 + 1e-5, r
        assert r["empty_queries"] >= 0
    # svg2_attention itself reproduces the densities and errors of every method the library
    # provides: SVG2 (with and without compensation) at top_p 0.9, and the swept ones at
    # their main value (the error-aware rule at the default tolerance among them).
    checked = {(c["method"], c["setting"]) for c in res["api_checks"]}
    tol = SVG2Config().error_tolerance
    assert checked == {("SVG2", "top_p=0.9, min_kc=0.1"),
                       ("SVG2 + compensation", "top_p=0.9, min_kc=0.1"),
                       (selectors.DEFAULT_METHOD, f"error_tolerance={tol:g}"),
                       (selectors.DEFAULT_METHOD + ", no own key", f"error_tolerance={tol:g}"),
                       ("error-aware (tolerance, one pool per layer) + compensation",
                        f"error_tolerance={tol:g}"),
                       ("error-aware (budget) + compensation",
                        f"target_density={selectors.DENSITIES.main:g}")}
    for c in res["api_checks"]:
        assert c["max_density_diff"] < 1e-6, c
        assert c["max_rel_error_diff"] < 1e-4, c
    a = res["attention"]
    assert 0.0 < a["entropy"] < a["uniform_entropy"]
    assert 0.0 < a["max_prob"] <= 1.0 and 0.0 < a["token_density_90"] <= 1.0
    assert 0.0 <= a["self_top1"] <= 1.0


def test_everything_selected_is_exact(tiny):
    *_, res = tiny
    for method in ("SVG2", "SVG2 + compensation", "oracle", "block top-k", "block oracle"):
        r = row(res, method, 1.0, 1.0)
        assert abs(r["density"] - 1.0) < 1e-9, r
        assert r["rel_error"] < 1e-5, r
        assert abs(r["recall"] - 1.0) < 1e-5, r


def test_svg2_is_monotone_in_top_p(tiny):
    # Raising top_p keeps a superset of blocks: density and recall cannot drop.
    *_, res = tiny
    rows = [row(res, "SVG2", p, 0.1) for p in (0.5, 0.9, 1.0)]
    for lo, hi in zip(rows, rows[1:]):
        for a, b in zip(lo["density_per_head"], hi["density_per_head"]):
            assert b >= a - 1e-9
        for a, b in zip(lo["recall_per_head"], hi["recall_per_head"]):
            assert b >= a - 1e-5
    # and the floor min_kc_ratio=0.1 can only add blocks to min_kc_ratio=0
    assert row(res, "SVG2", 0.9, 0.1)["density"] >= row(res, "SVG2", 0.9, 0.0)["density"] - 1e-9


def test_compensation_rows(tiny):
    """Compensation changes no pair that is computed (same density and recall as SVG2) and
    lowers the error here; the tolerance sweep trades density for error monotonically."""
    *_, res = tiny
    for p in (0.5, 0.9):
        plain, comp = row(res, "SVG2", p, 0.1), row(res, "SVG2 + compensation", p, 0.1)
        assert comp["method"] == "SVG2 + compensation"
        assert comp["density_per_head"] == plain["density_per_head"]
        np.testing.assert_allclose(comp["recall_per_head"], plain["recall_per_head"])
        assert comp["rel_error"] < plain["rel_error"]
    tol = targets.curve(res["rows"], selectors.DEFAULT_METHOD)
    by_tau = sorted(tol, key=lambda r: r["value"])
    dens = [r["density"] for r in by_tau]
    assert dens == sorted(dens, reverse=True) and dens[0] > dens[-1]
    t = targets.evaluate(res)
    assert t["d0"] == row(res, "SVG2", 0.9, 0.1)["density"]
    assert set(t["met"]) == {"density", "error", "p10"}


def test_targets_and_headline_on_hand_made_curves():
    """The reading at the reference point, by hand: SVG2 at d0 0.1 / e0 0.1; the error-aware method's
    curve through (0.01, error 0.2, recall 0.3) and (0.1, 0.02, 0.9), log-log in error,
    linear in log density for recall: it reaches e0 at density 10^-1.699 = 0.02, with
    recall 0.3 + 0.6 x log10(2) there."""
    from scripts.quality import report

    def r(method, density, err, rec, p10, **kw):
        return dict(method=method, density=density, rel_error=err, recall=rec,
                    recall_p10=p10, **kw)
    rows = [r("SVG2", 0.1, 0.1, 0.8, 0.5, top_p=0.9, min_kc_ratio=0.1),
            r("oracle (same clusters)", 0.1, 0.05, 0.95, 0.9, top_p=0.9, min_kc_ratio=0.1),
            r(selectors.DEFAULT_METHOD, 0.01, 0.2, 0.3, 0.0),
            r(selectors.DEFAULT_METHOD, 0.1, 0.02, 0.9, 0.86)]
    t = targets.evaluate(dict(rows=rows))
    assert t["density_at_e0_kind"] == "at"
    assert t["density_at_e0"] == pytest.approx(0.02)
    assert t["recall_at_e0"] == pytest.approx(0.3 + 0.6 * math.log10(2))
    assert t["p10_at_e0"] == pytest.approx(0.86 * math.log10(2))
    assert (t["error_at_d0"], t["recall_at_d0"], t["p10_at_d0"]) == pytest.approx((0.02, 0.9,
                                                                                  0.86))
    assert t["met"] == dict(density=True, error=True, p10=True)
    line = report.headline_markdown([dict(rows=rows, name="hand")]).splitlines()[-1]
    assert line == ("| hand | 0.1000 / 0.1000 / 0.800 / 0.500 | 0.0200 / 0.900 / 0.860 | "
                    f"0.0200 / {0.3 + 0.6 * math.log10(2):.3f} / {0.86 * math.log10(2):.3f} | "
                    "0.0500 / 0.950 / 0.900 |")
    # a curve that starts below e0 only bounds the density; one that never reaches it
    low = targets.evaluate(dict(rows=rows[:2] + [r(selectors.DEFAULT_METHOD, 0.01, 0.05,
                                                   0.3, 0.0)] + rows[3:]))
    assert low["density_at_e0_kind"] == "below" and low["density_at_e0"] == 0.01
    never = targets.evaluate(dict(rows=rows[:2] + [r(selectors.DEFAULT_METHOD, 0.01, 0.5,
                                                     0.3, 0.0)]))
    assert never["density_at_e0_kind"] == "never" and math.isnan(never["recall_at_e0"])


def test_flop_count_at_wan_720p():
    dense, items, variants = flops.cost_items(**flops.WAN_720P)
    assert dense == 4 * 75600 ** 2 * 128 * 40
    aware = dict(variants)[next(n for n, _ in variants if n.startswith("error-aware"))]
    logits = 2 * 75600 * 1000 * 128 * 40  # one [S, D] x [D, KC] matmul per head
    assert 3 * logits < aware < 3.2 * logits  # two logit passes and the value matmul
    assert "| dense attention" in flops.markdown()


def test_oracle_matches_target_density_within_one_block(tiny):
    *_, res = tiny
    s = res["S"]
    # the largest possible block: biggest query cluster x biggest key cluster (or block)
    max_block = max(res["q_cluster_size"][1] * res["k_cluster_size"][1],
                    res["block"] ** 2) / (s * s)
    for r in res["rows"]:
        if "oracle" in r["method"]:
            for got, want in zip(r["density_per_head"], r["target_density_per_head"]):
                assert abs(got - want) <= max_block + 1e-9, (r["setting"], got, want)


def test_oracle_select_is_greedy_by_mass_per_pair():
    # one head, 2 query clusters x 3 key clusters
    mass = np.array([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]])
    qs = np.array([[2, 2]])
    ks = np.array([[1, 1, 2]])  # 4 x 4 = 16 pairs in all
    # mass per pair: [[.25, .15, .05], [.05, .05, .2]]
    sel = selectors.oracle_select(mass, qs, ks, np.array([2 / 16]))
    np.testing.assert_array_equal(sel[0], [[1, 0, 0], [0, 0, 0]])
    sel = selectors.oracle_select(mass, qs, ks, np.array([6 / 16]))  # + the (1, 2) block (4 pairs)
    np.testing.assert_array_equal(sel[0], [[1, 0, 0], [0, 0, 1]])
    sel = selectors.oracle_select(mass, qs, ks, np.array([6.9 / 16]))  # closest: 6, not 8 pairs
    np.testing.assert_array_equal(sel[0], [[1, 0, 0], [0, 0, 1]])
    sel = selectors.oracle_select(mass, qs, ks, np.array([1.0]))
    assert sel.all()


def test_block_topk_select_keeps_k_blocks_per_row():
    rng = np.random.default_rng(0)
    qn = rng.normal(size=(2, 100, 8)).astype(np.float32)
    kn = rng.normal(size=(2, 100, 8)).astype(np.float32)
    ql, kl, sel = selectors.block_topk_select(qn, kn, 32, np.array([0.5, 0.01]))
    assert sel.shape == (2, 4, 4)
    np.testing.assert_array_equal(sel.sum(-1), [[2] * 4, [1] * 4])  # round(0.5*4), at least 1
    np.testing.assert_array_equal(ql[0], np.arange(100) // 32)
    # the top block of each row has the best pooled score
    qp = np.stack([qn[1, i:i + 32].mean(0) for i in range(0, 100, 32)])
    kp = np.stack([kn[1, i:i + 32].mean(0) for i in range(0, 100, 32)])
    np.testing.assert_array_equal(np.argmax(sel[1], -1), np.argmax(qp @ kp.T, -1))


def test_wan_rope_split_and_relative_positions():
    grid = (3, 4, 5)
    ang = inputs.wan_rope_angles(grid, 128)
    assert ang.shape == (60, 64)
    pos = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, 3)
    # channels [0, 22) rotate with t, [22, 43) with y, [43, 64) with x; freq 1/theta^(2i/dim)
    np.testing.assert_allclose(ang[:, :22], pos[:, :1] * 10000.0 ** (-np.arange(0, 44, 2) / 44))
    np.testing.assert_allclose(ang[:, 22:43], pos[:, 1:2] * 10000.0 ** (-np.arange(0, 42, 2) / 42))
    np.testing.assert_allclose(ang[:, 43:], pos[:, 2:3] * 10000.0 ** (-np.arange(0, 42, 2) / 42))
    # consecutive (even, odd) pairs rotate as complex numbers
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 1, 128)).astype(np.float32)
    y = inputs.apply_rope(x, ang)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * ang)[:, None]
    np.testing.assert_allclose(y[..., 0::2], z.real, atol=1e-5)
    np.testing.assert_allclose(y[..., 1::2], z.imag, atol=1e-5)
    # q.k after RoPE depends only on the relative position
    a = rng.normal(size=(1, 1, 128))
    b = rng.normal(size=(1, 1, 128))
    idx = {tuple(p): i for i, p in enumerate(pos)}
    def dot(pa, pb):
        return float(np.sum(inputs.apply_rope(a, ang[[idx[pa]]]) * inputs.apply_rope(b, ang[[idx[pb]]])))
    assert dot((0, 1, 2), (1, 0, 0)) == pytest.approx(dot((1, 3, 4), (2, 2, 2)), rel=1e-4)


def test_a_new_selector_is_one_row(tiny):
    q, k, v, _, res = tiny
    extra = selectors.Selector("every other block ({block})", _every_other_key_block)
    got = benchmark.run_quality(q, k, v, top_ps=(0.9,), min_kc_ratio=0.1, extra_settings=(),
                                num_q_clusters=6, num_k_clusters=16, kmeans_iters=10,
                                block=32, tile=64, api_check="none", token_stride=1,
                                selectors=selectors.SELECTORS + (extra,), verbose=False)
    rows = {r["method"]: r for r in got["rows"] if r["top_p"] is not None}
    assert list(rows) == [s.name.format(block=32) for s in FOLLOW] + ["every other block (32)"]
    new = rows["every other block (32)"]
    # 288 tokens = 9 blocks of 32; keys in blocks 0, 2, 4, 6, 8: 5 x 32 of 288 keys
    np.testing.assert_allclose(new["density_per_head"], 160 / 288)
    np.testing.assert_allclose(new["target_density_per_head"], rows["SVG2"]["density_per_head"],
                               rtol=1e-6)
    # the existing methods' figures do not depend on the table they are in
    for method in ("SVG2", "SVG2 + compensation", "oracle (same clusters)", "block top-k (32)",
                   "block oracle (32)"):
        assert rows[method]["rel_error_per_head"] == next(
            r for r in res["rows"] if r["method"] == method and r["top_p"] == 0.9
            and r["min_kc_ratio"] == 0.1)["rel_error_per_head"]


def test_kernel_tile_rows_count_used_and_computed_pairs(tiny):
    q, k, v, _, res = tiny
    got = benchmark.run_quality(q, k, v, top_ps=(0.9,), min_kc_ratio=0.1, extra_settings=(),
                                num_q_clusters=6, num_k_clusters=16, kmeans_iters=10,
                                block=32, tile=64, api_check="none", token_stride=1,
                                selectors=selectors.SELECTORS[:1]
                                + tuple(selectors.KERNEL_TILE_SELECTORS.values()),
                                verbose=False)
    rows = {r["method"]: r for r in got["rows"]}
    svg2, clusters, spanning = (rows[m] for m in ("SVG2", "kernel tiles: clusters",
                                                  "kernel tiles: spanning"))
    # Cluster tiles use exactly SVG2's pairs; spanning tiles a superset (more recall).
    for key in ("density_per_head", "rel_error_per_head", "recall_per_head"):
        assert clusters[key] == svg2[key]
    assert np.all(np.array(spanning["density_per_head"]) >= svg2["density_per_head"])
    assert np.all(np.array(spanning["recall_per_head"]) >= np.array(svg2["recall_per_head"])
                  - 1e-6)
    for r in (clusters, spanning):
        assert np.all(np.array(r["computed_density_per_head"]) >= r["density_per_head"])
    assert "computed_density" not in svg2
    # The spanning rows' pairs, brute force: SVG2's clusters and selection, tokens in
    # cluster order cut into 128-row CTAs, each CTA's rows over the union of its clusters.
    from scripts.quality.clustering import svg2_clusters
    from svg2_jax import SVG2Config
    import jax
    cfg = SVG2Config(num_q_clusters=6, num_k_clusters=16, kmeans_iters_cold=10, backend="jax",
                     kmeans_impl="xla")
    qk, kk = svg2_clusters(q, k, cfg, jax.random.PRNGKey(0))
    sel, _ = selectors.svg2_select(qk, kk, 0.9, cfg.min_k_clusters)
    ql, kl, sel = np.asarray(qk.labels), np.asarray(kk.labels), np.asarray(sel)
    s = ql.shape[1]
    for n in range(ql.shape[0]):
        pos_label = np.sort(ql[n], kind="stable")
        pairs = 0
        for lo in range(0, s, 128):
            part = pos_label[lo:lo + 128]
            union = sel[n, sorted(set(part.tolist()))].any(axis=0)
            pairs += len(part) * int(union[kl[n]].sum())
        assert spanning["density_per_head"][n] == pytest.approx(pairs / s ** 2, rel=1e-9)


def test_cli_writes_every_figure(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    res = bench_quality.run_cli(["--images", "astronaut", "--frames", "3", "--height", "64",
                                 "--width", "96", "--heads", "2", "--patch", "8", "--qc", "6",
                                 "--kc", "16", "--kmeans-iters", "10", "--block", "32",
                                 "--tile", "64", "--top-p", "0.5,0.9", "--api-check", "none",
                                 "--query-tiles", "spanning",
                                 "--json", str(out), "--plot", str(png)])
    data = __import__("json").loads(out.read_text())
    (run,) = data["runs"]
    assert run["name"] == "quick" and list(res) == ["quick"]
    assert run["inputs"]["S"] == 288 and (run["QC"], run["KC"]) == (6, 16)
    assert run["rows"] == res["quick"]["rows"]
    assert len(run["rows"]) == len(FOLLOW) * 3 + SWEPT + 3  # + the spanning tiles' rows
    assert sum(r["method"] == "kernel tiles: spanning" for r in run["rows"]) == 3
    with pytest.raises(SystemExit):
        bench_quality.run_cli(["--query-tiles", "rows"])
    assert png.exists() and png.stat().st_size > 0
