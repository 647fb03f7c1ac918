"""Streaming a `Plan` out of its source, one parameter at a time: into numpy buffers
(`iter_leaves`) or straight onto a device (`to_device_tree`). Every tensor is checked as
it is read (`check_weight`): floating point only, and finite."""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import ml_dtypes
import numpy as np

from svg2_jax.checkpoints.keymap import Target, to_ours
from svg2_jax.checkpoints.plan import Plan
from svg2_jax.checkpoints.tensor_source import TensorSource, locate


WEIGHT_DTYPES = tuple(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32,
                                             np.float64))
# exponent bits of the 16-bit floats: all set is Inf or NaN
_EXPONENT = {np.dtype(ml_dtypes.bfloat16): np.uint16(0x7F80), np.dtype(np.float16): np.uint16(0x7C00)}


def all_finite(x: np.ndarray) -> bool:
    """No NaN/Inf in a float array (16-bit floats by their exponent bits: ml_dtypes'
    isfinite is several times slower)."""
    mask = _EXPONENT.get(x.dtype)
    if mask is None:
        return bool(np.isfinite(x).all())
    return x.size == 0 or np.bitwise_and(x.view(np.uint16), mask).max() != mask


def check_weight(value: np.ndarray, key: str, source: TensorSource):
    """Refuses, naming the key and file, a tensor that is not float16/bfloat16/float32/
    float64 (integers are not weights; casting them would hide the mistake) or that holds
    NaN/Inf."""
    if value.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{locate(source, key)}: tensor {key!r} is {value.dtype}; weights must "
                         f"be one of {[d.name for d in WEIGHT_DTYPES]} (refused, not cast)")
    if not all_finite(value):
        bad = int(np.size(value) - np.isfinite(value.astype(np.float32)).sum())
        raise ValueError(f"{locate(source, key)}: tensor {key!r} holds {bad} NaN/Inf values "
                         f"(of {value.size}); refusing non-finite weights")


def iter_leaves(source: TensorSource, plan: Plan, progress: Callable[[str], None] | None = None
                ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield (our path, filled numpy array in the parameter's dtype), one parameter at a
    time. A stacked parameter is filled layer by layer in one preallocated buffer; each
    source tensor is read, checked (`check_weight`), cast into place and dropped.
    `progress(key)` after each read."""
    by_leaf: dict[tuple[str, ...], list[tuple[str, Target]]] = {}
    for key, target in plan.reads.items():
        by_leaf.setdefault(target.path, []).append((key, target))
    for path, (shape, dtype) in plan.leaves.items():
        buf = np.empty(shape, dtype)
        for key, target in by_leaf[path]:
            value = source.read(key)
            check_weight(value, key, source)
            value = to_ours(value, target)
            if target.layer is None:
                buf[...] = value
            else:
                buf[target.layer] = value
            del value
            if progress is not None:
                progress(key)
        yield path, buf
        del buf  # before the next allocation: the consumer may have copied it already


def nest(flat: dict[tuple[str, ...], object]) -> dict:
    """{("a", "b"): x} -> {"a": {"b": x}} (the pure-dict form of an nnx.State)."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return out


def placement(where, path: tuple[str, ...]):
    """Where parameter `path` goes: `where` itself (a device or a sharding for every
    parameter), or where[path] (a dict of per-parameter shardings)."""
    return where[path] if isinstance(where, dict) else where


def place(array: np.ndarray, where) -> jax.Array:
    """A host array onto a device, or onto the shards of a sharding: each device gets
    only its slice (`jax.make_array_from_callback`; works across processes), never a
    full copy first."""
    if isinstance(where, jax.sharding.Sharding):
        return jax.make_array_from_callback(array.shape, where, lambda index: array[index])
    return jax.device_put(array, where)


def to_device_flat(source: TensorSource, plan: Plan, device,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Stream `plan` from `source` onto `device` (a device, a sharding, or a dict
    {our path: sharding}, `placement`): each parameter goes there as soon as it is
    complete, so the host never holds the whole model twice (not jnp.asarray, which
    stages an extra host copy), and a sharded one straight onto its shards (`place`).
    -> {our path: jax array}."""
    flat = {}
    for path, array in iter_leaves(source, plan, progress):
        flat[path] = place(array, placement(device, path))
        del array
    return flat


def to_device_tree(source: TensorSource, plan: Plan, device,
                   progress: Callable[[str], None] | None = None) -> dict:
    """`to_device_flat` as the nested pure dict of device arrays."""
    return nest(to_device_flat(source, plan, device, progress))
