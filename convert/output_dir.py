"""A conversion's output directory: never half-written, never replacing anything but one of
our checkpoints (or svg2-convert's pair of them for a two-expert model), never leaking its
temporary directories.

A conversion to OUT works in a staging directory next to it, `.<OUT name>.svg2-convert-*/`,
holding `owner.json` (the pid, host, boot id and process start time of the conversion),
`new/` (the checkpoint being written) and, only while an old OUT is being replaced, `old/`.
When `new/` is complete: OUT -> `old/` (only with overwrite, and only if OUT is one of our
checkpoints: `checkpoints.orbax_io.checkpoint_format`), `new/` -> OUT, then the staging
directory is removed. Any error removes it (moving `old/` back to OUT first if it had
moved). A run killed outright (SIGKILL, a crash, power loss) leaves it behind; the next
conversion into the same directory finds it (`clean_stale`): it is removed when its owner
process is gone (its OUT restored from `old/` first if the kill fell between the two
renames), left alone while its owner runs, and reported with the command that removes it
when this machine cannot tell (another host).

A Wan2.2 A14B conversion writes both experts into one OUT (`transformer/` +
`transformer_2/`, each one of our checkpoints: `EXPERT_PAIR`); such an OUT counts as ours
too (`replaceable`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from svg2_jax.checkpoints.orbax_io import STATE_DIR, checkpoint_format
from svg2_jax.cli.outputs import check_creatable
from svg2_jax.pipelines.wan import EXPERT_DIRS

log = logging.getLogger("svg2-convert")

STAGING_TAG = ".svg2-convert-"
OWNER_FILE = "owner.json"
NEW, OLD = "new", "old"
# the two-expert output of `convert.wan.convert_experts`: diffusers' names
EXPERT_PAIR = EXPERT_DIRS[0]
# directories an earlier version of this code left, without an owner record
_LEGACY_TAGS = (".tmp-", ".old-")


def output_path(out: str | os.PathLike) -> Path:
    """OUT as an absolute path without following symlinks ("." and ".." resolved), so its
    name and parent are real; refuses a filesystem root."""
    path = Path(os.path.abspath(out))
    if path.parent == path:
        raise ValueError(f"--out {str(out)!r} is a filesystem root; name a directory to create")
    return path


def replaceable(path: Path) -> bool:
    """Whether `path` is one of our checkpoints (`checkpoint_format`: its
    `<family>_config.json` and `state/`, nothing else), or holds exactly EXPERT_PAIR, each
    one of them."""
    if checkpoint_format(path) is not None:
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    return (sorted(p.name for p in path.iterdir()) == sorted(EXPERT_PAIR)
            and all(checkpoint_format(path / name) is not None for name in EXPERT_PAIR))


def check_output(out: Path, overwrite: bool):
    """Before any work: OUT's parent can hold a new directory, and an existing OUT is
    replaced only with `overwrite` and only if it is ours (`replaceable`: anything else
    in it is refused too)."""
    check_creatable(out, "--out")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise ValueError(f"output {str(out)!r} already exists (pass overwrite=True / "
                         "--overwrite to replace it)")
    if not replaceable(out):
        raise ValueError(f"--overwrite replaces only an svg2-jax checkpoint directory "
                         f"(<family>_config.json + {STATE_DIR}/, nothing else; or "
                         f"{' + '.join(n + '/' for n in EXPERT_PAIR)} of two of them), and "
                         f"{str(out)!r} {_describe(out)}; remove or move it yourself, or "
                         "choose another --out")


def _describe(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "is a dangling symlink"
    if not path.is_dir():
        return "is a file"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return "is an empty directory"
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8
                                      else "")
    return f"holds {shown}"


# -- who owns a staging directory ----------------------------------------------------------

def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(),
            "start_time": _start_time(pid), "created": time.time()}


def owner_running(owner: dict) -> bool | None:
    """Whether the conversion that wrote `owner` still runs: True, False, or None when this
    machine cannot tell (another host)."""
    if owner.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if owner.get("boot_id") and boot and owner["boot_id"] != boot:
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    start = _start_time(pid)
    return not (start is not None and owner.get("start_time") not in (None, start))


# -- leftovers of killed runs --------------------------------------------------------------

def _remove_tree(path: Path) -> list[str]:
    """rmtree, returning what could not be removed instead of failing or hiding it."""
    failed = []
    shutil.rmtree(path, onexc=lambda fn, p, exc: failed.append(f"{p} ({exc})"))
    return failed


def _restore_or_discard(staging: Path, out: Path) -> str:
    """Remove a dead run's staging directory, first moving old/ back to OUT if the run died
    after moving OUT aside and before moving its new checkpoint in."""
    restored = ""
    if (staging / OLD).exists() and not (out.exists() or out.is_symlink()):
        os.rename(staging / OLD, out)
        restored = f"; restored {str(out)!r}, which it had moved aside"
    failed = _remove_tree(staging)
    return (f"could not fully remove {str(staging)!r}: {failed}" if failed else
            f"removed {str(staging)!r}, left by a conversion that is no longer running"
            + restored)


def clean_stale(out: Path, quiet_after_s: float = 60.0) -> list[str]:
    """Find the staging directories that killed conversions left next to `out` (for `out`
    or any other output in its directory), and deal with each (module docstring). Logs and
    returns one message per directory dealt with or found in the way of `out`. An empty
    staging directory without its owner record (killed within its first instant) is
    removed once older than `quiet_after_s`."""
    messages = []
    if not out.parent.is_dir():
        return messages
    for path in sorted(out.parent.iterdir()):
        name = path.name
        if not path.is_dir() or path.is_symlink():
            continue
        if name.startswith(".") and STAGING_TAG in name:
            target = out.parent / name[1:name.rindex(STAGING_TAG)]
            message, running = _stale_message(path, target, quiet_after_s)
            if target == out or not running:  # others' live runs are none of our business
                messages.append(message)
        elif any(name.startswith(f".{out.name}{tag}") for tag in _LEGACY_TAGS):
            messages.append(f"found {str(path)!r}, left by an earlier svg2-convert that was "
                            f"killed; if no conversion to {str(out)!r} is running, remove "
                            f"it: rm -rf {_quote(path)}")
    messages = [m for m in messages if m]
    for message in messages:
        log.warning(message)
    return messages


def _stale_message(staging: Path, out: Path, quiet_after_s: float
                   ) -> tuple[str | None, bool | None]:
    """Deal with one staging directory of a conversion to `out` -> (what was done or what
    to do, None when nothing; whether its owner runs: `owner_running`)."""
    try:
        owner = json.loads((staging / OWNER_FILE).read_text())
    except FileNotFoundError:
        if not any(staging.iterdir()) and time.time() - staging.stat().st_mtime > quiet_after_s:
            staging.rmdir()
            return f"removed the empty {str(staging)!r}, left by a killed conversion", False
        return None, True  # just created by a conversion starting now
    except (OSError, ValueError) as e:
        return (f"found {str(staging)!r} with an unreadable {OWNER_FILE} ({e}); if no "
                f"conversion to {str(out)!r} is running, remove it: rm -rf "
                f"{_quote(staging)}"), None
    running = owner_running(owner)
    if running is False:
        return _restore_or_discard(staging, out), False
    if running:
        return (f"{str(staging)!r} belongs to a conversion still running (pid "
                f"{owner['pid']}); left alone"), True
    return (f"found {str(staging)!r}, left by a conversion on host {owner.get('host')!r} "
            f"(pid {owner.get('pid')}); if it no longer runs, remove it: "
            f"rm -rf {_quote(staging)}"), None


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


# -- the atomic output directory -----------------------------------------------------------

def _move_aside(out: Path, staging: Path):
    os.rename(out, staging / OLD)


def _move_into_place(new: Path, out: Path):
    os.rename(new, out)


def _discard(staging: Path, out: Path):
    failed = _remove_tree(staging)
    if failed:
        log.warning(f"{str(out)!r} is complete, but its temporary directory could not be "
                    f"fully removed: {failed}")


@contextlib.contextmanager
def _sigterm_as_exit():
    """While converting, SIGTERM (kill's default) raises SystemExit like Ctrl-C raises
    KeyboardInterrupt, so the cleanup below runs; only in the main thread and only over
    the default handler (a program's own handler is left alone)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool):
    """Yield an empty directory to write the checkpoint into; on success it becomes `out`
    (an existing `out` replaced only then, and only as `check_output` allows), on any
    error (SIGTERM included) nothing of it remains and an existing `out` is untouched."""
    out = output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_TAG}", dir=out.parent))
    try:
        with _sigterm_as_exit():
            (staging / OWNER_FILE).write_text(json.dumps(_owner()))
            new = staging / NEW
            new.mkdir()  # with the umask's permissions (mkdtemp's own are 0700)
            yield new
            if out.exists() or out.is_symlink():
                check_output(out, overwrite)  # it may have appeared or changed meanwhile
                _move_aside(out, staging)
            _move_into_place(new, out)
    except BaseException:
        if (staging / OLD).exists() and not (out.exists() or out.is_symlink()):
            os.rename(staging / OLD, out)
        failed = _remove_tree(staging)
        if failed:
            log.warning(f"could not fully remove the temporary {str(staging)!r}: {failed}")
        raise
    _discard(staging, out)
