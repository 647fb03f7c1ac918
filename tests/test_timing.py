"""The benchmarks' timing helper: every output is computed, kept and summarised."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scripts.timing import summarize, time_calls, time_jax


def _inputs(n=768):
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)


def test_every_output_is_returned_and_summarised():
    a, b = _inputs(64)
    timing, out = time_jax(lambda a, b: (a @ b, {"s": jnp.sin(a) @ b, "n": jnp.int32(3)}),
                           a, b, reps=2, warmup=1)
    want = (np.abs(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).sum()
            + np.abs(np.sin(np.asarray(a, np.float64)) @ np.asarray(b, np.float64)).sum() + 3)
    assert timing.outputs["leaves"] == 3
    assert timing.outputs["elements"] == 2 * 64 * 64 + 1
    assert timing.outputs["nonfinite"] == 0
    np.testing.assert_allclose(timing.outputs["checksum"], want, rtol=1e-4)
    assert len(timing.times_ms) == 2 and timing.median_ms > 0
    assert 0 < timing.compile_s < timing.first_s


def test_consumed_work_is_timed_not_skipped():
    """What a function returns is computed: a chain of matmuls that is an output takes far
    longer than the same chain computed but not returned, which XLA removes (the mistake
    the helper exists to prevent: outputs dropped inside the timed function)."""
    a, b = _inputs()

    def chain(a, b):
        for _ in range(8):
            a = jnp.tanh(a @ b)
        return a

    kept, _ = time_jax(lambda a, b: (chain(a, b), a[0, 0]), a, b, reps=3, warmup=1)
    def dropped_fn(a, b):
        chain(a, b)
        return a[0, 0]

    dropped, _ = time_jax(dropped_fn, a, b, reps=3, warmup=1)
    assert kept.outputs["elements"] == 768 * 768 + 1
    assert kept.median_ms > 5 * dropped.median_ms


def test_nonfinite_outputs_are_counted():
    s = summarize({"x": jnp.array([1.0, jnp.nan, jnp.inf]), "m": jnp.array([True, False])})
    assert s["nonfinite"] == 2 and s["checksum"] == 2.0 and s["elements"] == 5


def test_time_calls_back_to_back_and_arguments():
    calls = []
    timing, out = time_calls(lambda: calls.append(1) or len(calls), reps=3, warmup=2,
                             back_to_back=4, sync=lambda x: x)
    assert len(calls) == 2 + 3 * 4 and out == len(calls)
    assert len(timing.times_ms) == 3 and timing.outputs is None
    with pytest.raises(ValueError, match="reps"):
        time_calls(lambda: 0, reps=0)
    with pytest.raises(ValueError, match="warmup"):
        time_calls(lambda: 0, warmup=-1)


def test_time_calls_without_warmup_times_the_first_call():
    """warmup=0: every call is timed (a whole denoising loop runs once); first_s is the
    first repetition."""
    calls = []
    timing, out = time_calls(lambda: calls.append(1) or len(calls), reps=2, warmup=0,
                             back_to_back=3, sync=lambda x: x)
    assert len(calls) == 6 and out == 6
    assert timing.first_s == pytest.approx(timing.times_ms[0] * 3 / 1e3)
