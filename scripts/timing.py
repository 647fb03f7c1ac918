"""The one timing helper every benchmark uses: compiled once, every output kept.

A figure can only be trusted when the timed program computes everything the benchmark
says it does. XLA drops whatever a jitted function does not return, so a benchmark that
slices its outputs inside `jax.jit` times less work than it reports. `time_jax` jits the
function itself, times the compiled program (which returns every output leaf, so nothing
can be dropped), blocks on every leaf, and then summarises every leaf of the last result
(non-finite count and a checksum): the correctness signal stored beside the time.

`time_calls` times any callable with a caller-given synchronisation (torch, whole
samplers); it is the loop `time_jax` uses.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    """first_s: the first call (compilation included when the callable compiles lazily;
    with warmup=0 the first timed repetition);
    times_ms: each timed repetition (one call, or `back_to_back` calls divided by their
    number); median_ms: their median. outputs: `summarize` of the last result (None when
    the caller's outputs are not JAX arrays). compile_s: `time_jax`'s compilation alone
    (also inside first_s)."""

    first_s: float
    times_ms: tuple[float, ...]
    median_ms: float
    outputs: dict | None = None
    compile_s: float | None = None

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


def time_calls(fn: Callable[[], Any], *, reps: int = 10, warmup: int = 2,
               back_to_back: int = 1, sync: Callable[[Any], Any] = jax.block_until_ready
               ) -> tuple[Timing, Any]:
    """Times `fn()`: `warmup` untimed calls (the first one timed as first_s), then `reps`
    repetitions of `back_to_back` calls each, synchronised with `sync` on every result of
    the repetition (one sync per repetition: with back_to_back > 1 the device queue stays
    full, as in a loop of layers). warmup=0 (for runs so long that one is the
    measurement, e.g. a whole compiled denoising loop): no untimed call, and first_s is
    the first repetition's wall time. Returns (Timing, the last result)."""
    if reps < 1 or warmup < 0 or back_to_back < 1:
        raise ValueError(f"time_calls: reps and back_to_back must be >= 1 and warmup >= 0, "
                         f"got {reps}, {back_to_back}, {warmup}")
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        sync(fn())
        if i == 0:
            first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = [fn() for _ in range(back_to_back)]
        sync(outs)
        times.append((time.perf_counter() - t0) * 1e3 / back_to_back)
        out = outs[-1]
        del outs
    if first is None:
        first = times[0] * back_to_back / 1e3
    return Timing(first, tuple(times), statistics.median(times)), out


def time_jax(fn: Callable, *args, reps: int = 10, warmup: int = 2, back_to_back: int = 1,
             static_argnums=()) -> tuple[Timing, Any]:
    """Compiles `fn(*args)` once (jit; compile time is first_s) and times the compiled
    program, which returns every output leaf of `fn`. Returns (Timing with the outputs'
    summary, the last result)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn, static_argnums=static_argnums).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    dynamic = [a for i, a in enumerate(args) if i not in static_argnums]
    timing, out = time_calls(lambda: compiled(*dynamic), reps=reps, warmup=warmup,
                             back_to_back=back_to_back)
    return dataclasses.replace(timing, first_s=compile_s + timing.first_s,
                               outputs=summarize(out), compile_s=compile_s), out


def summarize(tree) -> dict:
    """Every array leaf of `tree` (JAX or numpy arrays, torch tensors), reduced on the
    host: leaves, elements, non-finite elements (floating leaves), and a float64 checksum
    (sum of |x|), so a result that is NaN, empty or all zeros shows in the JSON beside its
    time."""
    leaves = [_on_host(x) for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    nonfinite = 0
    checksum = 0.0
    for x in leaves:
        if jnp.issubdtype(x.dtype, jnp.floating):
            x64 = x.astype(np.float64)
            finite = np.isfinite(x64)
            nonfinite += int(x64.size - finite.sum())
            checksum += float(np.abs(np.where(finite, x64, 0.0)).sum())
        elif x.dtype == np.bool_:
            checksum += float(x.sum())
        else:
            checksum += float(np.abs(x.astype(np.float64)).sum())
    return {"leaves": len(leaves), "elements": int(sum(x.size for x in leaves)),
            "nonfinite": nonfinite, "checksum": checksum}


def _on_host(x) -> np.ndarray:
    """x as a numpy array; a torch tensor (any device, bf16 included, which numpy lacks)
    through float32 when floating, its own integer or bool type otherwise."""
    if hasattr(x, "detach"):  # a torch.Tensor, recognised without importing torch
        x = x.detach()
        return (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)
