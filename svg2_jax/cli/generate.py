"""svg2-generate: Wan2.1 or HunyuanVideo text-to-video with dense or SVG2 attention, the
whole denoising loop compiled once.

Without --checkpoint it runs a TINY RANDOM Wan (2 layers, output is noise) with random
text embeddings, so a fresh install shows the whole path (compile, SVG2 warm-up then
sparse steps, density report, mp4) in seconds. With a checkpoint (orbax from
svg2-convert, a diffusers transformer folder, or an official Wan2.1 file) it needs text
embeddings: --text-embeddings (umT5 states saved as .npy, [L, 4096]) or --prompt with a
local umT5 (--text-encoder, transformers + torch). --vae (a local diffusers
AutoencoderKLWan folder) decodes to RGB; without it the mp4 is a latent preview and
the latents are saved as .npy.

HunyuanVideo (--family hunyuan, or a hunyuan preset): text comes as --text-embeddings
.npz with prompt_embeds [T, 4096], prompt_attention_mask [T] and pooled_prompt_embeds
[768] (its Llama + CLIP encoders are not wired in); --guidance is its embedded
(distilled) guidance, there is no negative prompt; --vae takes an
AutoencoderKLHunyuanVideo folder.

Flags left out take the library's defaults (SVG2Config, SamplerConfig, the family's
preset; svg2_jax/cli/defaults.py says where a family departs from them): --help lists
them.

Examples:
  svg2-generate --out out/tiny.mp4
  svg2-generate --checkpoint ckpt/ --model wan2.1-t2v-1.3b --text-embeddings emb.npy \\
      --negative-embeddings neg.npy --height 480 --width 832 --frames 81 --steps 50 \\
      --attention svg2 --vae Wan2.1-T2V-1.3B-Diffusers/vae --out out/video.mp4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from svg2_jax.backends import is_hopper
from svg2_jax.cli import defaults as dflt
from svg2_jax.cli.text import (PROG, encode_prompt, fail, load_embeddings,
                               load_hunyuan_text)
from svg2_jax.config import BACKENDS, SVG2Config
from svg2_jax.layer_attention import SVG2Attention
from svg2_jax.sampling import SamplerConfig

DTYPES = ("bfloat16", "float32")  # the first is the models' own default
# The S x S masked backend is for tests on tiny inputs, not for a video.
SPARSE_BACKENDS = tuple(b for b in BACKENDS if b != "masked_dense")
_SVG2, _SAMPLER = SVG2Config(), SamplerConfig()
SCHEDULERS = tuple(dict.fromkeys(s for f in dflt.FAMILIES.values() for s in f.schedulers))
_DENSE_LAYERS = SVG2Attention.__dataclass_fields__["dense_layers"].default


def parse_args(argv=None):
    d = dflt.describe
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="orbax dir, diffusers transformer dir/file, or "
                   "official Wan2.1 file; omitted: a tiny random model (output is noise)")
    g.add_argument("--model", help="preset or diffusers config.json of the checkpoint "
                   f"(default: {d(lambda f: f.model)})")
    g.add_argument("--family", choices=tuple(dflt.FAMILIES),
                   help="model family (default: from --model, else wan)")
    g.add_argument("--dtype", default=DTYPES[0], choices=DTYPES)
    g = p.add_argument_group("devices")
    g.add_argument("--mesh", help="run on many devices: sp=N (sequence / head parallel), "
                   "cfg=2 (CFG parallel: needs --separate-cfg-cache), balance=0 (no "
                   "density-balanced heads), e.g. sp=4,cfg=2; default: one device")
    g.add_argument("--distributed", help="several hosts: 'auto' (SLURM, Open MPI) or "
                   "HOST:PORT,NUM_PROCESSES,PROCESS_ID, same command on every host")
    g = p.add_argument_group("conditioning")
    g.add_argument("--prompt", help="text prompt (needs --text-encoder)")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--text-encoder", help="local umT5 folder (transformers), for --prompt")
    g.add_argument("--text-embeddings", help=".npy [L, text_dim]: precomputed prompt states")
    g.add_argument("--negative-embeddings", help=".npy [L, text_dim] for the unconditional "
                   "pass (default: zeros)")
    g = p.add_argument_group("video")
    g.add_argument("--height", type=int, help=f"default {d(lambda f: f.video.height)}")
    g.add_argument("--width", type=int, help=f"default {d(lambda f: f.video.width)}")
    g.add_argument("--frames", type=int, help=f"1 + 4k; default {d(lambda f: f.video.frames)}")
    g.add_argument("--steps", type=int, help=f"default {d(lambda f: f.sampler.num_steps)} "
                   "(SamplerConfig.num_steps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float,
                   help=f"Wan: classifier-free guidance; HunyuanVideo: embedded guidance "
                   f"(default {d(lambda f: f.guidance)})")
    g.add_argument("--scheduler", choices=SCHEDULERS,
                   help=f"default and choices: {d(lambda f: '/'.join(f.schedulers))}")
    g.add_argument("--shift", type=float,
                   help=f"flow shift (default below 720p: {d(lambda f: f.shift)}; at 720p: "
                   f"{d(lambda f: f.shift_hd)})")
    g.add_argument("--fps", type=int, help=f"default {d(lambda f: f.video.fps)}")
    g = p.add_argument_group("attention (defaults: SVG2Config and SamplerConfig)")
    g.add_argument("--attention", default="svg2", choices=("dense", "svg2"))
    g.add_argument("--qc", type=int, help="query clusters (default " + d(
        lambda f: f"{f.svg2.num_q_clusters} below 720p, {f.svg2_hd.num_q_clusters} at 720p",
        lambda f: f.svg2.num_q_clusters) + ")")
    g.add_argument("--kc", type=int, help="key clusters (default "
                   f"{d(lambda f: f.svg2.num_k_clusters)})")
    g.add_argument("--top-p", type=float, help=f"default {_SVG2.top_p}")
    g.add_argument("--min-kc-ratio", type=float, help=f"default {_SVG2.min_kc_ratio}")
    g.add_argument("--target-density", type=float,
                   help="instead of top-p, keep per query cluster the heaviest key "
                   "clusters up to this fraction of the keys (a fixed compute budget)")
    g.add_argument("--sparse-backend", choices=SPARSE_BACKENDS,
                   help=f"SVG2 sparse attention (default {_SVG2.backend}: the Hopper kernel "
                   "on sm_90 GPUs, else the exact pure-JAX path)")
    g.add_argument("--kmeans-iters-cold", type=int, help=f"default {_SVG2.kmeans_iters_cold}")
    g.add_argument("--kmeans-iters-warm", type=int, help=f"default {_SVG2.kmeans_iters_warm}")
    g.add_argument("--dense-fraction", type=float,
                   help="first floor(fraction x steps) steps dense (default "
                   f"{d(lambda f: f.sampler.dense_fraction)}, as the reference)")
    g.add_argument("--dense-layers", help="comma-separated always-dense layers (default "
                   f"{','.join(map(str, _DENSE_LAYERS))})")
    g.add_argument("--kmeans-during-warmup", action="store_const", const=True,
                   default=_SAMPLER.kmeans_during_warmup,
                   help="cluster during the last dense step (reference: zero_step_kmeans_init)")
    g.add_argument("--separate-cfg-cache", dest="share_cfg_cache", action="store_const",
                   const=False, default=_SAMPLER.share_cfg_cache,
                   help="one centroid cache per CFG pass instead of a shared one")
    g = p.add_argument_group("output")
    g.add_argument("--vae", help="local diffusers VAE folder (AutoencoderKLWan or "
                   "AutoencoderKLHunyuanVideo), to decode to RGB")
    g.add_argument("--out", default="out/video.mp4")
    g.add_argument("--report", help="JSON report (default: OUT with .json)")
    g.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Settings:
    """A run with every default filled in: the family's defaults overridden by the flags."""

    family: str
    model: str
    tiny: bool
    height: int
    width: int
    frames: int
    fps: int
    scheduler: str
    shift: float
    guidance: float
    svg2: SVG2Config | None        # None: dense attention
    dense_layers: tuple[int, ...]
    sampler: SamplerConfig


