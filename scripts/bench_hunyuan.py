"""HunyuanVideo 720p, 129 frames, on one GPU: per-layer dense vs SVG2 joint attention, and
per step (one full-model forward) dense vs SVG2.

Shapes: latents [1, 16, 33, 90, 160] (1280 x 720, 129 frames through the 4x / 8x VAE) ->
Sv = 33 x 45 x 80 = 118800 video tokens, + T = 256 text tokens (the pipeline's padded
length; --text-valid of them real), 24 heads x 128: one attention layer's q, k, v are
[1, 119056, 24, 128].

SVG2 runs QC=400, KC=1000 (the reference's HunyuanVideo 720p setting) with the default
backend ("auto": the Hopper kernel for the video-video part on an H200, the text part
dense and merged through the log-sum-exp). Random weights and inputs do not give
trained-model attention (top-p 0.9 keeps ~0.9 of the pairs), so, as `bench_e2e`, the
selection is the fixed-budget control `--density` (default 0.13) unless `--top-p` asks
for SVG2's own rule.

Attention (random bf16 q, k, v of that shape, through `svg2_jax.layer_attention`, exactly
as the model calls it: num_text=T, text_lengths=[text_valid]):
  dense: `DenseAttention("cudnn")` = `jax.nn.dot_product_attention(implementation="cudnn")`
    with the padded text keys masked;
  svg2-cold: `SVG2Attention` without centroids (k-means from random tokens, 50
    iterations: the first sparse step);
  svg2-warm: the same from the previous call's centroids (2 iterations: every later step).
Full model (`--model-attention`): `HunyuanVideoTransformer3DModel(PRESETS[
"hunyuan-video-t2v-720p"])` with random bf16 weights created on the device in one jit
(never on the host), the pure `hunyuan_forward` jitted:
  dense: `DenseAttention("cudnn")`;
  svg2-cold: `SVG2Attention` (layer 0 dense, as the reference) from a fresh state: the
    first sparse step, one call;
  svg2-warm: the same from the cold call's state: every later step.

Reported: median / min of --reps (model: --model-reps) timed calls after --warmup
(--model-warmup) untimed ones, each function compiled once, every output returned and
synchronised (`scripts.timing`), compile time, density (fraction of query-key pairs
computed; the model's: mean over its attention layers), TFLOP/s (attention: dense FLOPs x
density; model: matmuls + attention x density), speed-up over dense, peak device memory.
Every printed figure is in the JSON (`--json`, default
docs/bench/hunyuan_720p_attention_and_forward.json).

Usage:
  python -m scripts.bench_hunyuan                                   # GPU machine
  python -m scripts.bench_hunyuan --parts attention --reps 5
  python -m scripts.bench_hunyuan --parts model --model-reps 1 --model-warmup 1
  python -m scripts.bench_hunyuan --tiny                           # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp

from scripts.bench_e2e import add_selection_args, selection_meta, svg2_config
from scripts.raw_data import add_run_args, run_meta, write_json
from scripts.timing import summarize, time_calls, time_jax

from svg2_jax.layer_attention import DenseAttention, SVG2Attention

FULL = dict(latents=(1, 16, 33, 90, 160), text_len=256, qc=400, kc=1000)
TINY = dict(latents=(1, 4, 3, 6, 10), text_len=12, qc=4, kc=8)
MODEL_ATTENTIONS = ("dense", "svg2")
JSON_NAME = "hunyuan_720p_attention_and_forward.json"


def model_config(tiny: bool):
    from svg2_jax.models.hunyuan import PRESETS, HunyuanVideoConfig

    if tiny:
        return HunyuanVideoConfig(in_channels=4, out_channels=4, num_attention_heads=2,
                                  attention_head_dim=16, num_layers=2, num_single_layers=2,
                                  num_refiner_layers=1, text_embed_dim=24,
                                  pooled_projection_dim=20, rope_axes_dim=(4, 6, 6))
    return PRESETS["hunyuan-video-t2v-720p"]


def video_tokens(config, latents) -> int:
    _, _, f, h, w = latents
    pt, ph, pw = config.patch
    return (f // pt) * (h // ph) * (w // pw)


def model_flops(config, sv: int, t: int, batch: int, density: float = 1.0) -> float:
    """Forward FLOPs of the dual and single blocks (matmuls, and attention x density)."""
    d, m, s = config.inner_dim, config.mlp_dim, sv + t
    attention = 4 * s * s * d * density
    dual = (2 * s * d * d * 4          # q, k, v, out projections (video and text weights)
            + 2 * s * d * m * 2        # FFNs
            + attention)
    single = (2 * s * d * (3 * d + m)  # linear1: q, k, v and MLP in
              + 2 * s * (d + m) * d    # linear2
              + attention)
    return batch * (config.num_layers * dual + config.num_single_layers * single)


def _peak_gb():
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None


def describe(cfg) -> str:
    rule = (f"density {cfg.target_density} (fixed budget)" if cfg.target_density is not None
            else f"top_p {cfg.top_p}")
    return f"SVG2 QC={cfg.num_q_clusters} KC={cfg.num_k_clusters} {rule}"


def bench_attention(config, shape: dict, text_valid: int, impl, svg2_cfg, reps,
                    warmup) -> list[dict]:
    """Dense, SVG2 cold and SVG2 warm on random bf16 q, k, v of one layer."""
    sv, t = video_tokens(config, shape["latents"]), shape["text_len"]
    h, d = config.num_attention_heads, config.attention_head_dim
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(kx, (1, sv + t, h, d), jnp.bfloat16) for kx in keys)
    lengths = jnp.array([text_valid], jnp.int32)
    flops = 4.0 * (sv + t) ** 2 * d * h
    svg2 = SVG2Attention(svg2_cfg, dense_layers=(), dense_implementation=impl)
    layer = 1  # any layer: per-layer state, same shapes everywhere

    def call(attention):
        def run(q, k, v, state):
            return attention(q, k, v, state, layer, num_text=t, text_lengths=lengths)
        return run

    cold_state = jax.tree.map(lambda a: a[0], svg2.init_state(1, 1, h, d))  # one layer
    # cold and warm run the same function: the state's `initialized` flag picks the path
    warm_state = jax.jit(call(svg2))(q, k, v, cold_state)[1]
    rows = []
    for name, attention, state in (("dense", DenseAttention(impl), None),
                                   ("svg2-cold", svg2, cold_state),
                                   ("svg2-warm", svg2, warm_state)):
        timing, (_, _, density) = time_jax(call(attention), q, k, v, state, reps=reps,
                                           warmup=warmup)
        density = float(jnp.mean(density))
        rows.append(dict(part="attention", case=name,
                         attention=(f"DenseAttention({impl!r})" if name == "dense" else
                                    describe(svg2_cfg)),
                         tokens=sv + t, density=density, peak_gb=_peak_gb(),
                         **_timing_fields(timing, flops * density)))
        print(f"[attention] {name}: {_summary(rows[-1])}", flush=True)
    for row in rows[1:]:
        row["speedup_vs_dense"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def _timing_fields(timing, flops) -> dict:
    """A row's timing columns from a `scripts.timing.Timing` of a call of `flops`."""
    return dict(ms=list(timing.times_ms), median_ms=timing.median_ms,
                min_ms=min(timing.times_ms), compile_s=timing.compile_s,
                first_call_s=timing.first_s - timing.compile_s, outputs=timing.outputs,
                flops=flops, tflops=flops / timing.median_ms / 1e9)


