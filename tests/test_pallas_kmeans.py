"""The Pallas k-means assignment kernel (`pallas_kernels`) against their pure-JAX references and
against independent numpy written here. CPU tests run the kernel in interpret mode on
small shapes; `gpu` tests compile it with Triton at a realistic size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import AssignTuningConfig, kmeans_assign, kmeans_assign_reference

gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")

SMALL_ASSIGN = AssignTuningConfig(block_s=32, block_k=16)


# ---------------------------------------------------------------- numpy oracles


def np_sqdist(x, c):
    """Full squared distances in float64. x: [N, S, D], c: [N, K, D] -> [N, S, K]."""
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    return ((x[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)


def blobs(seed, n, s, k, d, noise=0.3):
    """Tokens around k random centers, every center used when s >= k.
    -> (x [N, S, D] float32, centroids [N, K, D] float32): the centroids are the
    centers jittered, so the nearest one is clear but not trivially exact."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n, k, d))
    member = rng.integers(0, k, size=(n, s))
    if s >= k:
        member[:, :k] = rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1)
    x = np.take_along_axis(centers, member[..., None], axis=1) + noise * rng.normal(size=(n, s, d))
    c = centers + 0.05 * rng.normal(size=centers.shape)
    return x.astype(np.float32), c.astype(np.float32)


def top2_gap(dist):
    """Gap between the two smallest distances per row (inf when K == 1)."""
    if dist.shape[-1] == 1:
        return np.full(dist.shape[:-1], np.inf)
    part = np.partition(dist, 1, axis=-1)
    return part[..., 1] - part[..., 0]


# ---------------------------------------------------------------- assign, CPU


@pytest.mark.parametrize(
    "n,s,k,d,config",
    [
        (3, 300, 70, 64, None),  # ragged S and K against the default blocks
        (3, 257, 1, 128, None),  # a single cluster
        (2, 100, 37, 128, SMALL_ASSIGN),  # several K tiles, last one ragged
        (1, 50, 20, 48, SMALL_ASSIGN),  # D not a power of two: padded
    ],
)
def test_assign_float32_matches_numpy(n, s, k, d, config):
    x, c = blobs(1000 + s + k + d, n, s, k, d)
    dist = np_sqdist(x, c)
    # Precondition: no near-ties, so float32 rounding cannot flip an argmin.
    assert (top2_gap(dist) > 1e-3 * dist.mean()).all()
    expect = dist.argmin(-1)

    got = np.asarray(kmeans_assign(jnp.asarray(x), jnp.asarray(c), config=config, interpret=True))
    assert got.dtype == np.int32 and got.shape == (n, s)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(np.asarray(kmeans_assign_reference(jnp.asarray(x), jnp.asarray(c))),
                                  expect)
    if s >= k:
        assert all(len(np.unique(got[b])) == k for b in range(n))


def test_assign_ties_go_to_the_smallest_index():
    # Small integers: every dot product and norm is exact, so duplicated centroids
    # tie exactly, within a K tile (2 and 5) and across tiles (3 and 40, block_k=16).
    rng = np.random.default_rng(7)
    n, s, k, d = 2, 90, 45, 32
    c = rng.integers(-3, 4, size=(n, k, d)).astype(np.float32)
    c[:, 5] = c[:, 2]
    c[:, 40] = c[:, 3]
    member = rng.choice([2, 3, 5, 40], size=(n, s))
    x = np.take_along_axis(c, member[..., None], axis=1)
    got = np.asarray(kmeans_assign(jnp.asarray(x), jnp.asarray(c), config=SMALL_ASSIGN,
                                   interpret=True))
    expect = np.where(member == 5, 2, np.where(member == 40, 3, member))
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(got, np_sqdist(x, c).argmin(-1))  # numpy: first minimum


def test_assign_padded_centroids_never_win():
    # Far centroids make every real ||c||^2 - 2 x.c positive, so a padded (zero)
    # centroid would win unless its norm is +inf. K = 20 pads to 32.
    rng = np.random.default_rng(13)
    n, s, k, d = 2, 60, 20, 64
    x = rng.normal(size=(n, s, d)).astype(np.float32)
    c = (10.0 + rng.normal(size=(n, k, d))).astype(np.float32)
    dist = np_sqdist(x, c)
    assert (top2_gap(dist) > 1e-3).all()
    got = np.asarray(kmeans_assign(jnp.asarray(x), jnp.asarray(c), interpret=True))
    np.testing.assert_array_equal(got, dist.argmin(-1))


@pytest.mark.parametrize("x_dtype,c_dtype", [(jnp.bfloat16, jnp.float32), (jnp.float16, jnp.bfloat16),
                                             (jnp.float32, jnp.float16)])
def test_assign_low_precision_matches_reference(x_dtype, c_dtype):
    n, s, k, d = 3, 200, 50, 64
    x, c = blobs(77, n, s, k, d, noise=0.6)
    xj, cj = jnp.asarray(x, x_dtype), jnp.asarray(c, c_dtype)
    got = np.asarray(kmeans_assign(xj, cj, config=SMALL_ASSIGN, interpret=True))
    ref = np.asarray(kmeans_assign_reference(xj, cj))
    # Oracle for the documented formula: operands rounded to x's dtype, ||c||^2 from c.
    x64 = np.asarray(xj.astype(jnp.float32), np.float64)
    c_norm = (np.asarray(cj.astype(jnp.float32), np.float64) ** 2).sum(-1)
    c_dot = np.asarray(cj.astype(x_dtype).astype(jnp.float32), np.float64)
    dist = c_norm[:, None, :] - 2.0 * np.einsum("nsd,nkd->nsk", x64, c_dot)
    chosen = np.take_along_axis(dist, got[..., None], -1)[..., 0]
    # Any difference from the reference must be a near-tie.
    tol = 1e-4 * np.abs(dist).max()
    assert (chosen <= dist.min(-1) + tol).all()
    assert (got == ref).mean() >= 0.99
    np.testing.assert_array_equal(got[top2_gap(dist) > tol], dist.argmin(-1)[top2_gap(dist) > tol])


