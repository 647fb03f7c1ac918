"""Reading the small files a user hands over (JSON configs and metadata, .npy / .npz
arrays): whatever is wrong with one, a single ValueError naming the file and the problem,
never a parser's traceback. Checkpoint tensors are `svg2_jax.checkpoints`' job."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np


def read_json(path: str | os.PathLike, what: str) -> dict:
    """A JSON object from a file. what: the file's role, in the message ("config file")."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {os.fspath(path)!r}: {e}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {os.fspath(path)!r} holds a JSON {type(value).__name__}, "
                         "not an object")
    return value


def _not_numpy(path, what, kind, e) -> ValueError:
    return ValueError(f"{what} {os.fspath(path)!r} is not a numpy {kind} file "
                      f"({type(e).__name__}: {e})")


def _np_load(path, what: str, kind: str):
    """np.load without pickles; a missing file or an unreadable one is a ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} file not found: {os.fspath(path)!r}"
                         + (" (it is a directory)" if os.path.isdir(path) else ""))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _not_numpy(path, what, kind, e) from None


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """The array of a .npy file (no pickled objects)."""
    value = _np_load(path, what, ".npy array")
    if not isinstance(value, np.ndarray):  # an .npz passed where an .npy is expected
        value.close()
        raise ValueError(f"{what} {os.fspath(path)!r} is an .npz archive; a single .npy "
                         "array is expected")
    return value


def load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz archive (no pickled objects), read now."""
    archive = _np_load(path, what, ".npz archive")
    if isinstance(archive, np.ndarray):
        raise ValueError(f"{what} {os.fspath(path)!r} is a single .npy array; an .npz archive "
                         "(np.savez) is expected")
    try:
        with archive:
            return {k: np.asarray(archive[k]) for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _not_numpy(path, what, ".npz archive", e) from None
