"""One Wan2.1 transformer forward, JAX (ours) vs diffusers + torch SDPA, on one GPU.

Cases (batch 1, 512 text tokens, random bf16 weights, dense attention):
  1.3b-480p: Wan2.1-T2V-1.3B, latents 16 x 21 x 60 x 104 -> S = 21 x 30 x 52 = 32760 tokens
  14b-720p:  Wan2.1-T2V-14B,  latents 16 x 21 x 90 x 160 -> S = 21 x 45 x 80 = 75600 tokens

JAX: weights initialised on the device inside jit (never materialised on the host),
self- and cross-attention through cuDNN (`DenseAttention("cudnn")`). Torch: diffusers'
`WanTransformer3DModel` built on the GPU in bf16 (default dtype bf16, so the norms and
modulation tables are bf16 too, unlike a `from_pretrained` load; no effect on timing),
diffusers' default attention dispatch (torch SDPA), `torch.no_grad()`.
Each framework runs in its own subprocess so the 14B model (~28 GB in bf16) is never
held twice. Reported: median / min of N timed forwards after warm-up (JAX:
block_until_ready on every output; torch: cuda.synchronize; `scripts.timing`), compile
time, peak device memory, and model TFLOP/s (matmul + attention FLOPs). Every printed
figure is in the JSON (`--json`, default docs/bench/wan_forward_jax_vs_torch.json).

Usage (GPU machine):
  python -m scripts.bench_model
  python -m scripts.bench_model --cases 14b-720p --framework jax --reps 5
  python -m scripts.bench_model --tiny        # CPU smoke run of the whole script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from scripts.raw_data import add_run_args, run_meta, write_json

TEXT_LEN = 512
TEXT_DIM = 4096
JSON_NAME = "wan_forward_jax_vs_torch.json"


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


def run_torch(name, config: dict, shape, reps, warmup) -> dict:
    try:
        import torch
        from diffusers import WanTransformer3DModel
    except ImportError as e:
        return dict(framework="torch", skipped=f"diffusers/torch not installed ({e})")
    from scripts.timing import time_calls
    cuda = torch.cuda.is_available()
    if not cuda and name != "tiny":
        return dict(framework="torch", skipped="no CUDA device")
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
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        timing, out = time_calls(lambda: model(x, t, ctx, return_dict=False)[0], sync=sync,
                                 reps=reps, warmup=warmup)
    return dict(framework="torch", device=torch.cuda.get_device_name() if cuda else "cpu",
                init_s=init_s, compile_s=0.0, first_call_s=timing.first_s,
                ms=list(timing.times_ms),
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
                finite=bool(torch.isfinite(out.float()).all()), attention="torch SDPA",
                torch=torch.__version__)


def worker(args) -> None:
    """Run one framework on every case, write the list of rows as JSON."""
    rows = []
    for name, (config, shape) in cases(args.tiny).items():
        if args.cases and name not in args.cases:
            continue
        run = run_jax if args.framework == "jax" else run_torch
        print(f"[{args.framework}] {name}: S={tokens(config, shape)} ...", flush=True)
        try:
            row = run(name, config, shape, args.reps, args.warmup)
        except Exception as e:  # report and keep going with the other case
            row = dict(framework=args.framework, error=f"{type(e).__name__}: {e}")
        row.update(case=name, tokens=tokens(config, shape), latents=list(shape),
                   flops=model_flops(config, shape, TEXT_LEN))
        if "ms" in row:
            row.update(median_ms=statistics.median(row["ms"]), min_ms=min(row["ms"]))
            row["tflops"] = row["flops"] / row["median_ms"] / 1e9
        rows.append(row)
        print(f"[{args.framework}] {name}: {_summary(row)}", flush=True)
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


def jax_over_torch(rows) -> dict:
    """Per case measured by both: JAX median / torch median."""
    med = {(r["case"], r["framework"]): r["median_ms"] for r in rows if "median_ms" in r}
    return {case: med[case, "jax"] / med[case, "torch"] for case, fw in med
            if fw == "jax" and (case, "torch") in med}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=("jax", "torch", "both"), default="both")
    p.add_argument("--cases", nargs="*", default=None, help="1.3b-480p 14b-720p (default: all)")
    add_run_args(p, JSON_NAME, reps=5, warmup=2,
                 tiny="tiny model and latents: a CPU check that the script works")
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        return worker(args)

    # No jax in this parent process: initialising its GPU backend would preallocate most
    # of the device memory and starve the workers.
    frameworks = ["jax", "torch"] if args.framework == "both" else [args.framework]
    rows = []
    for fw in frameworks:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, "-m", "scripts.bench_model", "--framework", fw,
                   "--reps", str(args.reps), "--warmup", str(args.warmup), "--worker-out", out]
            cmd += ["--tiny"] if args.tiny else []
            cmd += ["--cases", *args.cases] if args.cases else []
            env = dict(os.environ)
            if fw == "torch":  # the torch worker imports jax (configs) but must not grab memory
                env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            rc = subprocess.run(cmd, env=env).returncode
            if rc != 0 or not os.path.exists(out):
                rows.append(dict(case="*", tokens="", framework=fw,
                                 error=f"worker exited with {rc}"))
                continue
            with open(out) as f:
                rows.extend(json.load(f))
    rows.sort(key=lambda r: (str(r["case"]), r["framework"]))
    ratios = jax_over_torch(rows)
    print()
    print(table(rows))
    for case, ratio in ratios.items():
        print(f"{case}: JAX / torch = {ratio:.2f}")
    write_json(args.json, dict(meta=run_meta(device=False, reps=args.reps, warmup=args.warmup),
                               rows=rows, jax_over_torch=ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
