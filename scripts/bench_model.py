"""One Wan2.1 transformer forward, JAX (ours) vs diffusers + torch SDPA, eager and under
torch.compile, on one GPU.

Cases (batch 1, 512 text tokens, random bf16 weights, dense attention):
  1.3b-480p: Wan2.1-T2V-1.3B, latents 16 x 21 x 60 x 104 -> S = 21 x 30 x 52 = 32760 tokens
  14b-720p:  Wan2.1-T2V-14B,  latents 16 x 21 x 90 x 160 -> S = 21 x 45 x 80 = 75600 tokens

Frameworks (`--frameworks`, each in its own subprocess so the 14B model, ~28 GB in bf16,
is never held twice, and a compile cache never carries over):
  jax            ours: weights initialised on the device inside jit (never materialised
                 on the host), self- and cross-attention through cuDNN
                 (`DenseAttention("cudnn")`).
  torch          diffusers' `WanTransformer3DModel` built on the GPU in bf16 (default
                 dtype bf16, so the norms and modulation tables are bf16 too, unlike a
                 `from_pretrained` load; no effect on timing), diffusers' default
                 attention dispatch (torch SDPA), `torch.no_grad()`, eager.
  torch-compile  the same model under `torch.compile(model)` (default mode, the whole
                 model as one region).
  torch-compile-blocks  the same under diffusers' `compile_repeated_blocks()` (each
                 transformer block compiled once and reused: regional compilation,
                 default mode; far shorter compile for large models).
Reported: median / min of --reps timed forwards after --warmup untimed ones (JAX:
block_until_ready on every output; torch: cuda.synchronize; `scripts.timing`), the
outputs' summary (non-finite count, checksum), compile time apart from run time (JAX:
ahead-of-time compilation; torch.compile compiles inside the first call, so its
compile_s is the first call's wall time less the median run time), peak device memory,
and model TFLOP/s (matmul + attention FLOPs). `--worker-timeout` bounds each framework's
subprocess (a row then says it timed out; the others are kept). Every printed figure is
in the JSON (`--json`, default docs/bench/wan_forward_jax_vs_torch.json).

Usage (GPU machine):
  python -m scripts.bench_model --cases 1.3b-480p --frameworks jax,torch,torch-compile
  python -m scripts.bench_model --cases 14b-720p --frameworks jax,torch --reps 2 --warmup 1
  python -m scripts.bench_model --tiny        # CPU smoke run of the whole script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from scripts.raw_data import add_run_args, run_meta, write_json

TEXT_LEN = 512
TEXT_DIM = 4096
JSON_NAME = "wan_forward_jax_vs_torch.json"
# framework -> how the diffusers model is compiled (None: eager); "jax" is ours
TORCH_COMPILE = {"torch": None, "torch-compile": "model", "torch-compile-blocks": "blocks"}
FRAMEWORKS = ("jax",) + tuple(TORCH_COMPILE)


def cases(tiny: bool) -> dict:
    """name -> (config kwargs in diffusers' keys, latent shape [B, C, F, H, W])."""
    if tiny:
        from svg2_jax.models.wan import WanConfig

        cfg = WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                        out_channels=4, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2)
        return {"tiny": (cfg.to_diffusers(), (1, 4, 3, 6, 10))}
    from svg2_jax.models.wan import PRESETS

    return {"1.3b-480p": (PRESETS["wan2.1-t2v-1.3b"].to_diffusers(), (1, 16, 21, 60, 104)),
            "14b-720p": (PRESETS["wan2.1-t2v-14b"].to_diffusers(), (1, 16, 21, 90, 160))}