def _given(**values):
    return {k: v for k, v in values.items() if v is not None}


def resolve(args) -> Settings:
    """The family's defaults (`svg2_jax.cli.defaults`), overridden by the flags given.
    Bad values raise ValueError (from the configs) or exit with a message."""
    tiny = args.checkpoint is None
    family = args.family
    if family is None:
        from svg2_jax.models.hunyuan import is_hunyuan_config
        family = "hunyuan" if args.model and is_hunyuan_config(args.model) else "wan"
    fam = dflt.FAMILIES[family]
    fam = dflt.tiny(fam) if tiny else fam
    scheduler = args.scheduler or fam.schedulers[0]
    if scheduler not in fam.schedulers:
        fail(f"{family} samples with --scheduler {' or '.join(fam.schedulers)}, "
             f"not {scheduler}")
    height = fam.video.height if args.height is None else args.height
    width = fam.video.width if args.width is None else args.width
    svg2 = None
    if args.attention == "svg2":
        svg2 = dataclasses.replace(
            fam.svg2_for(height, width),
            **_given(num_q_clusters=args.qc, num_k_clusters=args.kc, top_p=args.top_p,
                     min_kc_ratio=args.min_kc_ratio, target_density=args.target_density,
                     backend=args.sparse_backend, kmeans_iters_cold=args.kmeans_iters_cold,
                     kmeans_iters_warm=args.kmeans_iters_warm))
    dense_layers = (_DENSE_LAYERS if args.dense_layers is None else
                    tuple(int(x) for x in args.dense_layers.split(",") if x.strip()))
    guidance = fam.guidance if args.guidance is None else args.guidance
    sampler = dataclasses.replace(
        fam.sampler, **_given(num_steps=args.steps, dense_fraction=args.dense_fraction),
        kmeans_during_warmup=args.kmeans_during_warmup,
        share_cfg_cache=args.share_cfg_cache, progress=not args.no_progress)
    if family == "wan":
        sampler = dataclasses.replace(sampler, guidance_scale=guidance)
    if svg2 is None:
        sampler = dataclasses.replace(sampler, dense_fraction=0.0)
    return Settings(
        family=family, model=args.model or fam.model, tiny=tiny, height=height, width=width,
        frames=fam.video.frames if args.frames is None else args.frames,
        fps=fam.video.fps if args.fps is None else args.fps, scheduler=scheduler,
        shift=fam.shift_for(height, width) if args.shift is None else args.shift,
        guidance=guidance, svg2=svg2, dense_layers=dense_layers, sampler=sampler)


