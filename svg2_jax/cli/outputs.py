"""Where the command lines write: every output path checked before any work
(`check_output_file`, `check_creatable`), every file written whole or not at all
(`write_atomically`). A problem is a ValueError naming the flag."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_creatable(path: Path, flag: str):
    """path's directory exists and is writable, or can be made: its nearest existing
    ancestor is a writable directory."""
    anchor = path.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise ValueError(f"{flag} {str(path)!r}: {str(anchor)!r} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r}: cannot write there, {str(anchor)!r} is not "
                         "writable")


def check_output_file(path: str | os.PathLike, flag: str, suffix: str) -> Path:
    """A file the run will write: ends in `suffix`, is not a directory, and can be
    written (an existing file is replaced)."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{flag} {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a directory; name a {suffix} file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r} exists and is not writable")
    check_creatable(path, flag)
    return path


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]):
    """write(tmp) into a temporary file next to `path` (same suffix, for writers that go by
    it), then rename it over `path`: `path` is complete or untouched; the temporary file is
    removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 is not what a plain file gets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
