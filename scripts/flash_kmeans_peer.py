"""The peer of our k-means: the SVG authors' Triton k-means, the `flash-kmeans` package.

SVG2's reference runs `batch_kmeans_Euclid(x [B*H, S, D], K, max_iters, tol,
init_centroids)` on the bf16 queries and keys of each layer (Sparse-VideoGen's
`svg/kmeans_utils.py`; flash-kmeans is that code as a package). This module times it on
the same problems as `svg2_jax.kmeans` in `bench_overhead` (N = B*H problems of S tokens,
D = 128, K = QC for queries and KC for keys, the same bf16 tokens and the same initial
centroids, rounded to bf16 as its assignment kernel requires centroids of the tokens'
dtype):
  cold   `cold_iters` iterations from the given initial centroids (the package takes
         init_centroids, so both start from the same rows), tol 0: no early stop;
  warm   `warm_iters` iterations from the cold result's centroids, tol 0;
  step   one iteration alone (assignment + sorted centroid update, the package's own
         iteration function) on K and on Q, from given centroids (`bench_overhead` gives
         its own cold result's, so the first assignments can be compared label by label).
Every call's outputs (labels, centroids, the iteration count) are returned to the timing
loop and summarised (`scripts.timing.summarize`); each call is synchronised with
`torch.cuda.synchronize`. Per iteration the package reads the largest centroid shift on
the host (`if center_shift < tol`), one device-to-host synchronisation per iteration:
that is part of its cost, as in the reference.

Tested against flash-kmeans 0.3.1 (its iteration functions are private names there).
Without a CUDA device its Triton kernels cannot run; `load(cpu_fallback=True)` then
gives the package's own pure-torch fallback (`batch_kmeans_Euclid_torch_native`), for a
CPU check of the plumbing only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from scripts.timing import summarize, time_calls

PACKAGE = "flash-kmeans"
TESTED_VERSION = "0.3.1"


@dataclasses.dataclass(frozen=True)
class Peer:
    """One flash-kmeans implementation: kmeans(x, n_clusters, max_iters=, tol=,
    init_centroids=) -> (labels, centroids, iterations); step(x, x_sq, centroids) ->
    (new centroids, shift, labels); tensors live on `device`; `sync` waits for it."""

    name: str
    version: str
    kmeans: Callable
    step: Callable
    device: str
    sync: Callable[[Any], Any]


def load(cpu_fallback: bool = False) -> tuple[Peer | None, str]:
    """The package's Triton k-means on a CUDA device (or, with cpu_fallback and no CUDA
    device, its pure-torch fallback), or (None, why it cannot run)."""
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not installed ({e})"
    try:
        import flash_kmeans
    except ImportError as e:
        return None, (f"the {PACKAGE} package is not installed ({e}); carry its wheel "
                      f"({PACKAGE}=={TESTED_VERSION})")
    version = getattr(flash_kmeans, "__version__", "unknown")
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401  (the package imports it too; name it in the error)
            from flash_kmeans import kmeans_triton_impl as impl
            kmeans, step = impl.batch_kmeans_Euclid, impl._euclid_iter
        except (ImportError, AttributeError) as e:
            return None, f"{PACKAGE} {version}: its Triton k-means cannot be loaded ({e})"
        return Peer("triton", version, kmeans, step, "cuda",
                    lambda _: torch.cuda.synchronize()), ""
    if not cpu_fallback:
        return None, f"no CUDA device: {PACKAGE}'s Triton kernels need one"
    try:
        from flash_kmeans import torch_fallback as impl
        kmeans, step = impl.batch_kmeans_Euclid_torch_native, impl._euclid_iter_torch_naive
    except (ImportError, AttributeError) as e:
        return None, f"{PACKAGE} {version}: its torch fallback cannot be loaded ({e})"
    return Peer("torch fallback", version, kmeans, step, "cpu", lambda _: None), ""


def to_torch(x, device: str):
    """A JAX or numpy array as a bf16 torch tensor on `device` (through float32 on the
    host: exact for bf16 values, and free of dlpack's stream semantics)."""
    import torch

    return torch.from_numpy(np.array(x, np.float32)).to(device=device, dtype=torch.bfloat16)


def time_peer(peer: Peer, qn, kn, q_init, k_init, q_step, k_step, *, cold_iters: int,
              warm_iters: int, reps: int, cold_reps: int) -> dict:
    """The peer's cold, warm and one-step timings on queries qn [N, S, D] and keys kn
    [N, S, D]: cold from initial centroids q_init [N, QC, D] and k_init [N, KC, D], warm
    from its cold result, one step from q_step [N, QC, D] and k_step [N, KC, D].

    Returns {"cold", "warm", "step_k", "step_q": Timing (outputs summarised)} plus, as
    numpy, "cold_labels_k" (the K labels of the last cold call) and "step_labels_k" (the
    step's K assignment), and "iterations": the iteration counts the package reported
    for the cold and warm calls."""
    import torch

    qx, kx = to_torch(qn, peer.device), to_torch(kn, peer.device)
    qi, ki = to_torch(q_init, peer.device), to_torch(k_init, peer.device)
    qs, ks = to_torch(q_step, peer.device), to_torch(k_step, peer.device)
    qc, kc = qi.shape[1], ki.shape[1]

    def both(q_centroids, k_centroids, iters):
        return (peer.kmeans(qx, qc, max_iters=iters, tol=0.0, init_centroids=q_centroids),
                peer.kmeans(kx, kc, max_iters=iters, tol=0.0, init_centroids=k_centroids))

    def timed(fn, n_reps, warmup):
        timing, out = time_calls(fn, reps=n_reps, warmup=warmup, sync=peer.sync)
        return dataclasses.replace(timing, outputs=summarize(out)), out

    with torch.no_grad():
        cold, (cold_q, cold_k) = timed(lambda: both(qi, ki, cold_iters), cold_reps, 1)
        # warm start from the cold result's centroids, as a real warm step would
        warm, (warm_q, warm_k) = timed(lambda: both(cold_q[1], cold_k[1], warm_iters), reps, 2)
        # x_sq as batch_kmeans_Euclid computes it (in the tokens' dtype)
        steps, step_out = {}, {}
        for name, x, c in (("step_k", kx, ks), ("step_q", qx, qs)):
            x_sq = (x ** 2).sum(dim=-1)
            steps[name], step_out[name] = timed(
                lambda x=x, x_sq=x_sq, c=c: peer.step(x, x_sq, c), reps, 2)
    return dict(cold=cold, warm=warm, **steps,
                cold_labels_k=cold_k[0].cpu().numpy(),
                step_labels_k=step_out["step_k"][2].cpu().numpy(),
                iterations=dict(cold=[cold_q[2], cold_k[2]], warm=[warm_q[2], warm_k[2]]))