def bench_model(config, shape: dict, text_valid: int, impl, svg2_cfg, attentions, reps,
                warmup, rows: list) -> None:
    """Full forwards (one denoising step each) with the `attentions` of MODEL_ATTENTIONS,
    all on the same random weights and inputs; appends a row per case to `rows` as soon
    as it is measured."""
    from flax import nnx

    from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel, hunyuan_forward

    def build(attention):
        return lambda: HunyuanVideoTransformer3DModel(config, attention=attention,
                                                      rngs=nnx.Rngs(0))

    dense_build = build(DenseAttention(impl))
    t0 = time.perf_counter()
    params = jax.jit(lambda: nnx.state(dense_build()))()  # created on the device, bf16
    jax.block_until_ready(params)
    init_s = time.perf_counter() - t0
    b, t = shape["latents"][0], shape["text_len"]
    sv = video_tokens(config, shape["latents"])
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    args = (jax.random.normal(keys[0], shape["latents"], jnp.bfloat16),
            jnp.full((b,), 500.0, jnp.float32),
            jax.random.normal(keys[1], (b, t, config.text_embed_dim), jnp.bfloat16),
            (jnp.arange(t)[None] < text_valid).astype(jnp.int32).repeat(b, 0),
            jax.random.normal(keys[2], (b, config.pooled_projection_dim), jnp.bfloat16),
            jnp.full((b,), 6000.0, jnp.float32) if config.guidance_embeds else None)
    dense_ms = None

    def add(case, attention, timing, density):
        row = dict(part="model", case=case, attention=attention, tokens=sv + t,
                   init_s=init_s, density=density, peak_gb=_peak_gb(),
                   finite=timing.outputs["nonfinite"] == 0,
                   **_timing_fields(timing, model_flops(config, sv, t, b, density)))
        if dense_ms is not None and case != "dense":
            row["speedup_vs_dense"] = dense_ms / row["median_ms"]
        rows.append(row)
        print(f"[model] {case}: {_summary(row)}", flush=True)

    if "dense" in attentions:
        graphdef, _ = nnx.split(nnx.eval_shape(dense_build))
        timing, _ = time_jax(functools.partial(hunyuan_forward, graphdef), params, *args,
                             reps=reps, warmup=warmup)
        add("dense", f"DenseAttention({impl!r})", timing, 1.0)
        dense_ms = timing.median_ms
    if "svg2" in attentions:
        svg2 = SVG2Attention(svg2_cfg, dense_implementation=impl)  # layer 0 dense
        graphdef, _ = nnx.split(nnx.eval_shape(build(svg2)))
        state0 = svg2.init_state(config.num_attention_layers, b, config.num_attention_heads,
                                 config.attention_head_dim)
        # one compiled step for both: the state's `initialized` flags pick cold or warm
        t0 = time.perf_counter()
        step = jax.jit(functools.partial(hunyuan_forward, graphdef)).lower(
            params, *args, state0).compile()
        compile_s = time.perf_counter() - t0
        cold, out = time_calls(lambda: step(params, *args, state0), reps=1, warmup=0)
        add("svg2-cold", describe(svg2_cfg), _compiled(cold, compile_s, out),
            float(jnp.mean(out[2])))
        state = out[1]
        warm, out = time_calls(lambda: step(params, *args, state), reps=reps, warmup=warmup)
        add("svg2-warm", describe(svg2_cfg), _compiled(warm, 0.0, out),
            float(jnp.mean(out[2])))


