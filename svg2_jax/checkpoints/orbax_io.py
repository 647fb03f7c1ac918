"""Reading our orbax checkpoint directories (written by `svg2-convert`): the metadata file
and the parameters.

On-disk format: `<family>_config.json` (the metadata: format name, version, diffusers
config, weight dtype, source, layout, ignored keys) and `state/` (the orbax pytree of the
NNX parameters).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
from flax import nnx

from svg2_jax.checkpoints.stream import nest, placement

STATE_DIR = "state"


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


def restore_orbax(path: str | os.PathLike, abstract_state, sharding=None) -> dict:
    """Restore `state/` into arrays shaped and typed like `abstract_state` (cast on read);
    returns the pure nested dict. sharding: a jax Sharding for every array, a dict {our
    path: Sharding} (each process then reads only the slices its devices hold), or None
    (the first device)."""
    import orbax.checkpoint as ocp

    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    flat = {tuple(str(p) for p in k): v for k, v in nnx.to_flat_state(abstract_state)}
    tree = nest({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=placement(sharding, k))
                 for k, v in flat.items()})
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)
    with ocp.Checkpointer(handler) as checkpointer:
        return checkpointer.restore(
            (Path(path) / STATE_DIR).absolute(),
            args=ocp.args.PyTreeRestore(tree, restore_args=jax.tree.map(
                lambda t: ocp.ArrayRestoreArgs(dtype=t.dtype, sharding=t.sharding), tree)))
