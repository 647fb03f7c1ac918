"""Read tensors one at a time from a safetensors checkpoint: one file, a sharded
checkpoint with its `*.safetensors.index.json`, or a directory holding either.

`safe_open(..., framework="numpy")` reads bf16 tensors as `ml_dtypes.bfloat16` arrays
(safetensors 0.8), so no torch is needed and each read allocates only that tensor.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from svg2_jax.checkpoints.tensor_source import KeyedSource, Rows, concat_rows
from svg2_jax.input_files import read_json

DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"


def resolve_files(path: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """The shard files of a checkpoint and its index file (None if unsharded).

    A directory is resolved as: diffusers' index file, else the only `*.index.json`,
    else diffusers' single file, else every `*.safetensors` in it.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if (path / DIFFUSERS_INDEX).is_file():
            index = path / DIFFUSERS_INDEX
        elif len(indexes) == 1:
            index = indexes[0]
        elif len(indexes) > 1:
            raise ValueError(f"{str(path)!r} holds several index files "
                             f"{[p.name for p in indexes]}: pass the one to use")
        elif (path / DIFFUSERS_FILE).is_file():
            return [path / DIFFUSERS_FILE], None
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise ValueError(f"no .safetensors files or index in directory {str(path)!r}")
            return files, None
        path = index
    if path.name.endswith(".index.json"):
        weight_map = read_json(path, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map \
                or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"index {str(path)!r} has no 'weight_map'")
        files = [path.parent / name for name in sorted(set(weight_map.values()))]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise ValueError(f"index {str(path)!r} names shard files that do not exist: {absent}")
        return files, path
    if path.suffix == ".safetensors":
        return [path], None
    raise ValueError(f"{str(path)!r} is neither a .safetensors file, an .index.json, nor a "
                     "directory holding them")


@contextlib.contextmanager
def open_file(file: Path):
    """safe_open(file) for numpy, with any failure (empty, truncated or corrupt file, an
    unreadable header, an I/O error) as one ValueError naming the file."""
    try:
        handle = safe_open(str(file), framework="numpy")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {str(file)!r} as safetensors (empty, truncated or "
                         f"not a safetensors file?): {e}") from None
    with handle:
        try:
            yield handle
        except (SafetensorError, OSError) as e:
            raise ValueError(f"error reading {str(file)!r}: {e}") from None


class SafetensorsSource(KeyedSource):
    """Key -> shape / tensor over all shards of one checkpoint (a `TensorSource`).

    Duplicate keys across shards, or an index that disagrees with the shards, are errors.
    Each `read` opens its shard afresh: safetensors memory-maps the whole file while a
    handle is open, and every page touched would stay in this process's resident set
    (a full second copy of the checkpoint in `ru_maxrss`) if one handle stayed open.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ignored: list[str] = []
        self.files, self.index = resolve_files(path)
        self._file: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        duplicates = []
        for file in self.files:
            with open_file(file) as handle:
                for key in handle.keys():
                    if key in self._file:
                        duplicates.append(key)
                    self._file[key] = file
                    self._shape[key] = tuple(handle.get_slice(key).get_shape())
        if duplicates:
            raise ValueError(f"keys present in more than one shard of {str(path)!r}: "
                             f"{sorted(duplicates)}")
        if self.index is not None:
            listed = set(read_json(self.index, "safetensors index")["weight_map"])
            if listed != set(self._file):
                raise ValueError(
                    f"index {str(self.index)!r} disagrees with its shards: listed but absent "
                    f"{sorted(listed - set(self._file))}, present but unlisted "
                    f"{sorted(set(self._file) - listed)}")

    def read(self, key: str, rows: Rows | None = None) -> np.ndarray:
        """The tensor (or its dim-0 `rows`, concatenated) in its stored dtype (bf16 as
        ml_dtypes.bfloat16); a slice reads only those rows from the file."""
        with open_file(self._file[key]) as handle:
            if rows is None:
                return handle.get_tensor(key)
            tensor = handle.get_slice(key)
            return concat_rows([tensor[a:b] for a, b in rows])

    def locate(self, key: str) -> str:
        return repr(str(self._file[key]))

    def close(self):
        super().close()
        self._file = {}
