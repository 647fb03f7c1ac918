"""Reading our orbax checkpoint directories (written by `svg2-convert`): the metadata file
and the parameters.

On-disk format: `<family>_config.json` (the metadata: format name, version, diffusers
config, weight dtype, source, layout, ignored keys) and `state/` (the orbax pytree of the
NNX parameters).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from flax import nnx

from svg2_jax.checkpoints.stream import nest, placement
from svg2_jax.input_files import read_json

STATE_DIR = "state"
# every family's format name starts so (`ModelFamily.format`)
FORMAT_PREFIX = "svg2-jax-"
META_SUFFIX = "_config.json"


def read_orbax_meta(path: str | os.PathLike, config_file: str, fmt: str) -> dict | None:
    """The `config_file` of one of our orbax checkpoints of format `fmt`, or None if
    `path` is not one. A metadata file that cannot be read is an error naming it."""
    path = Path(path)
    meta_file = path / config_file
    if not (path.is_dir() and meta_file.is_file() and (path / STATE_DIR).is_dir()):
        return None
    meta = read_json(meta_file, "checkpoint metadata")
    if meta.get("format") != fmt:
        return None
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"checkpoint metadata {str(meta_file)!r} has no 'config' object")
    return meta


def checkpoint_format(path: str | os.PathLike) -> str | None:
    """The format name if `path` is one of our checkpoint directories of any family and
    holds nothing else (one `<family>_config.json` naming an svg2-jax format, and
    `state/`), else None. What `svg2-convert --overwrite` may replace."""
    path = Path(path)
    if not path.is_dir() or not (path / STATE_DIR).is_dir():
        return None
    others = [p for p in path.iterdir() if p.name != STATE_DIR]
    if len(others) != 1 or not others[0].name.endswith(META_SUFFIX) or not others[0].is_file():
        return None
    try:
        fmt = read_json(others[0], "checkpoint metadata").get("format")
    except ValueError:
        return None
    return fmt if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX) else None


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
    state = (Path(path) / STATE_DIR).absolute()
    try:
        with ocp.Checkpointer(handler) as checkpointer:
            return checkpointer.restore(state, args=ocp.args.PyTreeRestore(
                tree, restore_args=jax.tree.map(
                    lambda t: ocp.ArrayRestoreArgs(dtype=t.dtype, sharding=t.sharding), tree)))
    except Exception as e:  # noqa: BLE001  (orbax / tensorstore raise many kinds)
        raise ValueError(f"cannot restore the orbax state {str(state)!r} (damaged, incomplete "
                         f"or not written by svg2-convert for this model): "
                         f"{type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:500] if text else ""
