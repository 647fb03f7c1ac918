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

Examples:
  svg2-generate --out out/tiny.mp4
  svg2-generate --checkpoint ckpt/ --model wan2.1-t2v-1.3b --text-embeddings emb.npy \\
      --negative-embeddings neg.npy --height 480 --width 832 --frames 81 --steps 50 \\
      --attention svg2 --vae Wan2.1-T2V-1.3B-Diffusers/vae --out out/video.mp4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

SCHEDULERS = ("unipc", "euler")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="svg2-generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", help="orbax dir, diffusers transformer dir/file, or "
                   "official Wan2.1 file; omitted: a tiny random model (output is noise)")
    g.add_argument("--model", default=None, help="preset of the checkpoint (default "
                   "wan2.1-t2v-1.3b, or hunyuan-video-t2v-720p with --family hunyuan)")
    g.add_argument("--family", choices=("wan", "hunyuan"), default=None,
                   help="model family (default: from --model, else wan)")
    g.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    g = p.add_argument_group("conditioning")
    g.add_argument("--prompt", help="text prompt (needs --text-encoder)")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--text-encoder", help="local umT5 folder (transformers), for --prompt")
    g.add_argument("--text-embeddings", help=".npy [L, text_dim]: precomputed prompt states")
    g.add_argument("--negative-embeddings", help=".npy [L, text_dim] for the unconditional "
                   "pass (default: zeros)")
    g = p.add_argument_group("video")
    g.add_argument("--height", type=int, default=None, help="default 480 (tiny: 128)")
    g.add_argument("--width", type=int, default=None, help="default 832 (tiny: 192)")
    g.add_argument("--frames", type=int, default=None, help="1 + 4k; default 81 (tiny: 17)")
    g.add_argument("--steps", type=int, default=None, help="default 50 (tiny: 10)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=None,
                   help="Wan: classifier-free guidance (5.0); HunyuanVideo: embedded "
                   "guidance (6.0)")
    g.add_argument("--scheduler", default=None, choices=SCHEDULERS,
                   help="Wan: unipc (default) or euler; HunyuanVideo: euler")
    g.add_argument("--shift", type=float, default=None,
                   help="flow shift; Wan: 3.0 below 720p, 5.0 at 720p; HunyuanVideo: 7.0")
    g.add_argument("--fps", type=int, default=16)
    g = p.add_argument_group("attention")
    g.add_argument("--attention", default="svg2", choices=("dense", "svg2"))
    g.add_argument("--qc", type=int, default=None, help="query clusters (default 300 at "
                   "720p, 200 below; tiny: 16)")
    g.add_argument("--kc", type=int, default=None, help="key clusters (default 1000; tiny: 48)")
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--min-kc-ratio", type=float, default=0.10)
    g.add_argument("--target-density", type=float, default=None,
                   help="instead of top-p, keep per query cluster the heaviest key "
                   "clusters up to this fraction of the keys (a fixed compute budget)")
    g.add_argument("--sparse-backend", default="auto",
                   choices=("auto", "pallas", "jax", "pallas_reference"),
                   help="SVG2 sparse attention: auto = the Hopper kernel on sm_90 GPUs, "
                   "else the exact pure-JAX path")
    g.add_argument("--kmeans-iters-cold", type=int, default=50)
    g.add_argument("--kmeans-iters-warm", type=int, default=2)
    g.add_argument("--dense-fraction", type=float, default=None,
                   help="first floor(fraction x steps) steps dense (Wan T2V 0.2, "
                   "HunyuanVideo 0.1, as the reference)")
    g.add_argument("--dense-layers", default="0", help="comma-separated always-dense layers")
    g.add_argument("--kmeans-during-warmup", action="store_true",
                   help="cluster during the last dense step (reference: zero_step_kmeans_init)")
    g.add_argument("--separate-cfg-cache", action="store_true",
                   help="one centroid cache per CFG pass instead of a shared one")
    g = p.add_argument_group("output")
    g.add_argument("--vae", help="local diffusers AutoencoderKLWan folder, to decode to RGB")
    g.add_argument("--out", default="out/video.mp4")
    g.add_argument("--report", default=None, help="JSON report (default: OUT with .json)")
    g.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _defaults(args, tiny):
    if args.family is None:
        args.family = "hunyuan" if (args.model or "").startswith("hunyuan") else "wan"
    hy = args.family == "hunyuan"
    if args.model is None:
        args.model = "hunyuan-video-t2v-720p" if hy else "wan2.1-t2v-1.3b"
    for name, wan, hunyuan in (("guidance", 5.0, 6.0), ("dense_fraction", 0.2, 0.1),
                               ("scheduler", "unipc", "euler")):
        if getattr(args, name) is None:
            setattr(args, name, hunyuan if hy else wan)
    if hy and args.scheduler != "euler":
        raise SystemExit("svg2-generate: HunyuanVideo samples with --scheduler euler")
    fill = dict(height=128 if tiny else 480, width=192 if tiny else 832,
                frames=17 if tiny else 81, steps=10 if tiny else 50,
                kc=48 if tiny else 1000)
    for name, value in fill.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    hd = max(args.height, args.width) >= 1280 or min(args.height, args.width) >= 720
    if args.qc is None:
        args.qc = 16 if tiny else (400 if hy and hd else 300 if hd else 200)
    if args.shift is None:
        args.shift = 7.0 if hy else (5.0 if hd else 3.0)