def _compiled(timing, compile_s, out):
    """A `time_calls` Timing of an ahead-of-time compiled call as `time_jax` gives it:
    compile_s apart and inside first_s, the outputs summarised."""
    return dataclasses.replace(timing, first_s=compile_s + timing.first_s,
                               compile_s=compile_s, outputs=summarize(out))


def _summary(row) -> str:
    return (f"median {row['median_ms']:.2f} ms, density {row['density']:.3f}, "
            f"{row['tflops']:.1f} TFLOP/s")


def all_layers_s(rows, num_attention_layers: int) -> dict:
    """Per attention case: its median x the model's attention layers, in seconds."""
    return {r["case"]: r["median_ms"] * num_attention_layers / 1e3 for r in rows
            if r["part"] == "attention" and "median_ms" in r}


def table(rows, num_attention_layers: int) -> str:
    lines = ["| part | case | attention | tokens | median ms | min ms | x dense | density | "
             "TFLOP/s | compile s | peak GB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['part']} | | | | {r.get('error')} | | | | | | |")
            continue
        peak = "-" if r.get("peak_gb") is None else f"{r['peak_gb']:.1f}"
        speed = f"{r['speedup_vs_dense']:.2f}" if "speedup_vs_dense" in r else "-"
        lines.append(f"| {r['part']} | {r['case']} | {r['attention']} | {r['tokens']} | "
                     f"{r['median_ms']:.2f} | {r['min_ms']:.2f} | {speed} | "
                     f"{r['density']:.3f} | {r['tflops']:.1f} | {r['compile_s']:.1f} | {peak} |")
    layers = all_layers_s(rows, num_attention_layers)
    if layers:
        lines.append("")
        lines.append(f"all {num_attention_layers} attention layers: " + ", ".join(
            f"{name} {sec:.2f} s" for name, sec in layers.items()))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", nargs="*", choices=("attention", "model"),
                   default=["attention", "model"])
    p.add_argument("--model-attention", nargs="*", choices=MODEL_ATTENTIONS,
                   default=list(MODEL_ATTENTIONS), help="the full forwards to time")
    p.add_argument("--text-valid", type=int, default=None,
                   help="real (unpadded) text tokens of the 256 (default: all)")
    add_selection_args(p)
    add_run_args(p, JSON_NAME, reps=5, warmup=2,
                 tiny="tiny model and shapes: a CPU check that the script works")
    p.add_argument("--model-reps", type=int, default=None,
                   help="timed forwards per model case (default: --reps)")
    p.add_argument("--model-warmup", type=int, default=None,
                   help="untimed forwards before them (default: --warmup)")
    args = p.parse_args(argv)

    gpu = jax.default_backend() == "gpu"
    if not args.tiny and not gpu:
        sys.exit("bench_hunyuan needs a GPU (use --tiny for a CPU smoke run)")
    impl = "cudnn" if gpu else None
    config = model_config(args.tiny)
    shape = TINY if args.tiny else FULL
    text_valid = shape["text_len"] if args.text_valid is None else args.text_valid
    if not 1 <= text_valid <= shape["text_len"]:
        sys.exit(f"--text-valid must be in 1..{shape['text_len']}")
    svg2_cfg = svg2_config(shape["qc"], shape["kc"], args)
    model_reps = args.reps if args.model_reps is None else args.model_reps
    model_warmup = args.warmup if args.model_warmup is None else args.model_warmup
    print(f"device {jax.devices()[0].device_kind}; video tokens "
          f"{video_tokens(config, shape['latents'])} + text {shape['text_len']} "
          f"({text_valid} real); {describe(svg2_cfg)}", flush=True)
    meta = run_meta(reps=args.reps, warmup=args.warmup, model_reps=model_reps,
                    model_warmup=model_warmup, **selection_meta(args))
    rows = []

    def save():  # after each part: a later failure or a kill keeps what was measured
        write_json(args.json, dict(
            meta=meta, text_valid=text_valid, shape=shape, config=config.to_diffusers(),
            rows=rows, all_attention_layers_s=all_layers_s(rows, config.num_attention_layers)))

    for part in ("attention", "model"):
        if part not in args.parts:
            continue
        try:
            if part == "attention":
                rows += bench_attention(config, shape, text_valid, impl, svg2_cfg, args.reps,
                                        args.warmup)
            else:
                bench_model(config, shape, text_valid, impl, svg2_cfg, args.model_attention,
                            model_reps, model_warmup, rows)
        except Exception as e:  # report (e.g. out of memory), keep the rows measured
            rows.append(dict(part=part, error=f"{type(e).__name__}: {e}"))
            print(f"[{part}] failed: {rows[-1]['error']}", flush=True)
        save()
    print()
    print(table(rows, config.num_attention_layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
