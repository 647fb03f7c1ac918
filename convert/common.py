"""Family-independent converter machinery shared by `convert.wan` and `convert.hunyuan`.

Plan types (`Target`, `Plan`, `ConversionReport`), streaming one parameter at a time into a
preallocated buffer (`iter_leaves`), nesting flat paths (`nest`), the atomic output
directory (`atomic_directory`: written to a temporary directory next to the output and
renamed into place only when complete), the orbax writer / reader (`save_orbax`,
`restore_orbax`, `read_orbax_meta`, `write_checkpoint`) and process helpers (`umask`,
`peak_rss_mb`).

On-disk format of a converted checkpoint directory: `<family>_config.json` (the metadata:
format name, version, diffusers config, weight dtype, source, layout, ignored keys) and
`state/` (the orbax pytree of the NNX parameters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
from flax import nnx

STATE_DIR = "state"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one source tensor goes. path: our parameter path; layer: index on the
    stacked layer axis (None: unstacked); transform: "copy", "transpose" (Linear) or
    "conv" (Conv3d patch embedding); source_shape: the tensor shape the source must have."""

    path: tuple[str, ...]
    layer: int | None
    transform: str
    source_shape: tuple[int, ...]


@dataclasses.dataclass
class Plan:
    """A validated mapping from source keys to our parameters.

    reads: source key -> Target; leaves: our path -> (shape, dtype) of each parameter
    (stacked); ignored: source keys skipped on purpose (diffusers ignores them too).
    """

    layout: str
    reads: dict[str, Target]
    leaves: dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]
    ignored: list[str]


@dataclasses.dataclass
class ConversionReport:
    layout: str
    tensors: int
    ignored: list[str]
    bytes_written: int
    seconds: float
    peak_rss_mb: float
    peak_rss_increase_mb: float


def to_ours(tensor: np.ndarray, target: Target) -> np.ndarray:
    """A source tensor in our parameter layout (`target.transform`)."""
    if target.transform == "transpose":
        return tensor.T
    if target.transform == "conv":
        return tensor.reshape(tensor.shape[0], -1).T
    return tensor


def iter_leaves(source, plan: Plan, progress: Callable[[str], None] | None = None
                ) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """Yield (our path, filled numpy array in the parameter's dtype), one parameter at a
    time. A stacked parameter is filled layer by layer in one preallocated buffer; each
    source tensor is read, cast into place and dropped. `progress(key)` after each read."""
    by_leaf: dict[tuple[str, ...], list[tuple[str, Target]]] = {}
    for key, target in plan.reads.items():
        by_leaf.setdefault(target.path, []).append((key, target))
    for path, (shape, dtype) in plan.leaves.items():
        buf = np.empty(shape, dtype)
        for key, target in by_leaf[path]:
            value = to_ours(source.read(key), target)
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


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(out: Path, overwrite: bool):
    """Refuse an existing output unless overwriting."""
    if out.exists() and not overwrite:
        raise ValueError(f"output {str(out)!r} already exists (pass overwrite=True / --overwrite)")


@contextlib.contextmanager
def atomic_directory(out: Path, overwrite: bool):
    """Yield a fresh temporary directory next to `out`; on success rename it to `out`
    (replacing an old `out` only then, and only with `overwrite`), on any failure remove it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700; the result is a normal dir
    try:
        yield tmp
        if out.exists():  # overwrite: move the old one aside only now that the new is done
            if not overwrite:
                raise ValueError(f"output {str(out)!r} appeared while converting")
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, trash / "old")
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def to_device_tree(source, plan: Plan, device, progress: Callable[[str], None] | None = None):
    """Stream `plan` from `source` straight onto `device` (a device or a sharding): each
    parameter goes to the device as soon as it is complete, so the host never holds the
    whole model twice (jax.device_put, not jnp.asarray, which stages an extra host copy).
    -> the nested pure dict of device arrays."""
    flat = {}
    for path, array in iter_leaves(source, plan, progress):
        flat[path] = jax.device_put(array, device)
        del array
    return nest(flat)


def write_checkpoint(out: Path, overwrite: bool, source, plan: Plan, meta: dict,
                     config_file: str, progress: Callable[[str], None] | None = None) -> int:
    """Stream `plan` from `source` into an orbax checkpoint directory `out` (`state/` plus
    `meta` as `config_file`), atomically (`atomic_directory`). Returns the bytes written."""
    with atomic_directory(out, overwrite) as tmp:
        # Each finished parameter becomes a host (CPU) jax array right away: orbax
        # writes jax arrays without staging a copy of the whole tree (it does copy
        # numpy trees), so the process holds one copy of the weights plus one leaf.
        cpu = jax.devices("cpu")[0]
        flat = {}
        for path, array in iter_leaves(source, plan, progress):
            flat[path] = jax.device_put(array, cpu)
            del array
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
    def start(cls, out: Path, overwrite: bool) -> "ConversionRun":
        check_output(out, overwrite)
        return cls(out, overwrite, peak_rss_mb(), time.perf_counter())

    def write(self, source, plan: Plan, *, config, dtype, src, layout: str, fmt: str,
              config_file: str, progress: Callable[[str], None] | None = None
              ) -> ConversionReport:
        """Stream the plan into the checkpoint with the metadata both formats share
        (architecture in diffusers' keys, weight dtype, source, layout, ignored keys)."""
        meta = dict(format=fmt, version=1, config=config.to_diffusers(),
                    param_dtype=np.dtype(dtype).name, source=str(src), layout=layout,
                    ignored_keys=plan.ignored)
        nbytes = write_checkpoint(self.out, self.overwrite, source, plan, meta, config_file,
                                  progress)
        peak = peak_rss_mb()
        return ConversionReport(layout, len(plan.reads), plan.ignored, nbytes,
                                time.perf_counter() - self.t0, peak, peak - self.start_rss)


def read_orbax_meta(path: str | os.PathLike, config_file: str, fmt: str) -> dict | None:
    """The `config_file` of one of our orbax checkpoints of format `fmt`, or None if
    `path` is not one."""
    path = Path(path)
    meta_file = path / config_file
    if not (path.is_dir() and meta_file.is_file() and (path / STATE_DIR).is_dir()):
        return None
    with open(meta_file) as f:
        meta = json.load(f)
    return meta if meta.get("format") == fmt else None


def restore_orbax(path: str | os.PathLike, abstract_state, sharding=None):
    """Restore `state/` into arrays shaped and typed like `abstract_state` (cast on read);
    returns the pure nested dict. sharding: a jax Sharding for every array, or None."""
    import orbax.checkpoint as ocp

    def target(var):
        return jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=sharding or default_sharding())

    flat = {tuple(str(p) for p in k): target(v) for k, v in nnx.to_flat_state(abstract_state)}
    tree = nest(flat)
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)
    with ocp.Checkpointer(handler) as checkpointer:
        return checkpointer.restore(
            (Path(path) / STATE_DIR).absolute(),
            args=ocp.args.PyTreeRestore(tree, restore_args=jax.tree.map(
                lambda t: ocp.ArrayRestoreArgs(dtype=t.dtype, sharding=t.sharding), tree)))


def default_sharding():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