def tokens(config: dict, shape) -> int:
    return math.prod(n // p for n, p in zip(shape[2:], config["patch_size"]))


def model_flops(config: dict, shape, text_len: int) -> float:
    """Forward FLOPs of the blocks (matmuls and attention; norms/elementwise ignored)."""
    s = tokens(config, shape)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    per_layer = (2 * s * d * d * 4            # self-attn q, k, v, out
                 + 4 * s * s * d              # self-attn QK^T and PV
                 + 2 * s * d * d * 2          # cross-attn q, out
                 + 2 * text_len * d * d * 2   # cross-attn k, v on the text
                 + 4 * s * text_len * d       # cross-attn QK^T and PV
                 + 2 * s * d * config["ffn_dim"] * 2)
    return per_layer * config["num_layers"] * shape[0]


def run_jax(name, config: dict, shape, reps, warmup) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from scripts.timing import time_jax
    from svg2_jax.layer_attention import DenseAttention
    from svg2_jax.models.wan import WanConfig, WanTransformer3DModel, wan_forward

    gpu = jax.default_backend() == "gpu"
    if not gpu and name != "tiny":
        return dict(framework="jax", skipped=f"no GPU (jax backend {jax.default_backend()!r}); "
                                             "use --tiny for a CPU smoke run")
    impl = "cudnn" if gpu else None
    cfg = WanConfig(**config)

    def build():
        return WanTransformer3DModel(cfg, attention=DenseAttention(impl),
                                     cross_attention_implementation=impl, rngs=nnx.Rngs(0))

    graphdef, _ = nnx.split(nnx.eval_shape(build))
    t0 = time.perf_counter()
    params = jax.jit(lambda: nnx.state(build()))()  # created on the device, bf16
    jax.block_until_ready(params)
    init_s = time.perf_counter() - t0
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    x = jax.random.normal(keys[0], shape, jnp.bfloat16)
    t = jnp.full((shape[0],), 500.0, jnp.float32)
    ctx = jax.random.normal(keys[1], (shape[0], TEXT_LEN, cfg.text_dim), jnp.bfloat16)
    timing, _ = time_jax(functools.partial(wan_forward, graphdef), params, x, t, ctx,
                         reps=reps, warmup=warmup)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(framework="jax", device=jax.devices()[0].device_kind, init_s=init_s,
                compile_s=timing.compile_s, first_call_s=timing.first_s - timing.compile_s,
                ms=list(timing.times_ms), outputs=timing.outputs,
                peak_gb=(stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats
                         else None),
                finite=timing.outputs["nonfinite"] == 0,
                attention=f"DenseAttention({impl!r})")


def run_torch(name, config: dict, shape, reps, warmup, framework="torch",
              compile_backend="inductor") -> dict:
    """diffusers' Wan forward, eager or compiled (torch.compile's `compile_backend`) as
    TORCH_COMPILE[framework] says."""
    try:
        import torch
        from diffusers import WanTransformer3DModel
    except ImportError as e:
        return dict(framework=framework, skipped=f"diffusers/torch not installed ({e})")
    from scripts.timing import summarize, time_calls
    cuda = torch.cuda.is_available()
    if not cuda and name != "tiny":
        return dict(framework=framework, skipped="no CUDA device")
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build straight in bf16 on the device
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config).eval()
    finally:
        torch.set_default_dtype(default)
    sync = (lambda _: torch.cuda.synchronize()) if cuda else (lambda _: None)
    sync(None)
    init_s = time.perf_counter() - t0
    x = torch.randn(shape, device=device, dtype=torch.bfloat16)
    t = torch.full((shape[0],), 500.0, device=device)
    ctx = torch.randn(shape[0], TEXT_LEN, config["text_dim"], device=device,
                      dtype=torch.bfloat16)
    scope = TORCH_COMPILE[framework]
    forward = model
    if scope == "model":
        forward = torch.compile(model, backend=compile_backend)
    elif scope == "blocks":
        model.compile_repeated_blocks(backend=compile_backend)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        timing, out = time_calls(lambda: forward(x, t, ctx, return_dict=False)[0], sync=sync,
                                 reps=reps, warmup=max(warmup, 1 if scope else 0))
    outputs = summarize(out)
    # torch.compile compiles inside the first call: that call less one run
    compile_s = timing.first_s - timing.median_ms / 1e3 if scope else 0.0
    return dict(framework=framework, device=torch.cuda.get_device_name() if cuda else "cpu",
                init_s=init_s, compile_s=compile_s,
                first_call_s=timing.first_s, ms=list(timing.times_ms), outputs=outputs,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                finite=outputs["nonfinite"] == 0, attention="torch SDPA",
                compiled={None: "eager", "model": f"torch.compile(model, backend="
                                                  f"{compile_backend!r})",
                          "blocks": f"compile_repeated_blocks(backend={compile_backend!r})"
                          }[scope],
                torch=torch.__version__)


def worker(args) -> None:
    """Run one framework on every case, write the list of rows as JSON."""
    rows = []
    for name, (config, shape) in cases(args.tiny).items():
        if args.cases and name not in args.cases:
            continue
        fw = args.worker
        print(f"[{fw}] {name}: S={tokens(config, shape)} ...", flush=True)
        try:
            if fw == "jax":
                row = run_jax(name, config, shape, args.reps, args.warmup)
            else:
                row = run_torch(name, config, shape, args.reps, args.warmup, fw,
                                args.compile_backend)
        except Exception as e:  # report and keep going with the other case
            row = dict(framework=fw, error=f"{type(e).__name__}: {e}")
        row.update(case=name, tokens=tokens(config, shape), latents=list(shape),
                   flops=model_flops(config, shape, TEXT_LEN))
        if "ms" in row:
            row.update(median_ms=statistics.median(row["ms"]), min_ms=min(row["ms"]))
            row["tflops"] = row["flops"] / row["median_ms"] / 1e9
        rows.append(row)
        print(f"[{fw}] {name}: {_summary(row)}", flush=True)
    with open(args.worker_out, "w") as f:
        json.dump(rows, f)


