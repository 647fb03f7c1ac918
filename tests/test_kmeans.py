import jax
import jax.numpy as jnp
import numpy as np
import pytest

import npref
from svg2_jax import kmeans as km


def blobs(seed, n=3, s=240, d=16, k=5, noise=0.15):
    """Well separated clusters, so float32 and float64 agree on every assignment."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n, k, d)) * 3.0
    member = rng.integers(0, k, size=(n, s))
    x = np.take_along_axis(centers, member[..., None], axis=1) + noise * rng.normal(size=(n, s, d))
    return x.astype(np.float32), centers


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_matches_numpy_from_same_init(iters):
    x, _ = blobs(iters)
    rng = np.random.default_rng(100 + iters)
    c0 = x[:, rng.choice(x.shape[1], 7, replace=False)]  # 7 clusters on 5 blobs: splits happen
    res = km.kmeans(jnp.asarray(x), jnp.asarray(c0), num_iters=iters, tol=1e-4)
    labels, cents, sizes, it = npref.kmeans(x, c0, iters, 1e-4)
    np.testing.assert_array_equal(np.asarray(res.labels), labels)
    np.testing.assert_array_equal(np.asarray(res.sizes), sizes)
    np.testing.assert_allclose(np.asarray(res.centroids), cents, rtol=1e-5, atol=1e-5)
    assert int(res.iterations) == it
    np.testing.assert_array_equal(np.asarray(res.sizes).sum(-1), x.shape[1])


def test_early_stop_returns_centroids_of_the_last_assignment():
    x, centers = blobs(7, noise=0.01)
    c0 = centers.astype(np.float32) + 0.05
    res = km.kmeans(jnp.asarray(x), jnp.asarray(c0), num_iters=50, tol=1e-4)
    labels, cents, sizes, it = npref.kmeans(x, c0, 50, 1e-4)
    assert it < 50 and int(res.iterations) == it
    np.testing.assert_array_equal(np.asarray(res.labels), labels)
    np.testing.assert_allclose(np.asarray(res.centroids), cents, rtol=1e-5, atol=1e-5)
    assert float(res.shift) < 1e-4


def test_empty_cluster_keeps_its_centroid_and_reports_size_zero():
    x, _ = blobs(3, k=3)
    rng = np.random.default_rng(3)
    c0 = x[:, rng.choice(x.shape[1], 4, replace=False)].copy()
    c0[:, 2] = 1000.0  # nothing is near it
    res = km.kmeans(jnp.asarray(x), jnp.asarray(c0), num_iters=4, tol=0.0)
    labels, cents, sizes, _ = npref.kmeans(x, c0, 4, 0.0)
    assert (np.asarray(res.sizes)[:, 2] == 0).all() and (sizes[:, 2] == 0).all()
    np.testing.assert_array_equal(np.asarray(res.centroids)[:, 2], c0[:, 2])
    assert not (np.asarray(res.labels) == 2).any()
    np.testing.assert_array_equal(np.asarray(res.labels), labels)


def test_chunked_assignment_equals_unchunked():
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(2, 1000, 32)).astype(np.float32))
    c = jnp.asarray(rng.normal(size=(2, 37, 32)).astype(np.float32))
    whole = km.assign_xla(x, c, chunk=4096)
    chunked = km.assign_xla(x, c, chunk=128)  # 1000 is not a multiple: exercises the padding
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(chunked))
    d = ((np.asarray(x)[:, :, None] - np.asarray(c)[:, None]) ** 2).sum(-1)
    srt = np.sort(d, -1)
    clear = (srt[..., 1] - srt[..., 0]) > 1e-3 * srt[..., 1]
    np.testing.assert_array_equal(np.asarray(whole)[clear], d.argmin(-1)[clear])


def test_random_init_picks_distinct_token_rows():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 50, 8)).astype(np.float32))
    c = np.asarray(km.random_init(jax.random.PRNGKey(5), x, 50))
    for b in range(3):
        rows = {tuple(r) for r in np.asarray(x[b])}
        picked = {tuple(r) for r in c[b]}
        assert picked == rows  # 50 of 50: every row exactly once
    with pytest.raises(ValueError, match="distinct rows"):
        km.random_init(jax.random.PRNGKey(0), x, 51)


def test_bad_arguments():
    x = jnp.zeros((2, 10, 4))
    with pytest.raises(ValueError, match="disagree"):
        km.kmeans(x, jnp.zeros((2, 3, 5)), num_iters=1)
    with pytest.raises(ValueError, match="num_iters"):
        km.kmeans(x, jnp.zeros((2, 3, 4)), num_iters=0)
    with pytest.raises(ValueError, match=r"\[N, S, D\]"):
        km.kmeans(x[0], jnp.zeros((3, 4)), num_iters=1)
    with pytest.raises(ValueError, match="implementation"):
        km.kmeans(x, jnp.zeros((2, 3, 4)), num_iters=1, impl="cuvs")
