"""The conversion utility, for every model family: `convert_to_orbax(family, ...)` writes
a checkpoint `svg2_jax.checkpoints` reads (its sources, key maps, plan and streaming)
into one of our orbax directories.

Here: the orbax writer (`save_orbax`, `write_checkpoint`, into the atomic output
directory of `convert.output_dir`), one conversion's clock and report (`ConversionRun`,
`ConversionReport`) and `peak_rss_mb`.

On-disk format of a converted checkpoint directory: `<family>_config.json` (the metadata:
format name, version, diffusers config, weight dtype, source, layout, ignored keys) and
`state/` (the orbax pytree of the NNX parameters), read by
`svg2_jax.checkpoints.orbax_io`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from svg2_jax.checkpoints import (STATE_DIR, ModelFamily, Plan, TensorSource, abstract_state,
                                  layout_view, make_plan, nest, open_source, to_device_flat)
from svg2_jax.checkpoints import count_reads as plan_reads
from convert.output_dir import atomic_directory, check_output, clean_stale, output_path
from svg2_jax.checkpoints.keymap import check_layout


@dataclasses.dataclass
class ConversionReport:
    layout: str
    tensors: int
    ignored: list[str]
    bytes_written: int
    seconds: float
    peak_rss_mb: float
    peak_rss_increase_mb: float


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def save_orbax(path: Path, tree: dict, concurrent_gb: int = 1):
    """Synchronous orbax PyTree save (OCDBT, uncompressed).

    Measured on a 1.3B-shaped state (2.65 GB bf16): orbax's default zstd compression
    buffers ~1.8 GB on top of the weights while writing and retains much of it; without
    compression the save adds nothing measurable (and is 3x faster). Random-looking bf16
    weights barely compress anyway. The host-transfer limit keeps device->host staging
    to about `concurrent_gb` at a time when the arrays live on an accelerator.
    """
    import orbax.checkpoint as ocp

    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=concurrent_gb,
                                          save_device_host_concurrent_gb=concurrent_gb,
                                          use_compression=False)
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save(path.absolute(), args=ocp.args.PyTreeSave(tree))


def write_checkpoint(out: Path, overwrite: bool, source: TensorSource, plan: Plan, meta: dict,
                     config_file: str, progress: Callable[[str], None] | None = None) -> int:
    """Stream `plan` from `source` into an orbax checkpoint directory `out` (`state/` plus
    `meta` as `config_file`), atomically (`atomic_directory`). Returns the bytes written."""
    with atomic_directory(out, overwrite) as tmp:
        # Each finished parameter becomes a host (CPU) jax array right away: orbax
        # writes jax arrays without staging a copy of the whole tree (it does copy
        # numpy trees), so the process holds one copy of the weights plus one leaf.
        flat = to_device_flat(source, plan, jax.devices("cpu")[0], progress)
        nbytes = sum(a.nbytes for a in flat.values())
        save_orbax(tmp / STATE_DIR, nest(flat))
        del flat
        with open(tmp / config_file, "w") as f:
            json.dump(meta, f, indent=1)
    return nbytes


@dataclasses.dataclass
class ConversionRun:
    """One conversion's clock, peak-memory baseline and output:
    `run = ConversionRun.start(out, overwrite)`, then `run.write(...)` returns the report."""

    out: Path
    overwrite: bool
    start_rss: float
    t0: float

    @classmethod
    def start(cls, out: str | os.PathLike, overwrite: bool) -> "ConversionRun":
        """Checks `out` before any work (`output_dir.check_output`), after dealing with
        what killed conversions to it left (`output_dir.clean_stale`)."""
        out = output_path(out)
        clean_stale(out)
        check_output(out, overwrite)
        return cls(out, overwrite, peak_rss_mb(), time.perf_counter())

    def write(self, family: ModelFamily, source: TensorSource, plan: Plan, *, config, dtype,
              src, progress: Callable[[str], None] | None = None) -> ConversionReport:
        """Stream the plan into the checkpoint with its metadata (format, architecture in
        diffusers' keys, weight dtype, source, layout, ignored keys)."""
        meta = dict(format=family.format, version=1, config=config.to_diffusers(),
                    param_dtype=np.dtype(dtype).name, source=str(src), layout=plan.layout,
                    ignored_keys=plan.ignored)
        nbytes = write_checkpoint(self.out, self.overwrite, source, plan, meta,
                                  family.config_file, progress)
        peak = peak_rss_mb()
        return ConversionReport(plan.layout, len(plan.reads), plan.ignored, nbytes,
                                time.perf_counter() - self.t0, peak, peak - self.start_rss)


def convert_to_orbax(family: ModelFamily, src: str | os.PathLike, layout: str, preset,
                     out: str | os.PathLike, *, dtype=jnp.bfloat16, overwrite: bool = False,
                     progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert a checkpoint of `family` (`layout` "diffusers" or the official one; the
    source forms of `svg2_jax.checkpoints.sources`) into the orbax directory `out`
    (`family.config_file` + `state/`), loadable by the family's `load`.

    Every problem is listed in one ValueError before any tensor is read; then one tensor
    at a time, each checked (floating point, finite: `checkpoints.stream.check_weight`);
    `out` appears only when complete, and an existing `out` is replaced (overwrite) only
    if it is one of our checkpoints (`convert.output_dir`). dtype: weight dtype of the converted
    parameters (those the model keeps in float32 stay float32). progress(diffusers key)
    after each tensor read (`count_reads` of them).
    """
    config = family.get_config(preset)
    check_layout(family.keys, layout)
    run = ConversionRun.start(out, overwrite)
    _, abstract = abstract_state(family, config, dtype)
    with open_source(src) as raw:
        source = layout_view(family.keys, raw, layout, config)
        return run.write(family, source, make_plan(family, source, layout, config, abstract),
                         config=config, dtype=dtype, src=src, progress=progress)


def count_reads(family: ModelFamily, src: str | os.PathLike, layout: str, preset) -> int:
    """How many tensor reads (progress callbacks) converting `src` takes."""
    with open_source(src) as raw:
        return plan_reads(family, layout_view(family.keys, raw, layout,
                                              family.get_config(preset)))