def sparse_backend(cfg: SVG2Config | None) -> str | None:
    """The sparse attention implementation SVG2 layers will run (None for dense)."""
    if cfg is None:
        return None
    if cfg.backend != "auto":
        return cfg.backend
    return "pallas (Hopper kernel)" if is_hopper() else "jax (exact, O(S^2))"


def build_attention(run: Settings, seed: int, jax):
    from svg2_jax.layer_attention import DenseAttention

    dense_impl = "cudnn" if jax.default_backend() == "gpu" else None
    if run.svg2 is None:
        return DenseAttention(dense_impl)
    if run.svg2.backend == "pallas" and not is_hopper():
        raise ValueError("--sparse-backend pallas needs a Hopper (sm_90) GPU; this device is "
                         f"{jax.devices()[0].device_kind!r} (use auto or jax)")
    return SVG2Attention(run.svg2, dense_layers=run.dense_layers, seed=seed,
                         dense_implementation=dense_impl)


def _wan_setup(args, run: Settings, attention, dtype, nnx, rng, mesh):
    from svg2_jax.models.wan import WanTransformer3DModel, load
    from svg2_jax.pipelines import wan as pipe
    from svg2_jax.sampling import FlowMatchEuler, FlowUniPC

    if run.tiny:
        model = WanTransformer3DModel(pipe.TINY_CONFIG, attention=attention, dtype=dtype,
                                      param_dtype=dtype, rngs=nnx.Rngs(args.seed))
    else:
        model = load(args.checkpoint, run.model, dtype=dtype, mesh=mesh)
        model.attention = attention
    config = model.config
    if args.text_embeddings:
        context = load_embeddings(args.text_embeddings, config.text_dim, "--text-embeddings")
    elif args.prompt is not None:
        if not args.text_encoder:
            fail("--prompt needs --text-encoder (a local umT5 folder); or pass "
                 "--text-embeddings")
        context = encode_prompt(args.prompt, args.text_encoder)
    elif run.tiny:
        context = rng.normal(size=(1, 16, config.text_dim)).astype(np.float32)
    else:
        fail("a real model needs --text-embeddings or --prompt")
    if args.negative_embeddings:
        uncond = load_embeddings(args.negative_embeddings, config.text_dim,
                                 "--negative-embeddings")
    elif args.prompt is not None and args.text_encoder:
        uncond = encode_prompt(args.negative_prompt, args.text_encoder)
    else:
        uncond = np.zeros_like(context)
    if uncond.shape != context.shape:
        fail(f"negative embeddings {uncond.shape} must match the prompt embeddings "
             f"{context.shape}")
    scheduler = (FlowUniPC(flow_shift=run.shift) if run.scheduler == "unipc"
                 else FlowMatchEuler(shift=run.shift))
    sampler = pipe.WanSampler(model, scheduler, run.sampler, mesh=mesh)
    return model, pipe, sampler, (context, uncond)


