"""Which `TensorSource` reads a path: one table, tried in order, the first kind that
recognises the path opens it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from svg2_jax.checkpoints.safetensors_source import SafetensorsSource
from svg2_jax.checkpoints.tensor_source import TensorSource
from svg2_jax.checkpoints.torch_source import TORCH_SUFFIXES, TorchCheckpointSource


def _torch_file(path: Path) -> Path | None:
    """A torch file, or a directory without safetensors whose only checkpoint is one."""
    if path.is_file():
        return path if path.suffix in TORCH_SUFFIXES else None
    if any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json")):
        return None
    files = sorted(p for s in TORCH_SUFFIXES for p in path.glob(f"*{s}"))
    if len(files) > 1:
        raise ValueError(f"{str(path)!r} holds several torch checkpoints "
                         f"{[p.name for p in files]}: pass the one to use")
    return files[0] if files else None


def _safetensors_path(path: Path) -> Path | None:
    """A .safetensors file, an .index.json, or a directory (resolved by the source)."""
    if path.is_dir() or path.suffix == ".safetensors" or path.name.endswith(".index.json"):
        return path
    return None


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """name: in messages; forms: the paths it reads, in words; recognise(path) -> the path
    to open, or None; open(path) -> the source."""

    name: str
    forms: str
    recognise: Callable[[Path], Path | None]
    open: Callable[[Path], TensorSource]


SOURCES: tuple[SourceKind, ...] = (
    SourceKind("torch state dict", f"a {', '.join(TORCH_SUFFIXES)} file or a directory holding "
               "only one", _torch_file, TorchCheckpointSource),
    SourceKind("safetensors", "a .safetensors file, an .index.json or a directory holding them",
               _safetensors_path, SafetensorsSource),
)


def open_source(path: str | os.PathLike) -> TensorSource:
    """The `TensorSource` of the first kind in `SOURCES` that recognises `path`."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    for kind in SOURCES:
        found = kind.recognise(path)
        if found is not None:
            return kind.open(found)
    raise ValueError(f"{str(path)!r} is not a checkpoint this reads: "
                     + "; ".join(f"{k.name}: {k.forms}" for k in SOURCES))
