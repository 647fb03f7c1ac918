"""Several hosts: one process per host (or per GPU group), joined by
`jax.distributed.initialize` before anything touches a device; `jax.devices()` then lists
every process's devices and a mesh (`make_mesh`) spans them all. Every process runs the
same program on the same inputs; each feeds and reads only its own devices.

Launch (two 8-GPU hosts, a 16-device mesh: CFG parallel x 8-way sequence parallel):

    # on host 0 (10.0.0.1) and host 1, the same command but --distributed's last field:
    svg2-generate --checkpoint ckpt/ --model wan2.1-t2v-14b --text-embeddings emb.npy \\
        --mesh sp=8,cfg=2 --separate-cfg-cache --distributed 10.0.0.1:1234,2,0   # host 0
    #   ... --distributed 10.0.0.1:1234,2,1                                      # host 1

Under SLURM or Open MPI (`srun`, `mpirun`) `--distributed auto` finds the coordinator,
the process count and the process ids by itself. Only process 0 writes files.
"""

from __future__ import annotations

import jax
import numpy as np


def parse_distributed(spec: str) -> dict:
    """"auto" -> {} (cluster auto-detection); "HOST:PORT,NUM_PROCESSES,PROCESS_ID" -> the
    keyword arguments of `jax.distributed.initialize`."""
    if spec == "auto":
        return {}
    parts = spec.split(",")
    if len(parts) != 3 or ":" not in parts[0] or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"bad --distributed {spec!r}: expected 'auto' or "
                         "HOST:PORT,NUM_PROCESSES,PROCESS_ID (e.g. 10.0.0.1:1234,2,0)")
    num, pid = int(parts[1]), int(parts[2])
    if not 0 <= pid < num:
        raise ValueError(f"bad --distributed {spec!r}: process id {pid} is not in "
                         f"[0, {num})")
    return dict(coordinator_address=parts[0], num_processes=num, process_id=pid)


def initialize(spec: str = "auto", **options):
    """Join the processes (`parse_distributed`; `options`: more keyword arguments of
    `jax.distributed.initialize`, e.g. its timeouts); call before any other jax use."""
    jax.distributed.initialize(**parse_distributed(spec), **options)


def is_main_process() -> bool:
    return jax.process_index() == 0


def fetch(tree):
    """Every array leaf of `tree` whole on this host as numpy (arrays spread over other
    processes' devices are gathered from them: every process must call this)."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)