def _hunyuan_setup(args, run: Settings, attention, dtype, nnx, rng, mesh):
    from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel, load
    from svg2_jax.pipelines import hunyuan as pipe
    from svg2_jax.sampling import FlowMatchEuler

    for flag in ("prompt", "text_encoder", "negative_embeddings"):
        if getattr(args, flag):
            fail(f"--{flag.replace('_', '-')} is not supported for HunyuanVideo: pass "
                 "--text-embeddings .npz (embedded guidance, no negative prompt)")
    if run.tiny:
        model = HunyuanVideoTransformer3DModel(pipe.TINY_CONFIG, attention=attention,
                                               dtype=dtype, param_dtype=dtype,
                                               rngs=nnx.Rngs(args.seed))
    else:
        model = load(args.checkpoint, run.model, dtype=dtype, mesh=mesh)
        model.attention = attention
    config = model.config
    if args.text_embeddings:
        text = load_hunyuan_text(args.text_embeddings, config)
    elif run.tiny:
        text = (rng.normal(size=(1, 16, config.text_embed_dim)).astype(np.float32),
                np.arange(16)[None] < 10,
                rng.normal(size=(1, config.pooled_projection_dim)).astype(np.float32))
    else:
        fail("HunyuanVideo needs --text-embeddings (.npz)")
    scheduler = FlowMatchEuler(shift=run.shift, pipeline_sigmas=True)
    sampler = pipe.HunyuanSampler(model, scheduler, run.sampler, embedded_guidance=run.guidance,
                                  mesh=mesh)
    return model, pipe, sampler, (text,)


