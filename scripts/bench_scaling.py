"""Multi-device scaling of one denoising step (issue #19): Wan2.1 14B 720p and HunyuanVideo
720p, dense and SVG2, on 1, 2, 4 and 8 devices (as many as exist), CFG parallel on / off,
density-balanced heads on / off.

Cases: wan14b-720p (latents [1, 16, 21, 90, 160] -> 75600 tokens, 40 heads, 40 layers, 512
text tokens, classifier-free guidance 5.0: two passes per step), hunyuan-720p (latents
[1, 16, 33, 90, 160] -> 118800 video + 256 text tokens, 24 heads, 20 dual + 40 single
blocks, embedded guidance: one pass). Random bf16 weights made on the devices inside one
jit, each device computing only its own shards (`MeshPlan.init_model`; one device: made
on it), so no device ever holds a whole model it does not keep.

Per case and mesh (`svg2_jax.sharding`: cfg x sp devices; 1 device = no mesh, the plain
single-device program): the pipeline's compiled loop with one step, timed from a warm
attention state (SVG2 centroids and, when balanced, the head assignment of the previous
step), i.e. one sparse step: CFG's two passes (sequential, or at once on the two cfg
groups), rebalancing included. Reported: per-step time (`scripts.timing.time_calls`,
median of --reps after --warmup), the compiled program's per-device memory (argument /
output / temp bytes of `memory_analysis`) and the measured peak where the device reports
one, parameters per device, mean density, the head imbalance of the step (slowest device
over the mean, contiguous split vs the density-balanced one), and the all-to-all share:
the step's all-to-alls (same shapes, same count, same mesh; 4 per attention layer and
pass) run alone in a scan over the layers, divided by the step time (an upper bound on
what the exchange costs: inside the step XLA may overlap it with compute).

SVG2 on random weights: the real top-p rule (--top-p, default 0.9) gives whatever density
random attention has; --target-density fixes the budget instead (then every head costs
the same and balancing has nothing to do). Real checkpoints have heads of very different
density; random weights cannot show how much balancing gains there.

--memory: no timing, no weights: the compiled program's per-device memory for 1, 2, 4, 8
devices from abstract shapes only (`jax.ShapeDtypeStruct`s with shardings), on whatever
backend runs it. On a CPU (XLA_FLAGS=--xla_force_host_platform_device_count=8) attention
is compiled as stand-ins with the memory profile of the GPU kernels rather than XLA's CPU
attention, which holds [B, H, S, S] logits: dense attention over query blocks
(`svg2_jax.tiled_attention`), SVG2's pure-JAX backend; both hold [heads, 256, S] logits
at a time (the GPU kernels hold less).

Every printed figure is in the JSON (--json, default
docs/bench/scaling_multi_device_wan14b_hunyuan_720p.json; --memory:
docs/bench/memory_per_device_wan14b_hunyuan_720p.json).

Usage:
  python -m scripts.bench_scaling                                   # GPU machine, 8 GPUs
  python -m scripts.bench_scaling --cases wan14b-720p --devices 8 --reps 3
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m scripts.bench_scaling --memory
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m scripts.bench_scaling --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scripts.raw_data import add_run_args, run_meta, write_json
from scripts.timing import summarize, time_calls, time_jax
from svg2_jax import SVG2Config
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sampling import SamplerConfig
from svg2_jax.sharding.balance import balance_report, padded_heads
from svg2_jax.sharding.mesh import CFG, SEQ, MeshPlan, make_mesh
from svg2_jax.sharding.rules import bytes_per_device
from svg2_jax.tiled_attention import TILE, TILED

JSON_NAME = "scaling_multi_device_wan14b_hunyuan_720p.json"
MEMORY_JSON_NAME = "memory_per_device_wan14b_hunyuan_720p.json"
DEVICE_COUNTS = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Case:
    """family: "wan" or "hunyuan"; latents: [B, C, F, H, W]; text_len (text_valid real
    tokens, HunyuanVideo); qc, kc: SVG2's clusters; guidance: Wan's CFG scale (HunyuanVideo:
    its embedded guidance); shift: the scheduler's flow shift."""

    family: str
    config: object
    latents: tuple[int, ...]
    text_len: int
    text_valid: int
    qc: int
    kc: int
    guidance: float
    shift: float

    @property
    def cfg_passes(self) -> int:
        return 2 if self.family == "wan" else 1

    @property
    def video_tokens(self) -> int:
        _, _, f, h, w = self.latents
        pt, ph, pw = self.config.patch
        return (f // pt) * (h // ph) * (w // pw)

    @property
    def attention_layers(self) -> int:
        cfg = self.config
        return cfg.num_layers + getattr(cfg, "num_single_layers", 0)


def cases(tiny: bool) -> dict[str, Case]:
    from svg2_jax.models.hunyuan import PRESETS as HY, HunyuanVideoConfig
    from svg2_jax.models.wan import PRESETS as WAN, WanConfig

    if tiny:  # 6 heads: padded to 8 on 4 and 8 devices
        wan = WanConfig(num_attention_heads=6, attention_head_dim=8, in_channels=4,
                        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)
        hy = HunyuanVideoConfig(in_channels=4, out_channels=4, num_attention_heads=6,
                                attention_head_dim=8, num_layers=1, num_single_layers=1,
                                num_refiner_layers=1, text_embed_dim=24,
                                pooled_projection_dim=20, rope_axes_dim=(2, 2, 4))
        return {"wan14b-720p": Case("wan", wan, (1, 4, 2, 8, 8), 8, 8, 4, 8, 5.0, 5.0),
                "hunyuan-720p": Case("hunyuan", hy, (1, 4, 1, 8, 8), 8, 5, 4, 8, 6.0, 7.0)}
    return {"wan14b-720p": Case("wan", WAN["wan2.1-t2v-14b"], (1, 16, 21, 90, 160), 512, 512,
                                300, 1000, 5.0, 5.0),
            "hunyuan-720p": Case("hunyuan", HY["hunyuan-video-t2v-720p"], (1, 16, 33, 90, 160),
                                 256, 64, 400, 1000, 6.0, 7.0)}


def attention_of(kind: str, case: Case, args, cpu_standins: bool):
    """The layer attention of `kind`; on a CPU with cpu_standins, dense attention over
    query blocks (`svg2_jax.tiled_attention`) and SVG2's pure-JAX backend with blocks of
    the same size."""
    dense_impl = ("cudnn" if jax.default_backend() == "gpu" else
                  TILED if cpu_standins else None)
    if kind == "dense":
        return DenseAttention(dense_impl)
    svg2 = SVG2Config(num_q_clusters=case.qc, num_k_clusters=case.kc, top_p=args.top_p,
                      target_density=args.target_density)
    if cpu_standins:
        svg2 = dataclasses.replace(svg2, backend="jax", kmeans_impl="xla", q_tile=TILE)
    return SVG2Attention(svg2, dense_layers=(0,), dense_implementation=dense_impl)


def model_maker(case: Case, attention):
    if case.family == "wan":
        from svg2_jax.models.wan import WanTransformer3DModel as cls
    else:
        from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel as cls
    return lambda: cls(case.config, attention=attention, rngs=nnx.Rngs(0))


def sampler_of(case: Case, model, plan: MeshPlan | None):
    """The family's pipeline sampler with one sparse step, separate CFG caches."""
    from svg2_jax.sampling import FlowMatchEuler, FlowUniPC

    config = SamplerConfig(num_steps=1, dense_fraction=0.0, share_cfg_cache=False,
                           progress=False,
                           guidance_scale=case.guidance if case.family == "wan" else 1.0)
    if case.family == "wan":
        from svg2_jax.pipelines.wan import WanSampler
        return WanSampler(model, FlowUniPC(flow_shift=case.shift), config, mesh=plan)
    from svg2_jax.pipelines.hunyuan import HunyuanSampler
    return HunyuanSampler(model, FlowMatchEuler(shift=case.shift, pipeline_sigmas=True),
                          config, embedded_guidance=case.guidance, mesh=plan)


def inputs_of(case: Case, abstract: bool):
    """(latents, the sampler's other inputs): Wan (context, uncond_context), HunyuanVideo
    ((prompt_embeds, mask, pooled),). Random, or their ShapeDtypeStructs."""
    b, cfg = case.latents[0], case.config
    make = jax.ShapeDtypeStruct if abstract else (
        lambda shape, dtype: jax.random.normal(jax.random.PRNGKey(sum(shape)), shape, dtype))
    latents = make(case.latents, jnp.float32)
    if case.family == "wan":
        text = (b, case.text_len, cfg.text_dim)
        return latents, (make(text, jnp.bfloat16), make(text, jnp.bfloat16))
    mask = (jax.ShapeDtypeStruct((b, case.text_len), jnp.int32) if abstract else
            (jnp.arange(case.text_len)[None] < case.text_valid).astype(jnp.int32).repeat(b, 0))
    return latents, ((make((b, case.text_len, cfg.text_embed_dim), jnp.bfloat16), mask,
                      make((b, cfg.pooled_projection_dim), jnp.bfloat16)),)


def meshes(case: Case, counts) -> list[tuple[int, int]]:
    """(devices, cfg groups) to run: every count, and CFG parallel where there are two
    passes and at least two devices."""
    out = []
    for n in counts:
        out.append((n, 1))
        if case.cfg_passes == 2 and n >= 2 and n % 2 == 0:
            out.append((n, 2))
    return out


def plan_of(n: int, cfg: int, balance: bool) -> MeshPlan | None:
    return None if n == 1 else MeshPlan(make_mesh(n // cfg, cfg), balance=balance)


def memory_fields(compiled) -> dict:
    """Per-device bytes of a compiled (SPMD, so per-device) program."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    fields = dict(argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
                  temp_bytes=m.temp_size_in_bytes, alias_bytes=m.alias_size_in_bytes)
    fields["total_bytes"] = (fields["argument_bytes"] + fields["output_bytes"]
                             + fields["temp_bytes"] - fields["alias_bytes"])
    return fields


def _loop_args(case: Case, sampler, latents, extra) -> tuple:
    """The compiled loop's arguments before the state: (params, latents, context,
    uncond_context) as the family's sampler builds them."""
    if case.family == "wan":
        return sampler.arguments(latents, *extra, abstract=True)[:-1]
    return sampler.params, latents, extra[0], None


def _peak_bytes():
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None


def all_to_all_s(case: Case, plan: MeshPlan, args) -> dict:
    """The step's head-parallel exchanges alone: per attention layer and pass, three
    all-to-alls in (q, k, v) and one out, on [B, S/P, Hp, D] bf16 video tokens, scanned
    over the layers (each layer's input depends on the previous one's output, so none is
    hoisted or merged). Returns {"all_to_all_ms", its timing}."""
    from jax.sharding import NamedSharding, PartitionSpec

    cfg = case.config
    heads, d = cfg.num_attention_heads, cfg.attention_head_dim
    hp, s = padded_heads(heads, plan.sp), padded_heads(case.video_tokens, plan.sp)
    b = case.latents[0] * (2 if plan.cfg_parallel else 1)
    layers = case.attention_layers * (1 if plan.cfg_parallel else case.cfg_passes)
    spec = PartitionSpec(CFG if plan.cfg_parallel else None, SEQ)

    def exchange(x):
        def layer(x, _):
            qkv = [jax.lax.all_to_all(x * (i + 1), SEQ, 2, 1, tiled=True) for i in range(3)]
            return jax.lax.all_to_all(sum(qkv), SEQ, 1, 2, tiled=True), None
        return jax.lax.scan(layer, x, None, length=layers)[0]

    run = jax.shard_map(exchange, mesh=plan.mesh, in_specs=spec, out_specs=spec)
    x = jax.jit(lambda: jnp.ones((b, s, hp, d), jnp.bfloat16),
                out_shardings=NamedSharding(plan.mesh, spec))()
    timing, _ = time_jax(run, x, reps=args.reps, warmup=args.warmup)
    return dict(all_to_all_ms=timing.median_ms, all_to_all_layers=layers,
                all_to_all_timing=timing.as_json())


def time_step(case: Case, model, kind: str, plan, args) -> dict:
    """One warm sparse step of the compiled loop (see the module docstring)."""
    latents, extra = inputs_of(case, abstract=False)
    sampler = sampler_of(case, model, plan)
    t0 = time.perf_counter()
    compiled = sampler.lower(latents, *extra).compile()
    compile_s = time.perf_counter() - t0
    call = _loop_args(case, sampler, latents, extra)
    cold = sampler.init_state(case.latents[0])
    first = compiled(*call, cold)  # cold step: centroids, order
    warm = first.attn_state[0]
    timing, result = time_calls(lambda: compiled(*call, warm), reps=args.reps,
                                warmup=args.warmup)
    density = np.asarray(result.density)  # [1, passes, L, B, H]
    row = dict(step_ms=timing.median_ms, compile_s=compile_s, timing=timing.as_json(),
               outputs=summarize(result.latents), density_mean=float(density.mean()),
               params_bytes_per_device=max(bytes_per_device(sampler.params).values()),
               peak_bytes=_peak_bytes(), **memory_fields(compiled))
    if kind == "svg2" and plan is not None:
        steps = np.concatenate([np.asarray(first.density), density])
        report = balance_report(steps, plan.sp)[-1]
        row.update(imbalance_contiguous=report["contiguous"],
                   imbalance_balanced=report["balanced"])
    return row


def run_timing(args) -> list[dict]:
    rows = []
    available = jax.device_count()
    counts = [n for n in (args.devices or DEVICE_COUNTS) if n <= available]
    for name in args.cases:
        case = cases(args.tiny)[name]
        for n, cfg in meshes(case, counts):
            balances = (False, True) if n // cfg > 1 else (False,)
            model = None
            for kind in args.attention:
                attention = attention_of(kind, case, args, cpu_standins=False)
                for balance in (balances if kind == "svg2" else (False,)):
                    plan = plan_of(n, cfg, balance)
                    if model is None:  # random bf16 weights, each device its own shards
                        make = model_maker(case, attention)
                        model = (plan.init_model(make) if plan is not None else
                                 nnx.merge(*nnx.split(nnx.eval_shape(make))[:1],
                                           jax.jit(lambda: nnx.state(make()))()))
                    model.attention = attention
                    row = dict(case=name, devices=n, cfg_parallel=cfg == 2, sp=n // cfg,
                               attention=kind, balance=balance)
                    try:
                        row.update(time_step(case, model, kind, plan, args))
                        if plan is not None:
                            row.update(all_to_all_s(case, plan, args))
                            row["all_to_all_share"] = row["all_to_all_ms"] / row["step_ms"]
                    except Exception as e:  # one failing mesh (e.g. out of memory) is a row
                        row["error"] = f"{type(e).__name__}: {e}"[:500]
                    print(_timing_line(row), flush=True)
                    rows.append(row)
            del model
            gc.collect()
    return rows


def _timing_line(row) -> str:
    head = (f"[{row['case']}] {row['devices']} dev (cfg {'on' if row['cfg_parallel'] else 'off'},"
            f" sp {row['sp']}) {row['attention']}{' balanced' if row['balance'] else ''}: ")
    if "error" in row:
        return head + row["error"]
    extra = ""
    if "all_to_all_share" in row:
        extra += f", all-to-all {100 * row['all_to_all_share']:.1f}%"
    if "imbalance_balanced" in row:
        extra += (f", imbalance {row['imbalance_contiguous']:.2f} -> "
                  f"{row['imbalance_balanced']:.2f}")
    return (head + f"step {row['step_ms']:.1f} ms, density {row['density_mean']:.3f}, "
            f"{row.get('total_bytes', 0) / 2**30:.2f} GiB/device compiled{extra}")


def memory_row(case: Case, n: int, cfg: int, kind: str, args) -> dict:
    """Per-device memory of the compiled one-step loop from shapes alone."""
    cpu = jax.default_backend() == "cpu"
    attention = attention_of(kind, case, args, cpu_standins=cpu)
    model = nnx.eval_shape(model_maker(case, attention))
    plan = plan_of(n, cfg, balance=True)
    sampler = sampler_of(case, model, plan)
    latents, extra = inputs_of(case, abstract=True)
    t0 = time.perf_counter()
    compiled = sampler.lower(latents, *extra).compile()
    params = (sampler.params if plan is not None else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(
                                           jax.devices()[0])), sampler.params))
    return dict(case=case_name(case, args), devices=n, cfg_parallel=cfg == 2, sp=n // cfg,
                attention=kind, backend=jax.default_backend(),
                attention_standin=(f"dense attention {TILED} ({TILE} query rows), SVG2 "
                                   f"backend jax (q_tile {TILE})") if cpu else None,
                compile_s=time.perf_counter() - t0,
                params_bytes_per_device=max(bytes_per_device(params).values()),
                **memory_fields(compiled))


