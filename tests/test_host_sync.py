"""No call syncs with the host (README): the compiled attention calls and the compiled
sampler loop contain no host callback or transfer, warm calls no data-dependent loop
(which a GPU runs by reading its predicate back every iteration), and they run with
implicit transfers disallowed."""

import jax
import jax.numpy as jnp
import numpy as np

from hlo_inspect import host_transfers, unbounded_loops
from test_attention import clustered_qkv
from test_sampling_loop import B, H, D, L, inputs, toy_model

from svg2_jax import SVG2Config, svg2_attention, svg2_kmeans
from svg2_jax.joint_attention import svg2_joint_attention
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sampling import FlowUniPC, SamplerConfig, make_sampler

# the error-aware rule (SVG2Config.error_aware(): key statistics, error estimate,
# compensation pass) and the reference rule
CFG = SVG2Config.error_aware(num_q_clusters=6, num_k_clusters=12, error_tolerance=0.05,
                             kmeans_iters_cold=5, backend="jax")
REFERENCE = SVG2Config.reference(num_q_clusters=6, num_k_clusters=12, top_p=0.6,
                                 kmeans_iters_cold=5, backend="jax")
LAYER_POOL = SVG2Config.error_aware(num_q_clusters=6, num_k_clusters=12, target_density=0.3,
                                    error_pool="layer", backend="jax")


def run_guarded(fn, *args):
    """fn (jitted, array arguments only) compiled ahead of time: its HLO text and its
    outputs from a call made with implicit host <-> device transfers disallowed (every
    input is already on the device)."""
    args = jax.device_put(args)
    compiled = fn.lower(*args).compile()
    with jax.transfer_guard("disallow"):
        out = jax.block_until_ready(compiled(*args))
    return compiled.as_text(), out


def test_the_detectors_see_a_callback_and_a_data_dependent_loop():
    @jax.jit
    def f(x):
        jax.debug.callback(lambda a: None, x)
        return jax.lax.while_loop(lambda c: c < x.sum(), lambda c: c + 1.0, 0.0)

    hlo = f.lower(jnp.ones(3)).compile().as_text()
    assert host_transfers(hlo) and unbounded_loops(hlo)
    fixed = jax.jit(lambda x: jax.lax.fori_loop(0, 3, lambda i, c: c * x, x))
    assert not unbounded_loops(fixed.lower(jnp.ones(3)).compile().as_text())


def test_attention_calls_have_no_host_transfer_and_warm_ones_no_data_dependent_loop():
    q, k, v, cache = clustered_qkv(0)
    key = jax.random.PRNGKey(1)
    text = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 2, 32)), jnp.float32)
    joint = [jnp.concatenate([x, text], axis=1) for x in (q, k, v)]
    calls = {
        "warm": (lambda q, k, v, c: svg2_attention(q, k, v, c, CFG), (q, k, v, cache)),
        "warm_reference": (lambda q, k, v, c: svg2_attention(q, k, v, c, REFERENCE),
                           (q, k, v, cache)),
        "warm_layer_pool": (lambda q, k, v, c: svg2_attention(q, k, v, c, LAYER_POOL),
                            (q, k, v, cache)),
        "kmeans_warm": (lambda q, k, c: svg2_kmeans(q, k, c, CFG), (q, k, cache)),
        "joint_warm": (lambda q, k, v, n, c: svg2_joint_attention(q, k, v, n, c, CFG,
                                                                  num_text=10),
                       (*joint, jnp.array([4, 10]), cache)),
        "cold": (lambda q, k, v, key: svg2_attention(q, k, v, None, CFG, key), (q, k, v, key)),
        "kmeans_cold": (lambda q, k, key: svg2_kmeans(q, k, None, CFG, key), (q, k, key)),
    }
    for name, (fn, args) in calls.items():
        hlo, _ = run_guarded(jax.jit(fn), *args)
        assert host_transfers(hlo) == [], name
        if "warm" in name:  # the cold k-means stops early in a while loop, by design
            assert unbounded_loops(hlo) == [], name


def test_compiled_sampler_loop_has_no_host_transfer():
    attention = SVG2Attention(SVG2Config(num_q_clusters=4, num_k_clusters=8, top_p=0.6,
                                         kmeans_iters_cold=4), dense_layers=(0,))
    def sampler(attention, progress):
        cfg = SamplerConfig(num_steps=4, guidance_scale=3.0, dense_fraction=0.25,
                            kmeans_during_warmup=True, progress=progress)
        return make_sampler(toy_model(attention), attention, FlowUniPC(flow_shift=3.0), cfg)

    hlo, res = run_guarded(sampler(attention, False), None, *inputs(),
                           attention.init_state(L, B, H, D))
    assert host_transfers(hlo) == []
    assert np.isfinite(np.asarray(res.latents)).all()
    # the progress bar is the loop's one host callback, only when asked for (an ordered
    # effect: its token is a host transfer per call, so it is not run guarded here)
    dense = sampler(DenseAttention(), True).lower(None, *inputs(), None).compile()
    assert len(host_transfers(dense.as_text())) == 1