def main(argv=None):
    args = parse_args(argv)
    try:
        run = resolve(args)
    except ValueError as e:
        fail(str(e))
    hy = run.family == "hunyuan"

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from svg2_jax.pipelines import video
    from svg2_jax.sharding import distributed
    from svg2_jax.sharding.balance import balance_report
    from svg2_jax.sharding.mesh import parse_mesh
    from svg2_jax.sampling import check_finite
    from svg2_jax.sampling.schedulers import dense_warmup_steps

    dtype = getattr(jnp, args.dtype)
    try:
        if args.distributed:  # before anything touches a device
            distributed.initialize(args.distributed)
        mesh = parse_mesh(args.mesh) if args.mesh else None
        attention = build_attention(run, args.seed, jax)
    except ValueError as e:
        fail(str(e))
    if not run.tiny and not os.path.exists(args.checkpoint):
        fail(f"checkpoint not found: {args.checkpoint}")
    if run.tiny:
        print(f"{PROG}: no --checkpoint: using a TINY RANDOM {run.family} model. Its "
              "output is noise; this run only shows the pipeline.", file=sys.stderr)

    t0 = time.perf_counter()
    setup = _hunyuan_setup if hy else _wan_setup
    try:
        model, pipe, sampler, inputs = setup(args, run, attention, dtype, nnx,
                                             np.random.default_rng(args.seed), mesh)
        c, f, h, w = pipe.latent_shape(model.config, run.height, run.width, run.frames)
    except ValueError as e:
        fail(str(e))
    load_s = time.perf_counter() - t0
    seq = pipe.sequence_length(model.config, run.height, run.width, run.frames)
    if run.svg2 is not None and seq < max(run.svg2.num_q_clusters, run.svg2.num_k_clusters):
        fail(f"{seq} video tokens are fewer than the clusters (--qc "
             f"{run.svg2.num_q_clusters}, --kc {run.svg2.num_k_clusters}); lower them or "
             "raise the size")

    latents = video.initial_noise(args.seed, (1, c, f, h, w))
    inputs = jax.tree.map(jnp.asarray, inputs)
    t1 = time.perf_counter()
    sampler.lower(latents, *inputs).compile()
    compile_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    result = sampler(latents, *inputs)
    jax.block_until_ready(result.latents)
    jax.effects_barrier()
    sample_s = time.perf_counter() - t2
    result = dataclasses.replace(result, attn_state=None, **distributed.fetch(dict(
        latents=result.latents, density=result.density,
        first_nonfinite_step=result.first_nonfinite_step)))
    try:
        check_finite(result)
    except FloatingPointError as e:
        fail(str(e))
    if not distributed.is_main_process():  # process 0 writes the files
        return None

    lat = np.asarray(result.latents)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.vae:
        frames = pipe.decode_with_diffusers_vae(lat, args.vae)[0]
        video_kind = "decoded by the VAE"
    else:
        frames = video.latent_preview(lat)[0]
        video_kind = "latent preview (first 3 latent channels; no --vae given)"
        np.save(os.path.splitext(args.out)[0] + ".latents.npy", lat)
    video.write_mp4(frames, args.out, fps=run.fps)

    steps = run.sampler.num_steps
    density = np.asarray(result.density)  # [steps, passes, L, B, H]
    per_step_layer = density.mean(axis=(3, 4))  # [steps, passes, L]
    n_dense = dense_warmup_steps(steps, run.sampler.dense_fraction)
    cfg = run.svg2
    report = {
        "model": (f"TINY RANDOM {run.family} (not a real model: output is noise)" if run.tiny
                  else {"checkpoint": os.path.abspath(args.checkpoint), "preset": run.model}),
        "family": run.family,
        "video": {"height": run.height, "width": run.width, "frames": run.frames,
                  "fps": run.fps, "latent_shape": [c, f, h, w], "video_tokens": seq,
                  "mp4": args.out, "mp4_content": video_kind},
        "sampling": {"steps": steps, "scheduler": run.scheduler, "shift": run.shift,
                     ("embedded_guidance" if hy else "guidance"): run.guidance,
                     "seed": args.seed, "dense_warmup_steps": n_dense},
        "attention": {"kind": args.attention,
                      **({} if cfg is None else {
                          "qc": cfg.num_q_clusters, "kc": cfg.num_k_clusters,
                          "top_p": cfg.top_p, "min_kc_ratio": cfg.min_kc_ratio,
                          "dense_layers": list(run.dense_layers),
                          "kmeans_iters_cold": cfg.kmeans_iters_cold,
                          "kmeans_iters_warm": cfg.kmeans_iters_warm,
                          "kmeans_during_warmup": run.sampler.kmeans_during_warmup,
                          "shared_cfg_cache": run.sampler.share_cfg_cache,
                          "target_density": cfg.target_density}),
                      "sparse_backend": sparse_backend(cfg)},
        "timings_s": {"load": round(load_s, 3), "compile": round(compile_s, 3),
                      "sample": round(sample_s, 3), "device": str(jax.devices()[0])},
        "mesh": None if mesh is None else {
            **mesh.describe(), **({} if cfg is None or mesh.sp == 1 else {
                "head_imbalance_per_step": balance_report(density, mesh.sp)})},
        "density_mean_sparse_steps": (float(per_step_layer[n_dense:].mean())
                                      if n_dense < steps else 1.0),
        "density_per_step_pass_layer": per_step_layer.round(5).tolist(),
    }
    report_path = args.report or os.path.splitext(args.out)[0] + ".json"
    with open(report_path, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"{PROG}: wrote {args.out} ({video_kind}) and {report_path}; compile "
          f"{compile_s:.1f} s, sampling {sample_s:.1f} s, mean density after warm-up "
          f"{report['density_mean_sparse_steps']:.3f}", file=sys.stderr)
    return report


def cli():
    """Console entry point: exit status 0 on success (main() returns the report dict)."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
