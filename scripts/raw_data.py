"""Where benchmarks put their raw figures: JSON under docs/bench/, with what was run.

Every figure a benchmark prints is also in its JSON file, next to the run's metadata
(device, versions, date, command line), so a number quoted in docs/ can be traced to
the run that produced it. Files are named by what they hold; each benchmark's `--json`
defaults to its own file here, and rerunning it refreshes that file.
"""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "docs", "bench")


def default_path(name: str) -> str:
    """docs/bench/<name> of the checkout (name says what the file holds, e.g.
    "overhead_vs_dense_720p.json"); <name> in the working directory when the scripts run from
    an installed package rather than a checkout (no docs/ beside them)."""
    if not os.path.isdir(os.path.join(REPO, "docs")):
        return os.path.abspath(name)
    return os.path.join(BENCH_DIR, name)


def add_run_args(parser, json_name: str | None, *, reps: int, warmup: int | None = None,
                 tiny: str = "a CPU smoke run on tiny shapes") -> None:
    """The flags every benchmark takes: --reps (and --warmup), --tiny, --json (default
    `default_path(json_name)`; json_name None: no default path, the benchmark names its
    files itself when --json is not given)."""
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per figure")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup,
                            help="untimed calls before them")
    parser.add_argument("--tiny", action="store_true", help=tiny)
    if json_name is None:
        parser.add_argument("--json", default=None,
                            help="raw figures, every shape in one file (default: one file "
                                 "per shape under " + default_path("") + ")")
    else:
        parser.add_argument("--json", default=default_path(json_name),
                            help="raw figures (default: %(default)s)")


def run_meta(device: bool = True, **extra) -> dict:
    """The run's UTC date and command line, its device and jax version (device=False: a
    parent process that must not start jax's backend), plus `extra`."""
    meta = dict(date=time.strftime("%Y-%m-%d", time.gmtime()), argv=sys.argv[1:])
    if device:
        import jax
        meta.update(device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                    jax=jax.__version__)
    meta.update(extra)
    return meta


def write_json(path: str, payload) -> str:
    """Writes `payload` to `path` whole or not at all (a temporary file renamed into
    place), creating the folder; returns the path."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1, default=float)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {path}", flush=True)
    return path
