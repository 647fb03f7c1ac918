"""The plug point for reading checkpoint tensors: `TensorSource`, key -> shape / numpy
tensor, one tensor at a time.

Implementations: `SafetensorsSource` (safetensors_source.py), `TorchCheckpointSource`
(torch_source.py), picked from the path by the table in `sources.py`; `RenamedSource`
(keymap.py) shows an official-layout source under diffusers' keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np

# dim-0 row ranges of a tensor, read and concatenated in this order
Rows = tuple[tuple[int, int], ...]


@runtime_checkable
class TensorSource(Protocol):
    """Checkpoint tensors by key; use as a context manager.

    path: what was opened (named in errors); ignored: entries of the file that are not
    tensors of the state dict (reported, never converted).
    """

    path: Path
    ignored: list[str]

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def read(self, key: str, rows: Rows | None = None) -> np.ndarray:
        """The tensor (or the concatenation of its dim-0 `rows`) as a C-contiguous numpy
        array in its stored dtype (bf16 as ml_dtypes.bfloat16); only those rows are read."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc) -> None: ...


class KeyedSource:
    """What every file source shares: the key -> shape table read when opened, the context
    manager, and `close` dropping the tables. Subclasses fill `_shape` and define `read`."""

    path: Path
    ignored: list[str]
    _shape: dict[str, tuple[int, ...]]

    def keys(self) -> list[str]:
        return list(self._shape)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape[key]

    def locate(self, key: str) -> str:
        """Where `key`'s tensor is, for messages."""
        return repr(str(self.path))

    def close(self):
        self._shape = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def locate(source: TensorSource, key: str) -> str:
    """Where a key's tensor is, for messages: the source's `locate(key)` if it has one
    (`KeyedSource`'s: the file; a shard, an official key in subclasses), else its path."""
    where = getattr(source, "locate", None)
    return where(key) if where is not None else repr(str(source.path))


def concat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """The row ranges read apart, as one C-contiguous array (no copy for one range)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
