import jax.numpy as jnp
import numpy as np
import pytest

import npref
from svg2_jax.permute import cluster_order, cluster_starts, inverse_order, permute, unpermute
from svg2_jax.selection import block_density, cluster_mass, select_clusters


def test_permutation_makes_clusters_contiguous_and_round_trips_exactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, size=(4, 500)).astype(np.int32)
    labels[1] = 3  # one problem with a single cluster
    x = rng.normal(size=(4, 500, 6)).astype(np.float32)
    order = np.asarray(cluster_order(jnp.asarray(labels)))
    sizes = np.stack([np.bincount(l, minlength=9) for l in labels])
    starts = np.asarray(cluster_starts(jnp.asarray(sizes)))
    for b in range(4):
        assert sorted(order[b].tolist()) == list(range(500))
        for c in range(9):
            run = order[b, starts[b, c]:starts[b, c + 1]]
            # the run holds exactly cluster c's tokens, in their original order (stable)
            np.testing.assert_array_equal(run, np.flatnonzero(labels[b] == c))
    xp = permute(jnp.asarray(x), jnp.asarray(order))
    np.testing.assert_array_equal(np.asarray(xp), np.take_along_axis(x, order[..., None], 1))
    np.testing.assert_array_equal(np.asarray(unpermute(xp, jnp.asarray(order))), x)
    inv = np.asarray(inverse_order(jnp.asarray(order)))
    np.testing.assert_array_equal(np.take_along_axis(order, inv, 1), np.tile(np.arange(500), (4, 1)))


def problem(seed, n=3, nq=7, nk=40, d=16, empty=(3, 17)):
    rng = np.random.default_rng(seed)
    qc = rng.normal(size=(n, nq, d)).astype(np.float32) * 2
    kc = rng.normal(size=(n, nk, d)).astype(np.float32) * 2
    ks = rng.integers(1, 50, size=(n, nk)).astype(np.int32)
    ks[:, list(empty)] = 0
    return qc, kc, ks


@pytest.mark.parametrize("top_p,min_count", [(0.9, 4), (0.5, 0), (0.99, 10), (0.3, 38), (1.0, 0)])
def test_selection_matches_numpy_top_p(top_p, min_count):
    qc, kc, ks = problem(int(top_p * 100) + min_count)
    sel = select_clusters(jnp.asarray(qc), jnp.asarray(kc), jnp.asarray(ks), top_p, min_count)
    got = np.asarray(sel.selected)
    want = npref.select(qc, kc, ks, top_p, min_count)
    np.testing.assert_array_equal(got, want)
    assert not got[:, :, [3, 17]].any()  # empty clusters never selected
    # the floor counts non-empty clusters only: 38 asked, 38 non-empty exist
    assert (got.sum(-1) >= min(min_count, 38)).all()
    # the selection carries the mass it ranked
    np.testing.assert_array_equal(np.asarray(sel.mass), np.asarray(
        cluster_mass(jnp.asarray(qc), jnp.asarray(kc), jnp.asarray(ks))))


def test_mass_is_size_weighted_softmax():
    qc, kc, ks = problem(1)
    mass = np.asarray(cluster_mass(jnp.asarray(qc), jnp.asarray(kc), jnp.asarray(ks)))
    s = np.einsum("nqd,nkd->nqk", qc.astype(np.float64), kc) / 4.0
    w = ks[:, None, :] * np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(mass, w / w.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert (mass[:, :, [3, 17]] == 0).all()


def test_block_density():
    rng = np.random.default_rng(2)
    sel = rng.random((2, 5, 8)) < 0.4
    qs = rng.integers(0, 30, (2, 5))
    ks = rng.integers(0, 30, (2, 8))
    want = np.einsum("nq,nqk,nk->n", qs, sel, ks) / (qs.sum(-1) * ks.sum(-1))
    got = block_density(jnp.asarray(sel), jnp.asarray(qs), jnp.asarray(ks))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_select_by_density_budget():
    import jax.numpy as jnp
    import numpy as np
    from svg2_jax.selection import block_density, cluster_mass, select_by_density
    rng = np.random.default_rng(3)
    qc = jnp.array(rng.standard_normal((2, 5, 16)), jnp.float32)
    kc = jnp.array(rng.standard_normal((2, 40, 16)), jnp.float32)
    ks = jnp.array(rng.integers(0, 30, (2, 40)), jnp.int32).at[:, 3].set(0)
    qs = jnp.full((2, 5), 10, jnp.int32)
    for target in (0.05, 0.2, 0.5, 1.0):
        sel = np.asarray(select_by_density(qc, kc, ks, target, 0).selected)
        assert not sel[:, :, 3].any()                          # empty never selected
        mass = np.asarray(cluster_mass(qc, kc, ks))
        kept = (sel * np.asarray(ks)[:, None, :]).sum(-1) / np.asarray(ks).sum(-1)[:, None]
        assert np.all(kept >= min(target, 1.0) - 1e-6)          # budget reached
        for n in range(2):
            for q in range(5):
                # kept clusters are the heaviest ones; dropping the lightest kept one
                # falls below the budget
                m_kept = mass[n, q][sel[n, q]]
                m_drop = mass[n, q][~sel[n, q] & (np.asarray(ks)[n] > 0)]
                if m_drop.size:
                    assert m_kept.min() >= m_drop.max()
                lightest = np.flatnonzero(sel[n, q])[np.argmin(m_kept)]
                assert kept[n, q] - ks[n, lightest] / np.asarray(ks)[n].sum() < target
        d = float(jnp.mean(block_density(jnp.asarray(sel), qs, ks)))
        assert d >= min(target, 1.0) - 1e-6
    sel = np.asarray(select_by_density(qc, kc, ks, 0.01, 7).selected)
    assert np.all(sel.sum(-1) >= 7)                              # floor