def _load_npy(path, text_dim, what):
    if not os.path.exists(path):
        raise SystemExit(f"svg2-generate: {what} file not found: {path}")
    x = np.load(path)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != text_dim:
        raise SystemExit(f"svg2-generate: {what} must be [L, {text_dim}] (or [1, L, "
                         f"{text_dim}]), got {x.shape} from {path}")
    if not np.isfinite(x).all():
        raise SystemExit(f"svg2-generate: {what} in {path} contains NaN/Inf")
    return x.astype(np.float32)


def encode_prompt(prompt: str, encoder_path: str, max_length: int = 512):
    """umT5 states of a prompt as diffusers' WanPipeline computes them (padded to
    max_length, padding positions zeroed)."""
    try:
        import torch
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError as e:
        raise SystemExit("svg2-generate: --prompt needs torch and transformers "
                         "(pip install transformers) and a local umT5 folder") from e
    tok = AutoTokenizer.from_pretrained(encoder_path)
    enc = UMT5EncoderModel.from_pretrained(encoder_path, torch_dtype=torch.float32)
    t = tok([prompt], padding="max_length", max_length=max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(t.input_ids, t.attention_mask).last_hidden_state
    n = int(t.attention_mask.sum())
    h[:, n:] = 0
    return h.numpy()


def sparse_backend(args) -> str | None:
    """The sparse attention implementation SVG2 layers will run (None for dense)."""
    if args.attention != "svg2":
        return None
    if args.sparse_backend != "auto":
        return args.sparse_backend
    return "pallas (Hopper kernel)" if is_hopper() else "jax (exact, O(S^2))"


def is_hopper() -> bool:
    from svg2_jax.backends import is_hopper as hopper
    return hopper()


def build_attention(args, jax):
    from svg2_jax import SVG2Config
    from svg2_jax.layer_attention import DenseAttention, SVG2Attention

    dense_impl = "cudnn" if jax.default_backend() == "gpu" else None
    if args.attention == "dense":
        return DenseAttention(dense_impl)
    cfg = SVG2Config(num_q_clusters=args.qc, num_k_clusters=args.kc, top_p=args.top_p,
                     min_kc_ratio=args.min_kc_ratio, kmeans_iters_cold=args.kmeans_iters_cold,
                     kmeans_iters_warm=args.kmeans_iters_warm,
                     target_density=args.target_density, backend=args.sparse_backend)
    if cfg.backend == "pallas" and not is_hopper():
        raise ValueError("--sparse-backend pallas needs a Hopper (sm_90) GPU; this device is "
                         f"{jax.devices()[0].device_kind!r} (use auto or jax)")
    layers = tuple(int(x) for x in args.dense_layers.split(",") if x.strip())
    return SVG2Attention(cfg, dense_layers=layers, seed=args.seed,
                         dense_implementation=dense_impl)


def _load_hunyuan_text(path, config):
    """.npz with prompt_embeds [T, D], prompt_attention_mask [T], pooled_prompt_embeds [P]
    (a leading batch axis of 1 is accepted) -> batched float32 arrays, checked."""
    if not os.path.exists(path):
        raise SystemExit(f"svg2-generate: --text-embeddings file not found: {path}")
    with np.load(path) as z:
        missing = {"prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds"} - set(z)
        if missing:
            raise SystemExit(f"svg2-generate: {path} lacks {sorted(missing)} (HunyuanVideo "
                             "needs prompt_embeds, prompt_attention_mask, pooled_prompt_embeds)")
        emb, mask, pooled = (np.asarray(z[k]) for k in ("prompt_embeds",
                                                         "prompt_attention_mask",
                                                         "pooled_prompt_embeds"))
    emb = emb[None] if emb.ndim == 2 else emb
    mask = mask[None] if mask.ndim == 1 else mask
    pooled = pooled[None] if pooled.ndim == 1 else pooled
    if (emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != config.text_embed_dim
            or mask.shape != emb.shape[:2] or pooled.shape != (1, config.pooled_projection_dim)):
        raise SystemExit(f"svg2-generate: {path}: expected prompt_embeds [T, "
                         f"{config.text_embed_dim}], prompt_attention_mask [T], "
                         f"pooled_prompt_embeds [{config.pooled_projection_dim}]; got "
                         f"{emb.shape}, {mask.shape}, {pooled.shape}")
    if not (np.isfinite(emb).all() and np.isfinite(pooled).all()):
        raise SystemExit(f"svg2-generate: text embeddings in {path} contain NaN/Inf")
    if mask.sum() < 1:
        raise SystemExit(f"svg2-generate: {path}: the attention mask has no real token")
    return emb.astype(np.float32), mask.astype(bool), pooled.astype(np.float32)


def _wan_setup(args, tiny, attention, sampler_cfg, dtype, nnx, rng):
    from svg2_jax.models.wan import WanTransformer3DModel, load
    from svg2_jax.pipelines import wan as pipe
    from svg2_jax.sampling import FlowMatchEuler, FlowUniPC

    if tiny:
        model = WanTransformer3DModel(pipe.TINY_CONFIG, attention=attention, dtype=dtype,
                                      param_dtype=dtype, rngs=nnx.Rngs(args.seed))
    else:
        model = load(args.checkpoint, args.model, dtype=dtype)
        model.attention = attention
    config = model.config
    if args.text_embeddings:
        context = _load_npy(args.text_embeddings, config.text_dim, "--text-embeddings")
    elif args.prompt is not None:
        if not args.text_encoder:
            raise SystemExit("svg2-generate: --prompt needs --text-encoder (a local umT5 "
                             "folder); or pass --text-embeddings")
        context = encode_prompt(args.prompt, args.text_encoder)
    elif tiny:
        context = rng.normal(size=(1, 16, config.text_dim)).astype(np.float32)
    else:
        raise SystemExit("svg2-generate: a real model needs --text-embeddings or --prompt")
    if args.negative_embeddings:
        uncond = _load_npy(args.negative_embeddings, config.text_dim, "--negative-embeddings")
    elif args.prompt is not None and args.text_encoder:
        uncond = encode_prompt(args.negative_prompt, args.text_encoder)
    else:
        uncond = np.zeros_like(context)
    if uncond.shape != context.shape:
        raise SystemExit(f"svg2-generate: negative embeddings {uncond.shape} must match the "
                         f"prompt embeddings {context.shape}")
    scheduler = (FlowUniPC(flow_shift=args.shift) if args.scheduler == "unipc"
                 else FlowMatchEuler(shift=args.shift))
    sampler = pipe.WanSampler(model, scheduler, sampler_cfg)
    inputs = (context, uncond)
    return model, pipe, sampler, inputs


def _hunyuan_setup(args, tiny, attention, sampler_cfg, dtype, nnx, rng):
    from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel, load
    from svg2_jax.pipelines import hunyuan as pipe
    from svg2_jax.sampling import FlowMatchEuler

    for flag in ("prompt", "text_encoder", "negative_embeddings"):
        if getattr(args, flag):
            raise SystemExit(f"svg2-generate: --{flag.replace('_', '-')} is not supported for "
                             "HunyuanVideo: pass --text-embeddings .npz (embedded guidance, no "
                             "negative prompt)")
    if tiny:
        model = HunyuanVideoTransformer3DModel(pipe.TINY_CONFIG, attention=attention,
                                               dtype=dtype, param_dtype=dtype,
                                               rngs=nnx.Rngs(args.seed))
    else:
        model = load(args.checkpoint, args.model, dtype=dtype)
        model.attention = attention
    config = model.config
    if args.text_embeddings:
        text = _load_hunyuan_text(args.text_embeddings, config)
    elif tiny:
        text = (rng.normal(size=(1, 16, config.text_embed_dim)).astype(np.float32),
                np.arange(16)[None] < 10,
                rng.normal(size=(1, config.pooled_projection_dim)).astype(np.float32))
    else:
        raise SystemExit("svg2-generate: HunyuanVideo needs --text-embeddings (.npz)")
    scheduler = FlowMatchEuler(shift=args.shift, pipeline_sigmas=True)
    sampler = pipe.HunyuanSampler(model, scheduler, sampler_cfg,
                                  embedded_guidance=args.guidance)
    return model, pipe, sampler, (text,)


def main(argv=None):
    args = parse_args(argv)
    tiny = args.checkpoint is None
    _defaults(args, tiny)
    hy = args.family == "hunyuan"

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from svg2_jax.pipelines import video
    from svg2_jax.sampling import SamplerConfig, check_finite

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    try:
        attention = build_attention(args, jax)
        sampler_cfg = SamplerConfig(
            num_steps=args.steps, guidance_scale=1.0 if hy else args.guidance,
            dense_fraction=args.dense_fraction if args.attention == "svg2" else 0.0,
            kmeans_during_warmup=args.kmeans_during_warmup,
            share_cfg_cache=not args.separate_cfg_cache, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"svg2-generate: {e}")
    if not tiny and not os.path.exists(args.checkpoint):
        raise SystemExit(f"svg2-generate: checkpoint not found: {args.checkpoint}")
    if tiny:
        print(f"svg2-generate: no --checkpoint: using a TINY RANDOM {args.family} model. Its "
              "output is noise; this run only shows the pipeline.", file=sys.stderr)

    t0 = time.perf_counter()
    setup = _hunyuan_setup if hy else _wan_setup
    try:
        model, pipe, sampler, inputs = setup(args, tiny, attention, sampler_cfg, dtype, nnx,
                                             np.random.default_rng(args.seed))
        c, f, h, w = pipe.latent_shape(model.config, args.height, args.width, args.frames)
    except ValueError as e:
        raise SystemExit(f"svg2-generate: {e}")
    load_s = time.perf_counter() - t0
    seq = pipe.sequence_length(model.config, args.height, args.width, args.frames)
    if args.attention == "svg2" and seq < max(args.qc, args.kc):
        raise SystemExit(f"svg2-generate: {seq} video tokens are fewer than the clusters "
                         f"(--qc {args.qc}, --kc {args.kc}); lower them or raise the size")

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
    try:
        check_finite(result)
    except FloatingPointError as e:
        raise SystemExit(f"svg2-generate: {e}")

    lat = np.asarray(result.latents)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.vae:
        frames = pipe.decode_with_diffusers_vae(lat, args.vae)[0]
        video_kind = "decoded by the VAE"
    else:
        frames = video.latent_preview(lat)[0]
        video_kind = "latent preview (first 3 latent channels; no --vae given)"
        np.save(os.path.splitext(args.out)[0] + ".latents.npy", lat)
    video.write_mp4(frames, args.out, fps=args.fps)

    density = np.asarray(result.density)  # [steps, passes, L, B, H]
    per_step_layer = density.mean(axis=(3, 4))  # [steps, passes, L]
    n_dense = int(np.floor(sampler_cfg.dense_fraction * args.steps))
    report = {
        "model": (f"TINY RANDOM {args.family} (not a real model: output is noise)" if tiny
                  else {"checkpoint": os.path.abspath(args.checkpoint), "preset": args.model}),
        "family": args.family,
        "video": {"height": args.height, "width": args.width, "frames": args.frames,
                  "latent_shape": [c, f, h, w], "video_tokens": seq, "mp4": args.out,
                  "mp4_content": video_kind},
        "sampling": {"steps": args.steps, "scheduler": args.scheduler, "shift": args.shift,
                     ("embedded_guidance" if hy else "guidance"): args.guidance,
                     "seed": args.seed, "dense_warmup_steps": n_dense},
        "attention": {"kind": args.attention, "qc": args.qc, "kc": args.kc,
                      "top_p": args.top_p, "min_kc_ratio": args.min_kc_ratio,
                      "dense_layers": args.dense_layers,
                      "kmeans_iters_cold": args.kmeans_iters_cold,
                      "kmeans_iters_warm": args.kmeans_iters_warm,
                      "kmeans_during_warmup": args.kmeans_during_warmup,
                      "shared_cfg_cache": not args.separate_cfg_cache,
                      "target_density": args.target_density,
                      "sparse_backend": sparse_backend(args)},
        "timings_s": {"load": round(load_s, 3), "compile": round(compile_s, 3),
                      "sample": round(sample_s, 3), "device": str(jax.devices()[0])},
        "density_mean_sparse_steps": (float(per_step_layer[n_dense:].mean())
                                      if n_dense < args.steps else 1.0),
        "density_per_step_pass_layer": per_step_layer.round(5).tolist(),
    }
    report_path = args.report or os.path.splitext(args.out)[0] + ".json"
    with open(report_path, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"svg2-generate: wrote {args.out} ({video_kind}) and {report_path}; compile "
          f"{compile_s:.1f} s, sampling {sample_s:.1f} s, mean density after warm-up "
          f"{report['density_mean_sparse_steps']:.3f}", file=sys.stderr)
    return report


def cli():
    """Console entry point: exit status 0 on success (main() returns the report dict)."""
    main()
    return 0


if __name__ == "__main__":
    cli()