# ---------------------------------------------------------------- input checks


def _f32(*shape):
    return jnp.zeros(shape, jnp.float32)


@pytest.mark.parametrize(
    "x,c,match",
    [
        (_f32(4, 64), _f32(2, 3, 64), "expects x"),
        (_f32(2, 4, 64), _f32(3, 64), "expects x"),
        (jnp.zeros((2, 4, 64), jnp.int32), _f32(2, 3, 64), "x must be float16"),
        (_f32(2, 4, 64), jnp.zeros((2, 3, 64), jnp.int32), "centroids must be a float"),
        (_f32(2, 4, 64), _f32(3, 3, 64), "disagree on N or D"),
        (_f32(2, 4, 64), _f32(2, 3, 32), "disagree on N or D"),
        (_f32(2, 4, 64), _f32(2, 0, 64), "K >= 1"),
        (_f32(2, 0, 64), _f32(2, 3, 64), "S >= 1"),
        (_f32(2, 4, 40), _f32(2, 3, 40), "multiple of 16"),
        (_f32(2, 4, 512), _f32(2, 3, 512), "at most 256"),
    ],
)
def test_assign_rejects_bad_inputs(x, c, match):
    with pytest.raises(ValueError, match=match):
        kmeans_assign(x, c, interpret=True)


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (AssignTuningConfig, dict(block_s=100), "block_s must be a power of two"),
        (AssignTuningConfig, dict(block_k=8), "block_k must be a power of two >= 16"),
        (AssignTuningConfig, dict(num_warps=3), "num_warps"),
        (AssignTuningConfig, dict(num_stages=0), "num_stages"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


# ---------------------------------------------------------------- GPU (Triton)


def _distances(x, c):
    """Reference distances [N, S, K] float32, same formula as the kernels."""
    c32 = c.astype(jnp.float32)
    dots = jnp.einsum("nsd,nkd->nsk", x, c.astype(x.dtype), preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(c32 * c32, -1)[:, None, :] - 2.0 * dots


def _check_assign_close(x, c, got, ref):
    got, ref = np.asarray(got), np.asarray(ref)
    assert (got == ref).mean() >= 0.999
    dist = _distances(x, c)
    d_got = np.asarray(jnp.take_along_axis(dist, jnp.asarray(got)[..., None], -1)[..., 0])
    d_ref = np.asarray(jnp.take_along_axis(dist, jnp.asarray(ref)[..., None], -1)[..., 0])
    # Where the labels differ the two choices are equally near, up to accumulation order.
    np.testing.assert_allclose(d_got, d_ref, rtol=1e-5, atol=1e-3)


@gpu
@needs_gpu
def test_gpu_assign_realistic():
    key_x, key_c = jax.random.split(jax.random.key(0))
    n, s, k, d = 4, 8192, 1000, 128
    x = jax.random.normal(key_x, (n, s, d), jnp.bfloat16)
    c = jax.random.normal(key_c, (n, k, d), jnp.float32)
    got = kmeans_assign(x, c)
    _check_assign_close(x, c, got, kmeans_assign_reference(x, c))
    assert got.shape == (n, s) and got.dtype == jnp.int32


@gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("n,s,k,d", [(3, 5000, 333, 64), (2, 1000, 70, 96)])
@pytest.mark.parametrize("big", [False, True])
def test_gpu_ragged(n, s, k, d, dtype, big):
    a_cfg = AssignTuningConfig(block_s=64, block_k=128, num_warps=8, num_stages=3) if big else None
    key_x, key_c = jax.random.split(jax.random.key(s + k + d))
    x = jax.random.normal(key_x, (n, s, d), dtype)
    c = jax.random.normal(key_c, (n, k, d), jnp.float32)
    labels = kmeans_assign(x, c, config=a_cfg)
    _check_assign_close(x, c, labels, kmeans_assign_reference(x, c))


@gpu
@needs_gpu
def test_gpu_svg2_attention_with_the_fused_kernel_matches_xla_kmeans():
    from svg2_jax import SVG2Config, svg2_attention

    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kx, (1, 4096, 4, 128), jnp.bfloat16) for kx in (kq, kk, kv))
    outs = {}
    for impl in ("xla", "pallas"):
        cfg = SVG2Config(num_q_clusters=32, num_k_clusters=128, kmeans_impl=impl)
        out, cache, stats = svg2_attention(q, k, v, None, cfg, jax.random.key(0))
        out, cache, stats = svg2_attention(q, k, v, cache, cfg)
        outs[impl] = (np.asarray(out, np.float32), np.asarray(stats.density))
    # bf16 near-ties may flip a few labels; the result must stay essentially the same.
    np.testing.assert_allclose(outs["pallas"][1], outs["xla"][1], atol=0.02)
    err = np.linalg.norm(outs["pallas"][0] - outs["xla"][0]) / np.linalg.norm(outs["xla"][0])
    assert err < 0.05
