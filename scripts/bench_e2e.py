"""End-to-end Wan2.1 text-to-video denoising time, dense vs SVG2 (GPU benchmark).

Random bf16 weights made on the device (no checkpoints can be downloaded here), 512
random text-embedding tokens, classifier-free guidance (two forwards per step), UniPC.
Random weights do not produce trained-model attention, so SVG2 runs with a fixed
density budget (`SVG2Config.target_density`, default 0.13, the density SVG2 reports
for Wan at top_p 0.9) as a control; `--top-p` runs the real rule instead.

Parts:
  14b-720p  (S = 75600, 40 layers): a 50-step CFG run is ~18 minutes dense, beyond the
            GPU time at hand, so it times single forwards (dense; SVG2 cold, i.e. the
            first sparse step with 50-iteration k-means; SVG2 warm) plus the attention
            pieces of one layer (cuDNN dense; SVG2 warm: k-means + selection + layout +
            kernel), and PROJECTS the 50-step totals from them:
              dense = steps x 2 x t_dense
              svg2  = n_dense x 2 x t_dense + (t_cold + t_warm) + (steps - n_dense - 1) x 2 x t_warm
            (n_dense = floor(dense_fraction x steps); with shared CFG caches the first
            sparse step's conditional pass is cold and its unconditional pass warm).
  1.3b-480p (S = 32760, 30 layers): the whole compiled 50-step loop, measured, dense vs
            SVG2 with shared CFG caches vs SVG2 with separate caches (cond / uncond);
            also the relative L2 distance of each SVG2 run's final latents to the dense
            run's (with random weights this shows only that the two cache choices
            differ, not which is better on a trained model).

Timing (`scripts.timing`): single forwards and attention layers are compiled once and
timed with every output returned and synchronised each call (forwards: median of
--reps; attention layers: --reps rounds of 4 back-to-back calls, one sync per round, as
bench_kernel); each compiled loop runs --loop-reps times (default once: a 50-step loop is
long enough that one run is the measurement). Every printed figure is in the JSON
(`--json`, default docs/bench/e2e_wan_dense_vs_svg2.json).

Usage (GPU machine):
  python -m scripts.bench_e2e
  python -m scripts.bench_e2e --parts 1.3b-480p --steps 50 --json e2e13.json
  python -m scripts.bench_e2e --tiny --json /tmp/e2e.json    # CPU smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from scripts.raw_data import add_run_args, run_meta, write_json
from scripts.timing import summarize, time_calls, time_jax
from svg2_jax.sampling import SamplerConfig

TEXT_LEN = 512
JSON_NAME = "e2e_wan_dense_vs_svg2.json"


def _parts(tiny: bool):
    from svg2_jax.models.wan import PRESETS, WanConfig
    if tiny:
        cfg = WanConfig(num_attention_heads=2, attention_head_dim=64, in_channels=16,
                        out_channels=16, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=3)
        return {"14b-720p": (cfg, (1, 16, 3, 16, 24), 8, 24, 5.0),
                "1.3b-480p": (cfg, (1, 16, 3, 16, 16), 8, 24, 3.0)}
    # name -> (config, latent shape, QC, KC, UniPC flow shift as in diffusers' Wan examples)
    return {"14b-720p": (PRESETS["wan2.1-t2v-14b"], (1, 16, 21, 90, 160), 300, 1000, 5.0),
            "1.3b-480p": (PRESETS["wan2.1-t2v-1.3b"], (1, 16, 21, 60, 104), 200, 1000, 3.0)}


def _models(cfg, svg2_cfg, dense_impl):
    from svg2_jax.layer_attention import DenseAttention, SVG2Attention
    from svg2_jax.models.wan import WanTransformer3DModel

    def build(attention):
        return lambda: WanTransformer3DModel(cfg, attention=attention,
                                             cross_attention_implementation=dense_impl,
                                             rngs=nnx.Rngs(0))

    dense_build = build(DenseAttention(dense_impl))
    svg2 = SVG2Attention(svg2_cfg, dense_layers=(0,), dense_implementation=dense_impl)
    gd_dense, _ = nnx.split(nnx.eval_shape(dense_build))
    gd_svg2, _ = nnx.split(nnx.eval_shape(build(svg2)))
    params = jax.jit(lambda: nnx.state(dense_build()))()  # on the device, bf16
    return gd_dense, gd_svg2, params, svg2


def _inputs(cfg, shape):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    latents = jax.random.normal(k1, shape, jnp.float32)
    ctx = jax.random.normal(k2, (shape[0], TEXT_LEN, cfg.text_dim), jnp.bfloat16)
    uncond = jax.random.normal(k3, (shape[0], TEXT_LEN, cfg.text_dim), jnp.bfloat16)
    return latents, ctx, uncond


def add_selection_args(ap, density=0.13) -> None:
    """--density (the fixed-budget control for random weights) and --top-p (SVG2's own
    rule instead), shared by the benchmarks of whole models."""
    ap.add_argument("--density", type=float, default=density,
                    help="fixed SVG2 density budget (the control for random weights)")
    ap.add_argument("--top-p", type=float, default=None,
                    help="use SVG2's top-p rule with this p instead of the fixed budget")


def svg2_config(qc, kc, args):
    """SVG2Config with QC / KC clusters and the selection of `add_selection_args`."""
    from svg2_jax import SVG2Config
    return SVG2Config(num_q_clusters=qc, num_k_clusters=kc,
                      target_density=None if args.top_p else args.density,
                      top_p=args.top_p or 0.9)


def selection_meta(args) -> dict:
    return dict(density_control=None if args.top_p else args.density, top_p=args.top_p)


def attention_pieces(s, h, d, qc, kc, args, dense_impl):
    """One layer's attention on structured q, k, v [1, S, H, 128]: cuDNN dense vs the
    SVG2 warm call (k-means 2 iterations + selection + layout + kernel), ms."""
    from scripts.bench_kernel import structured_qkv
    from svg2_jax import svg2_attention, svg2_kmeans
    q, k, v = structured_qkv(jax.random.PRNGKey(0), s, h, d)
    dense = functools.partial(jax.nn.dot_product_attention, implementation=dense_impl)
    cfg = svg2_config(qc, kc, args)
    cache = svg2_kmeans(q, k, None, cfg)
    timing = dict(reps=args.reps, back_to_back=4)
    t_dense, _ = time_jax(dense, q, k, v, **timing)
    t_warm, _ = time_jax(lambda q, k, v, c: svg2_attention(q, k, v, c, cfg), q, k, v, cache,
                         **timing)
    return dict(dense_attention_ms=t_dense.median_ms, svg2_attention_warm_ms=t_warm.median_ms,
                dense_attention_timing=t_dense.as_json(),
                svg2_attention_warm_timing=t_warm.as_json())


def part_forwards(name, cfg, shape, qc, kc, shift, args, dense_impl):
    """Single forwards of the full model and the 50-step projection."""
    from svg2_jax.models.wan import wan_forward
    from svg2_jax.sampling.schedulers import dense_warmup_steps

    gd_dense, gd_svg2, params, svg2 = _models(cfg, svg2_config(qc, kc, args), dense_impl)
    latents, ctx, _ = _inputs(cfg, shape)
    x = latents.astype(jnp.bfloat16)
    t = jnp.full((shape[0],), 900.0, jnp.float32)
    f_dense = functools.partial(wan_forward, gd_dense)
    f_svg2 = functools.partial(wan_forward, gd_svg2)
    state0 = svg2.init_state(cfg.num_layers, shape[0], cfg.num_attention_heads,
                             cfg.attention_head_dim)
    row = dict(part=name, mode="projected from single forwards", S=_seq(cfg, shape))
    t_dense, _ = time_jax(f_dense, params, x, t, ctx, reps=args.reps, warmup=1)
    row.update(dense_compile_and_first_s=t_dense.first_s, t_dense_s=t_dense.median_ms / 1e3,
               t_dense_all=[ms / 1e3 for ms in t_dense.times_ms],
               dense_outputs=t_dense.outputs)
    print(f"[{name}] dense forward {row['t_dense_s']:.3f} s", flush=True)
    # cold: every call from the uninitialised state (50-iteration k-means)
    t_cold, (_, state, _) = time_jax(f_svg2, params, x, t, ctx, state0, reps=1, warmup=1)
    t_warm, (_, _, dens) = time_jax(f_svg2, params, x, t, ctx, state, reps=args.reps,
                                    warmup=1)
    row.update(svg2_compile_and_first_s=t_cold.first_s, t_cold_s=t_cold.median_ms / 1e3,
               t_warm_s=t_warm.median_ms / 1e3,
               t_warm_all=[ms / 1e3 for ms in t_warm.times_ms],
               svg2_cold_outputs=t_cold.outputs, svg2_warm_outputs=t_warm.outputs)
    row["svg2_density_mean"] = float(jnp.mean(dens[1:]))        # sparse layers
    print(f"[{name}] SVG2 forward cold {row['t_cold_s']:.3f} s, warm {row['t_warm_s']:.3f} s, "
          f"density {row['svg2_density_mean']:.3f}", flush=True)
    s, h = row["S"], cfg.num_attention_heads
    row.update(attention_pieces(s, h, cfg.attention_head_dim, qc, kc, args, dense_impl))
    layers = cfg.num_layers
    row["dense_attention_s"] = layers * row["dense_attention_ms"] / 1e3
    row["rest_s"] = row["t_dense_s"] - row["dense_attention_s"]
    row["svg2_attention_s"] = (row["dense_attention_ms"]
                               + (layers - 1) * row["svg2_attention_warm_ms"]) / 1e3
    steps = args.steps
    n_dense = dense_warmup_steps(steps, args.dense_fraction)
    dense_total = steps * 2 * row["t_dense_s"]
    svg2_total = (n_dense * 2 * row["t_dense_s"] + row["t_cold_s"] + row["t_warm_s"]
                  + (steps - n_dense - 1) * 2 * row["t_warm_s"])
    row.update(steps=steps, dense_steps=n_dense, projected_dense_s=dense_total,
               projected_svg2_s=svg2_total, projected_speedup=dense_total / svg2_total,
               sparse_step_speedup=row["t_dense_s"] / row["t_warm_s"])
    print(f"[{name}] PROJECTED {steps} steps with CFG: dense {dense_total:.0f} s, SVG2 "
          f"{svg2_total:.0f} s ({row['projected_speedup']:.2f}x); per sparse step "
          f"{row['sparse_step_speedup']:.2f}x", flush=True)
    return row


def _seq(cfg, shape):
    import math
    return math.prod(n // p for n, p in zip(shape[2:], cfg.patch_size))


def part_loop(name, cfg, shape, qc, kc, shift, args, dense_impl):
    """The whole compiled loop: dense, SVG2 (shared CFG caches), SVG2 (separate)."""
    from svg2_jax.pipelines.wan import WanSampler
    from svg2_jax.sampling import SamplerConfig, check_finite
    from svg2_jax.sampling.schedulers import FlowUniPC, dense_warmup_steps

    gd_dense, gd_svg2, params, _ = _models(cfg, svg2_config(qc, kc, args), dense_impl)
    latents, ctx, uncond = _inputs(cfg, shape)
    row = dict(part=name, mode="measured full loop", S=_seq(cfg, shape), steps=args.steps)
    results = {}
    for label, gd, share in (("dense", gd_dense, True), ("svg2_shared", gd_svg2, True),
                             ("svg2_separate", gd_svg2, False)):
        sampler = WanSampler(nnx.merge(gd, params), FlowUniPC(flow_shift=shift),
                             SamplerConfig(num_steps=args.steps,
                                           dense_fraction=args.dense_fraction,
                                           share_cfg_cache=share, progress=False))
        t0 = time.perf_counter()
        compiled = sampler.lower(latents, ctx, uncond).compile()
        row[f"{label}_compile_s"] = time.perf_counter() - t0
        arguments = sampler.arguments(latents, ctx, uncond)
        # Compiled ahead of time, so one run is the measurement (a 50-step loop is
        # long enough that allocation on the first call is noise).
        timing, res = time_calls(
            lambda: compiled(*arguments),
            reps=args.loop_reps, warmup=0)
        row[f"{label}_s"] = timing.median_ms / 1e3
        row[f"{label}_all_s"] = [ms / 1e3 for ms in timing.times_ms]
        row[f"{label}_outputs"] = summarize(res)
        check_finite(res)
        results[label] = res.latents
        dens = res.density
        sparse_part = dens[dense_warmup_steps(args.steps, args.dense_fraction):, :, 1:]
        row[f"{label}_density_sparse_steps"] = float(jnp.mean(sparse_part))
        print(f"[{name}] {label}: {row[f'{label}_s']:.2f} s for {args.steps} steps "
              f"(density in sparse steps {row[f'{label}_density_sparse_steps']:.3f})", flush=True)
    ref = results["dense"]
    for label in ("svg2_shared", "svg2_separate"):
        row[f"{label}_speedup"] = row["dense_s"] / row[f"{label}_s"]
        row[f"{label}_rel_l2_to_dense"] = float(
            jnp.linalg.norm(results[label] - ref) / jnp.linalg.norm(ref))
    row["shared_vs_separate_rel_l2"] = float(
        jnp.linalg.norm(results["svg2_shared"] - results["svg2_separate"]) / jnp.linalg.norm(ref))
    print(f"[{name}] speedup shared {row['svg2_shared_speedup']:.2f}x, separate "
          f"{row['svg2_separate_speedup']:.2f}x; final latents vs dense (rel L2): shared "
          f"{row['svg2_shared_rel_l2_to_dense']:.3f}, separate "
          f"{row['svg2_separate_rel_l2_to_dense']:.3f}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="14b-720p,1.3b-480p")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dense-fraction", type=float, default=SamplerConfig().dense_fraction)
    add_selection_args(ap)
    ap.add_argument("--loop-reps", type=int, default=1, help="runs of each compiled loop")
    add_run_args(ap, JSON_NAME, reps=2, tiny="CPU smoke run on a tiny random model")
    args = ap.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    if not gpu and not args.tiny:
        print("bench_e2e needs a GPU (use --tiny for a CPU smoke run)", file=sys.stderr)
        return 2
    dense_impl = "cudnn" if gpu else None
    parts = _parts(args.tiny)
    rows = []
    for name in args.parts.split(","):
        cfg, shape, qc, kc, shift = parts[name]
        fn = part_forwards if name.startswith("14b") else part_loop
        rows.append(fn(name, cfg, shape, qc, kc, shift, args, dense_impl))
    meta = run_meta(**selection_meta(args))
    print(json.dumps(dict(meta=meta, rows=rows), indent=1, default=float))
    write_json(args.json, dict(meta=meta, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