def _summary(row) -> str:
    if "ms" not in row:
        return row.get("skipped") or row.get("error", "?")
    return f"median {row['median_ms']:.1f} ms, {row['tflops']:.0f} TFLOP/s"


def table(rows) -> str:
    lines = ["| case | S | framework | attention | median ms | min ms | TFLOP/s | compile s "
             "| peak GB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['case']} | {r['tokens']} | {r['framework']} | | "
                         f"{r.get('skipped') or r.get('error')} | | | | |")
            continue
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        lines.append(f"| {r['case']} | {r['tokens']} | {r['framework']} | {r['attention']} | "
                     f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['tflops']:.0f} | "
                     f"{r['compile_s']:.1f} | {peak} |")
    return "\n".join(lines)


def jax_over(rows) -> dict:
    """{torch framework: {case: JAX median / its median}} for each case measured by both."""
    med = {(r["case"], r["framework"]): r["median_ms"] for r in rows if "median_ms" in r}
    out = {}
    for (case, fw), ms in med.items():
        if fw != "jax" and (case, "jax") in med:
            out.setdefault(fw, {})[case] = med[case, "jax"] / ms
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frameworks", default="jax,torch,torch-compile",
                   help=f"comma-separated, from {list(FRAMEWORKS)} (default: %(default)s)")
    p.add_argument("--cases", nargs="*", default=None, help="1.3b-480p 14b-720p (default: all)")
    p.add_argument("--worker-timeout", type=float, default=None,
                   help="seconds each framework's subprocess may run (default: no limit)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile's backend for the torch-compile frameworks "
                        "(default: %(default)s; \"eager\" traces without code generation, "
                        "a quick check of the path)")
    add_run_args(p, JSON_NAME, reps=5, warmup=2,
                 tiny="tiny model and latents: a CPU check that the script works")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return worker(args)
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = sorted(set(frameworks) - set(FRAMEWORKS))
    if unknown or not frameworks:
        p.error(f"--frameworks {args.frameworks!r}: known frameworks are {list(FRAMEWORKS)}")
    known_cases = list(cases(args.tiny))
    if args.cases and set(args.cases) - set(known_cases):
        p.error(f"--cases {args.cases}: known cases are {known_cases}")

    # No jax in this parent process: initialising its GPU backend would preallocate most
    # of the device memory and starve the workers.
    meta = run_meta(device=False, reps=args.reps, warmup=args.warmup,
                    worker_timeout_s=args.worker_timeout, compile_backend=args.compile_backend)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    rows = []
    try:
        for fw in frameworks:  # the JSON after each one: a later failure keeps the rest
            rows = sorted(rows + run_worker(fw, args),
                          key=lambda r: (str(r["case"]), FRAMEWORKS.index(r["framework"])))
            ratios = jax_over(rows)
            write_json(args.json, dict(meta=meta, rows=rows, jax_over=ratios))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(table(rows))
    for fw, per_case in ratios.items():
        for case, ratio in per_case.items():
            print(f"{case}: JAX / {fw} = {ratio:.2f}")
    return 0


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through run_worker's cleanup


def run_worker(fw: str, args) -> list[dict]:
    """One framework's rows from its own subprocess; one error row if it failed or ran
    past --worker-timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, "-m", "scripts.bench_model", "--worker", fw,
               "--reps", str(args.reps), "--warmup", str(args.warmup), "--worker-out", out,
               "--compile-backend", args.compile_backend]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--cases", *args.cases] if args.cases else []
        env = dict(os.environ)
        if fw != "jax":  # torch workers import jax (configs) but must not grab memory
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        # Its own process group, so that ending it also ends what it started (torch's
        # compile workers); ended too when this process is stopped (SIGTERM, e.g. by
        # `timeout`), which would not reach a group of its own.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.worker_timeout)
        except subprocess.TimeoutExpired:
            return [dict(case="*", tokens="", framework=fw,
                         error=f"worker timed out after {args.worker_timeout:g} s")]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if rc != 0 or not os.path.exists(out):
            return [dict(case="*", tokens="", framework=fw, error=f"worker exited with {rc}")]
        with open(out) as f:
            return json.load(f)


if __name__ == "__main__":
    sys.exit(main())
