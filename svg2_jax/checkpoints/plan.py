"""`make_plan`: a diffusers-named source checked against our state, every problem in one
error, before any tensor is read."""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from svg2_jax.checkpoints.family import ModelFamily
from svg2_jax.checkpoints.keymap import (RenamedSource, Target, check_layout, detect_layout,
                                         expected_keys)
from svg2_jax.checkpoints.tensor_source import TensorSource


@dataclasses.dataclass
class Plan:
    """A validated mapping from source keys to our parameters.

    reads: source key -> Target; leaves: our path -> (shape, dtype) of each parameter
    (stacked); ignored: source entries skipped on purpose (keys diffusers ignores too, and
    the non-state-dict entries of a wrapped torch checkpoint).
    """

    layout: str
    reads: dict[str, Target]
    leaves: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]
    ignored: list[str]


def make_plan(family: ModelFamily, source: TensorSource, layout: str, config,
              abstract_state) -> Plan:
    """Check a diffusers-named source (`layout_view`) against our state; raise ONE
    ValueError listing every missing key, unexpected key and shape mismatch."""
    keys = family.keys
    check_layout(keys, layout)
    expected = expected_keys(keys, config, abstract_state)
    renamed = isinstance(source, RenamedSource)
    origin = source.origin if renamed else (lambda k: k)
    named = (lambda k: f"{k} (from {origin(k)})") if renamed else (lambda k: k)
    reads, ignored, mismatched = {}, list(source.ignored), []
    unexpected = source.foreign + source.duplicates if renamed else []
    present, covered = set(source.keys()), set()
    aliases = dict(keys.aliases)
    for key in source.keys():
        if key in aliases:  # a tied copy: read it only where its canonical key is absent
            if aliases[key] in present:
                ignored.append(f"{key} (tied to {aliases[key]})")
                continue
            canonical = aliases[key]
        else:
            canonical = key
        if canonical not in expected:
            if any(p in key for p in keys.ignored):
                ignored.append(origin(key))
            else:
                unexpected.append(named(key))
            continue
        target, shape = expected[canonical], source.shape(key)
        if shape != target.source_shape:
            mismatched.append(f"{named(key)}: checkpoint {shape}, model expects "
                              f"{target.source_shape}")
        reads[key] = target
        covered.add(canonical)
    missing = sorted(set(expected) - covered)
    if missing or unexpected or mismatched:
        lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
                 f"shape mismatches converting {str(source.path)!r} ({layout} layout) to "
                 f"{family.name} {family.describe_config(config)}"]
        detected = detect_layout(keys, (source.inner if renamed else source).keys())
        if detected not in (None, layout):
            lines.append(f"hint: the keys look like the {detected!r} layout, not {layout!r}")
        for title, items in (("missing keys" + (f" ({keys.canonical_layout} names)"
                                                 if renamed else ""),
                              missing), ("unexpected keys", sorted(unexpected)),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items)
        raise ValueError("\n".join(lines))
    leaves = {tuple(str(p) for p in path): (tuple(var.shape), np.dtype(var.dtype))
              for path, var in nnx.to_flat_state(abstract_state)}
    return Plan(layout, reads, leaves, sorted(ignored))


def count_reads(family: ModelFamily, source: TensorSource) -> int:
    """How many tensors (progress callbacks) a plan over this diffusers-named source reads
    if it fits: its keys but those diffusers ignores and tied copies of present keys."""
    keys = set(source.keys())
    tied = {alias for alias, canonical in family.keys.aliases
            if alias in keys and canonical in keys}
    return sum(not any(p in key for p in family.keys.ignored) for key in keys - tied)