def case_name(case: Case, args) -> str:
    return next(name for name, c in cases(args.tiny).items() if c == case)


def run_memory(args) -> list[dict]:
    rows = []
    counts = [n for n in (args.devices or DEVICE_COUNTS) if n <= jax.device_count()]
    for name in args.cases:
        case = cases(args.tiny)[name]
        for n, cfg in meshes(case, counts):
            for kind in args.attention:
                row = memory_row(case, n, cfg, kind, args)
                print(f"[{name}] {n} dev (cfg {'on' if cfg == 2 else 'off'}) {kind}: "
                      f"{row['total_bytes'] / 2**30:.2f} GiB/device (params "
                      f"{row['params_bytes_per_device'] / 2**30:.2f}, temp "
                      f"{row['temp_bytes'] / 2**30:.2f}); compiled in {row['compile_s']:.0f} s",
                      flush=True)
                rows.append(row)
                gc.collect()
    return rows


def memory_table(rows) -> str:
    """Markdown: per case and attention, GiB per device by device count (CFG off / on)."""
    lines = ["| model | attention | devices | CFG parallel | params GiB | temp GiB | "
             "total GiB |", "|---|---|---|---|---|---|---|"]
    gib = lambda x: f"{x / 2**30:.1f}"
    for r in rows:
        lines.append(f"| {r['case']} | {r['attention']} | {r['devices']} | "
                     f"{'on' if r['cfg_parallel'] else 'off'} | "
                     f"{gib(r['params_bytes_per_device'])} | {gib(r['temp_bytes'])} | "
                     f"{gib(r['total_bytes'])} |")
    return "\n".join(lines)


def what_it_shows(args) -> str:
    """The JSON's own statement of what its figures are (and are not)."""
    cpu = jax.default_backend() == "cpu"
    if args.memory:
        return ("per-device bytes computed by XLA's memory analysis of the compiled "
                "one-step loop from abstract shapes; not measured"
                + ("; compiled for the CPU, attention as stand-ins (attention_standin)"
                   if cpu else "") + (" (tiny configs)" if args.tiny else ""))
    if cpu:
        return ("CPU (forced host devices): a correctness run of the benchmark's code "
                "paths; its times, imbalances and shares say nothing about GPUs")
    return "measured" + (" (tiny configs)" if args.tiny else "")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=["wan14b-720p", "hunyuan-720p"],
                   choices=("wan14b-720p", "hunyuan-720p"))
    p.add_argument("--attention", nargs="*", default=["dense", "svg2"],
                   choices=("dense", "svg2"))
    p.add_argument("--devices", nargs="*", type=int,
                   help=f"device counts (default {DEVICE_COUNTS}, as many as exist)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--target-density", type=float,
                   help="SVG2 with a fixed density budget instead of the top-p rule")
    p.add_argument("--memory", action="store_true",
                   help="per-device memory from abstract shapes only (no weights, no timing)")
    add_run_args(p, JSON_NAME, reps=5, warmup=1,
                 tiny="tiny configs on whatever devices exist (CPU: force host devices)")
    args = p.parse_args(argv)
    if args.memory and args.json == p.get_default("json"):
        from scripts.raw_data import default_path
        args.json = default_path(MEMORY_JSON_NAME)
    rows = run_memory(args) if args.memory else run_timing(args)
    meta = run_meta(devices=jax.device_count(), processes=jax.process_count(),
                    mode="memory" if args.memory else "timing", tiny=args.tiny,
                    top_p=args.top_p, target_density=args.target_density,
                    what=what_it_shows(args))
    write_json(args.json, dict(meta=meta, rows=rows))
    if args.memory:
        print(memory_table(rows))
    failed = [r for r in rows if "error" in r]
    return 1 if failed and len(failed) == len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
