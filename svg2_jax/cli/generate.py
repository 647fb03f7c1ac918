"""svg2-generate: Wan2.1 / Wan2.2 or HunyuanVideo text-to-video, and Wan image-to-video,
with dense or SVG2 attention, the whole denoising loop compiled once. JAX only: no torch
is imported.

Without --checkpoint it runs a TINY RANDOM Wan (2 layers, output is noise) with random
text embeddings, so a fresh install shows the whole path (compile, SVG2 warm-up then
sparse steps, density report, mp4) in seconds. With a checkpoint (orbax from
svg2-convert, a diffusers transformer folder, or an official Wan2.1 file) it needs text:
--prompt (and --negative-prompt) encoded by the JAX umT5 (--text-encoder: an
svg2-convert orbax directory or the repo's text_encoder/ folder; --tokenizer: the repo's
tokenizer/ folder, by default found in or beside the encoder's), or precomputed states
--text-embeddings (.npy, [L, 4096]). --vae (svg2-convert orbax or the repo's vae/ folder)
decodes to RGB with the JAX VAE; without it the mp4 is a latent preview and the latents
are saved as .npy.

Wan2.2 A14B (--model wan2.2-t2v-a14b / wan2.2-i2v-a14b) runs its two experts in the one
compiled loop, each with its own SVG2 centroids: --checkpoint a directory holding both
(diffusers' transformer/ + transformer_2/, svg2-convert's output, or the official
high_noise_model/ + low_noise_model/) or the high-noise one with --checkpoint-2 the
low-noise one; --guidance-2 is the low-noise expert's guidance. Each --model takes its
released settings (steps, guidance, shift, size) unless flags say otherwise.
Image-to-video (wan2.1-i2v-14b, wan2.1-flf2v-14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b):
--image (and --last-image for the first-and-last-frame models) with --vae, whose JAX port
encodes the frames; Wan2.1's models also take --image-encoder (their CLIP vision tower,
JAX too). Without --height/--width the video follows the image's aspect ratio at the
model's area.

Many devices (svg2_jax.sharding, docs/sharding.md): --mesh sp=N[,cfg=2][,balance=0]
splits the tokens over N devices outside attention and the heads inside it (SVG2 heads
reassigned to devices every step by their measured density), cfg=2 runs the two CFG
passes on two device groups (with --separate-cfg-cache); weights are loaded straight onto
their shards. Several hosts: the same command on each with --distributed
HOST:PORT,NUM_PROCESSES,PROCESS_ID (or auto under SLURM / Open MPI); process 0 writes.

HunyuanVideo (--family hunyuan, or a hunyuan preset): --prompt with its Llama
(--text-encoder, --tokenizer: the repo's text_encoder/ and tokenizer/) and CLIP
(--text-encoder-2, --tokenizer-2: text_encoder_2/ and tokenizer_2/), or --text-embeddings
.npz with prompt_embeds [T, 4096], prompt_attention_mask [T] and pooled_prompt_embeds
[768]; --guidance is its embedded (distilled) guidance, there is no negative prompt.

The text encoders run in --dtype, the VAEs and the CLIP vision tower in float32 (as
diffusers' pipelines). The PyTorch encoders and VAEs are not wired in: ours read the same
checkpoints and match them (parity tests); `pipelines.{wan,hunyuan}.decode_with_diffusers_vae`
remain for library use.

Flags left out take the library's defaults (SVG2Config, SamplerConfig, the family's
preset; svg2_jax/cli/defaults.py says where a family departs from them): --help lists
them. Every flag is checked before any model work (svg2_jax/cli/flags.py;
svg2_jax/cli/text.py for the text flags, svg2_jax/cli/wan_flags.py for the experts' and
the images'): a value out of range, a flag the run would ignore, a missing or unreadable
input or an output that cannot be written stops the run at once, naming the flag. Outputs are written whole or not at all; if NaN/Inf appear, only the JSON report
is written, naming the step, pass and layer.

Examples:
  svg2-generate --out out/tiny.mp4
  svg2-generate --checkpoint ckpt/wan --model wan2.1-t2v-1.3b --prompt "a fox in the snow" \\
      --text-encoder ckpt/umt5 --tokenizer Wan2.1-T2V-1.3B-Diffusers/tokenizer \\
      --vae ckpt/wan-vae --height 480 --width 832 --frames 81 --steps 50 --out out/fox.mp4
  svg2-generate --checkpoint ckpt/hunyuan --model hunyuan-video-t2v-720p --prompt "a fox" \\
      --text-encoder ckpt/llama --tokenizer HunyuanVideo/tokenizer --text-encoder-2 ckpt/clip \\
      --tokenizer-2 HunyuanVideo/tokenizer_2 --vae ckpt/hunyuan-vae --out out/fox.mp4
  svg2-generate --checkpoint Wan2.2-I2V-A14B-Diffusers --model wan2.2-i2v-a14b \\
      --image first.png --prompt "the fox runs off" \\
      --text-encoder Wan2.2-I2V-A14B-Diffusers/text_encoder \\
      --vae Wan2.2-I2V-A14B-Diffusers/vae --out out/fox-i2v.mp4
  svg2-generate --checkpoint ckpt/wan14b --model wan2.1-t2v-14b --text-embeddings emb.npy \\
      --height 720 --width 1280 --mesh sp=4,cfg=2 --separate-cfg-cache --out out/8gpu.mp4
  svg2-generate --checkpoint Wan2.1-I2V-14B-720P-Diffusers/transformer \\
      --model wan2.1-i2v-14b --image first.png --height 720 --width 1280 \\
      --image-encoder Wan2.1-I2V-14B-720P-Diffusers/image_encoder \\
      --vae Wan2.1-I2V-14B-720P-Diffusers/vae --text-embeddings emb.npy
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from svg2_jax.backends import is_hopper
from svg2_jax.cli import defaults as dflt
from svg2_jax.cli import text, wan_flags
from svg2_jax.cli.flags import (OutputPaths, check_applicable, check_devices, check_paths,
                                check_values, parse_dense_layers)
from svg2_jax.cli.outputs import write_atomically
from svg2_jax.cli.text import PROG, fail
from svg2_jax.cli.vae import load_vae, vae_config, vae_problems, wan_vae_problems
from svg2_jax.config import (BACKENDS, ERROR_AWARE_RULE, ERROR_POOLS, REFERENCE_RULE,
                             SELECTIONS, SVG2Config)
from svg2_jax.layer_attention import SVG2Attention
from svg2_jax.pipelines.wan_models import WanModelSpec, model_spec
from svg2_jax.sampling import SamplerConfig
from svg2_jax.sampling.schedulers import dense_warmup_steps

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
                   "official Wan2.1 file (Wan2.2 A14B: a directory holding both experts); "
                   "omitted: a tiny random model (output is noise)")
    g.add_argument("--model", help="model (wan2.1-t2v-1.3b/-14b, wan2.1-i2v-14b, "
                   "wan2.1-flf2v-14b, wan2.2-t2v-a14b, wan2.2-i2v-a14b, wan2.2-ti2v-5b, "
                   "hunyuan-video-t2v-720p) or diffusers config.json of the checkpoint "
                   f"(default: {d(lambda f: f.model)})")
    g.add_argument("--checkpoint-2", help="Wan2.2 A14B: the low-noise expert (default: "
                   "--checkpoint is a directory holding both, transformer/ + transformer_2/ "
                   "or high_noise_model/ + low_noise_model/)")
    g.add_argument("--family", choices=tuple(dflt.FAMILIES),
                   help="model family (default: from --model, else wan)")
    g.add_argument("--dtype", default=DTYPES[0], choices=DTYPES)
    g = p.add_argument_group("devices")
    g.add_argument("--mesh", help="run on many devices: sp=N (sequence / head parallel; "
                   "default every device left after cfg), cfg=2 (CFG parallel: needs "
                   "--separate-cfg-cache with SVG2), balance=0 (no density-balanced heads), "
                   "e.g. sp=4,cfg=2; default: one device")
    g.add_argument("--distributed", help="several hosts: 'auto' (SLURM, Open MPI) or "
                   "HOST:PORT,NUM_PROCESSES,PROCESS_ID, the same command on every host "
                   "(needs --mesh)")
    g = p.add_argument_group("conditioning")
    g.add_argument("--prompt", help="text prompt, encoded by the JAX text encoders "
                   "(--text-encoder; HunyuanVideo also --text-encoder-2)")
    g.add_argument("--negative-prompt", help="Wan: the prompt of the unconditional pass "
                   "(default with --prompt: \"\", as diffusers' WanPipeline)")
    text.add_encoder_flags(g)
    g.add_argument("--text-embeddings", help="instead of --prompt: precomputed prompt states "
                   "(Wan: .npy [L, text_dim]; HunyuanVideo: .npz)")
    g.add_argument("--negative-embeddings", help="Wan: .npy [L, text_dim] for the "
                   "unconditional pass (default with --text-embeddings: zeros)")
    g.add_argument("--image", help="Wan image-to-video: the first frame (needs --vae; the "
                   "video follows its aspect ratio unless --height/--width are given)")
    g.add_argument("--last-image", help="the last frame too (wan2.1-flf2v-14b, "
                   "wan2.2-i2v-a14b)")
    g.add_argument("--image-encoder", help="Wan2.1 I2V/FLF2V: the CLIP vision tower (the "
                   "repo's image_encoder/ folder, or svg2-convert's orbax)")
    g = p.add_argument_group("video")
    g.add_argument("--height", type=int, help=f"default {d(lambda f: f.video.height)}")
    g.add_argument("--width", type=int, help=f"default {d(lambda f: f.video.width)}")
    g.add_argument("--frames", type=int, help=f"1 + 4k; default {d(lambda f: f.video.frames)}")
    g.add_argument("--steps", type=int, help=f"default {d(lambda f: f.sampler.num_steps)} "
                   "(SamplerConfig.num_steps)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float,
                   help=f"Wan: classifier-free guidance; HunyuanVideo: embedded guidance "
                   f"(default {d(lambda f: f.guidance)}; Wan: the model's)")
    g.add_argument("--guidance-2", type=float, help="Wan2.2 A14B: the low-noise expert's "
                   "guidance (default: the model's, e.g. 3.0 for wan2.2-t2v-a14b)")
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
    g.add_argument("--selection", choices=SELECTIONS,
                   help=f"block selection rule (default {_SVG2.selection}: the paper's "
                   "centroid top-p; error: issue #13's error-aware rule with compensation, "
                   "SVG2Config.error_aware(), better at equal density but slower on GPUs as "
                   "implemented, docs/performance.md)")
    g.add_argument("--error-tolerance", type=float, help="error-aware rule: estimated "
                   f"relative error left to the compensation (default "
                   f"{ERROR_AWARE_RULE['error_tolerance']})")
    comp = g.add_mutually_exclusive_group()
    comp.add_argument("--compensation", dest="compensation", action="store_const",
                      const=True, help="compensate the left-out key clusters (through their "
                      "mean values) with the svg2 rule too (default: with --selection error "
                      "only)")
    comp.add_argument("--no-compensation", dest="compensation", action="store_const",
                      const=False, help="--selection error: drop the left-out key clusters "
                      "instead of compensating them")
    g.add_argument("--error-pool", choices=ERROR_POOLS,
                   help=f"error-aware rule: the blocks compete for the tolerance per head or "
                   f"across the heads of a layer (default {_SVG2.error_pool})")
    g.add_argument("--reference-svg2", action="store_const", const=True,
                   help="the paper's exact SVG2, --selection svg2 without compensation "
                   "(SVG2Config.reference(); also the default, this makes it explicit)")
    g.add_argument("--top-p", type=float, help=f"default {_SVG2.top_p} (svg2 rule)")
    g.add_argument("--min-kc-ratio", type=float,
                   help=f"default {_SVG2.min_kc_ratio} (svg2 rule)")
    g.add_argument("--target-density", type=float,
                   help="instead of the rule's adaptive criterion (error tolerance, top-p), "
                   "compute this fraction of the pairs (a fixed compute budget)")
    g.add_argument("--sparse-backend", choices=SPARSE_BACKENDS,
                   help=f"SVG2 sparse attention (default {_SVG2.backend}: the Hopper kernel "
                   "on sm_90 GPUs, else the exact pure-JAX path)")
    g.add_argument("--kmeans-iters-cold", type=int, help=f"default {_SVG2.kmeans_iters_cold}")
    g.add_argument("--kmeans-iters-warm", type=int, help=f"default {_SVG2.kmeans_iters_warm}")
    g.add_argument("--dense-fraction", type=float,
                   help="first floor(fraction x steps) steps dense (default "
                   f"{d(lambda f: f.sampler.dense_fraction)}, as the reference)")
    g.add_argument("--dense-layers", help="comma-separated always-dense layers, '' for none "
                   f"(default {','.join(map(str, _DENSE_LAYERS))})")
    g.add_argument("--kmeans-during-warmup", action="store_const", const=True,
                   help="cluster during the last dense step (reference: zero_step_kmeans_init;"
                   f" default {_SAMPLER.kmeans_during_warmup})")
    g.add_argument("--separate-cfg-cache", dest="share_cfg_cache", action="store_const",
                   const=False, help="one centroid cache per CFG pass instead of a shared one "
                   f"(default shared: {_SAMPLER.share_cfg_cache})")
    g = p.add_argument_group("output")
    g.add_argument("--vae", help="the family's VAE, to decode to RGB with JAX: an "
                   "svg2-convert orbax directory or the repo's vae/ folder (Wan2.1/2.2: "
                   "AutoencoderKLWan; HunyuanVideo: AutoencoderKLHunyuanVideo)")
    g.add_argument("--out", default="out/video.mp4", help="the .mp4 to write (without --vae "
                   "also OUT with .latents.npy; default %(default)s)")
    g.add_argument("--report", help="the .json report (default: OUT with .json)")
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
    guidance_2: float | None       # the second expert's (Wan2.2 A14B)
    svg2: SVG2Config | None        # None: dense attention
    dense_layers: tuple[int, ...]
    sampler: SamplerConfig
    spec: WanModelSpec | None = None  # the Wan model's pipeline; None: tiny or HunyuanVideo


def _given(**values):
    return {k: v for k, v in values.items() if v is not None}


def family_of(args) -> str:
    """--family, else the family --model names, else wan."""
    if args.family is not None:
        return args.family
    from svg2_jax.models.hunyuan import is_hunyuan_config
    return "hunyuan" if args.model and is_hunyuan_config(args.model) else "wan"


def resolve(args) -> Settings:
    """The family's defaults (`svg2_jax.cli.defaults`), overridden by the flags given.
    Bad values raise ValueError (from the configs) or exit with a message; run the flag
    checks of `svg2_jax.cli.flags` first for messages that name the flags."""
    tiny = args.checkpoint is None
    family = family_of(args)
    fam = dflt.FAMILIES[family]
    spec = None
    if family == "wan" and not tiny:
        model = args.model or fam.model
        try:
            spec = model_spec(model)
        except ValueError as e:
            raise ValueError(f"--model {model}: {e}") from None
        fam = dflt.wan_model(spec, image=args.image is not None)
    fam = dflt.tiny(fam) if tiny else fam
    scheduler = args.scheduler or fam.schedulers[0]
    if scheduler not in fam.schedulers:
        fail(f"{family} samples with --scheduler {' or '.join(fam.schedulers)}, "
             f"not {scheduler}")
    height = fam.video.height if args.height is None else args.height
    width = fam.video.width if args.width is None else args.width
    if spec is not None and spec.takes_image and args.image is not None:
        from svg2_jax.pipelines.wan_i2v import video_size_of

        try:
            height, width = video_size_of(spec, args.image, args.height, args.width)
        except ValueError as e:
            raise ValueError(f"--image {args.image}: {e}") from None
    svg2 = None
    if args.attention == "svg2":
        # flags that contradict --reference-svg2 are `check_applicable`'s to report;
        # --selection error takes the whole preset (compensation on unless
        # --no-compensation), as SVG2Config.error_aware() does
        rule = (REFERENCE_RULE if args.reference_svg2 else
                ERROR_AWARE_RULE if args.selection == "error" else {})
        svg2 = dataclasses.replace(fam.svg2_for(height, width), **{
            **rule,
            **_given(num_q_clusters=args.qc, num_k_clusters=args.kc, top_p=args.top_p,
                     min_kc_ratio=args.min_kc_ratio, target_density=args.target_density,
                     selection=args.selection, error_tolerance=args.error_tolerance,
                     error_pool=args.error_pool, compensation=args.compensation,
                     backend=args.sparse_backend, kmeans_iters_cold=args.kmeans_iters_cold,
                     kmeans_iters_warm=args.kmeans_iters_warm)})
    dense_layers = (_DENSE_LAYERS if args.dense_layers is None else
                    parse_dense_layers(args.dense_layers))
    guidance = fam.guidance if args.guidance is None else args.guidance
    sampler = dataclasses.replace(
        fam.sampler_for(height, width),
        **_given(num_steps=args.steps, dense_fraction=args.dense_fraction,
                 kmeans_during_warmup=args.kmeans_during_warmup,
                 share_cfg_cache=args.share_cfg_cache),
        progress=not args.no_progress)
    if family == "wan":  # --guidance-2 with one expert: a problem of check_wan_flags
        second = _given(guidance_scale_2=args.guidance_2) if sampler.num_experts == 2 else {}
        sampler = dataclasses.replace(sampler, guidance_scale=guidance, **second)
    if svg2 is None:
        sampler = dataclasses.replace(sampler, dense_fraction=0.0)
    return Settings(
        family=family, model=args.model or fam.model, tiny=tiny, height=height, width=width,
        frames=fam.video.frames if args.frames is None else args.frames,
        fps=fam.video.fps if args.fps is None else args.fps, scheduler=scheduler,
        shift=fam.shift_for(height, width) if args.shift is None else args.shift,
        guidance=guidance,
        guidance_2=sampler.guidance_scales[1] if sampler.num_experts == 2 else None,
        svg2=svg2, dense_layers=dense_layers, sampler=sampler, spec=spec)


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


def checked_settings(args) -> tuple[Settings, OutputPaths]:
    """Every flag checked before any model work (`svg2_jax.cli.flags`): exits listing
    every problem, each naming its flag; else the settings and the output paths."""
    problems = check_values(args) + wan_flags.check_image_files(args)
    if problems:  # resolving needs sound values (and the image, whose size it reads)
        _fail_all(problems)
    try:
        run = resolve(args)
    except ValueError as e:
        fail(str(e))
    problems = (check_applicable(args, run.family, run.sampler.cfg)
                + check_devices(args, run.family, run.sampler.cfg, run.sampler.share_cfg_cache)
                + text.check_text_flags(args, run.family)
                + wan_flags.check_wan_flags(args, run.family, run.spec))
    if (run.svg2 is not None and run.sampler.kmeans_during_warmup
            and dense_warmup_steps(run.sampler.num_steps, run.sampler.dense_fraction) == 0):
        problems.append("--kmeans-during-warmup needs a dense warm-up step (--dense-fraction "
                        "x --steps >= 1)")
    path_problems, paths = check_paths(args)
    _fail_all(problems + path_problems)
    return run, paths


def _fail_all(problems: list[str]):
    if len(problems) == 1:
        fail(problems[0])
    if problems:
        fail(f"{len(problems)} problems:\n  " + "\n  ".join(problems))


def _mesh(args):
    """Joins the processes (--distributed) and returns the --mesh plan (None: one
    device); exits naming the flag. Before anything else touches a device."""
    from svg2_jax.sharding import distributed
    from svg2_jax.sharding.mesh import parse_mesh

    if args.distributed is not None:
        try:
            distributed.initialize(args.distributed)
        except Exception as e:  # noqa: BLE001  (jax raises several kinds here)
            fail(f"--distributed {args.distributed}: could not join the processes "
                 f"({type(e).__name__}: {e})")
    if args.mesh is None:
        return None
    try:
        return parse_mesh(args.mesh)
    except ValueError as e:  # e.g. more devices than there are
        fail(f"--mesh {args.mesh}: {e}")


def _pipeline(run: Settings):
    """(pipeline module, model config) before any weight is read: the tiny model's, or
    the one --model names (a preset or a config.json)."""
    if run.family == "hunyuan":
        from svg2_jax.models.hunyuan import get_config
        from svg2_jax.pipelines import hunyuan as pipe
    else:
        from svg2_jax.models.wan import get_config
        from svg2_jax.pipelines import wan as pipe
    if run.tiny:
        return pipe, pipe.TINY_CONFIG
    return pipe, (run.spec.config if run.spec is not None else get_config(run.model))


def _check_model_fit(args, run: Settings, pipe, config, vae=None):
    """What needs the architecture but no weights: --dense-layers within its layers, the
    size through the VAE (vae: the --vae config, its compression and latent channels;
    None: the Wan model's VAE, else the released VAEs' 4x / 8x) and the patches, enough
    video tokens for the clusters. Exits listing every problem; else (latent shape, video
    tokens)."""
    problems = []
    layers = config.num_attention_layers
    outside = [i for i in run.dense_layers if i >= layers]
    if run.svg2 is not None and outside:
        problems.append(f"--dense-layers {','.join(map(str, outside))}: the model has {layers} "
                        f"attention layers (0..{layers - 1})")
    if vae is not None:
        problems += vae_problems(vae, args.vae, config.out_channels)
    if vae is not None and run.spec is not None:
        problems += wan_vae_problems(vae, args.vae, run.spec)
    compression = vae if vae is not None else run.spec
    try:
        shape = pipe.latent_shape(config, run.height, run.width, run.frames, compression)
        seq = pipe.sequence_length(config, run.height, run.width, run.frames, compression)
    except ValueError as e:
        problems.append(str(e))
    else:
        if (run.svg2 is not None
                and seq < max(run.svg2.num_q_clusters, run.svg2.num_k_clusters)):
            problems.append(f"{seq} video tokens are fewer than the clusters (--qc "
                            f"{run.svg2.num_q_clusters}, --kc {run.svg2.num_k_clusters}); "
                            "lower them or raise the size")
    _fail_all(problems)
    return shape, seq


def _conditioning(args, run: Settings, config, dtype):
    """The sampler's text inputs (`svg2_jax.cli.text`): Wan (context, uncond); HunyuanVideo
    ((prompt_embeds, mask, pooled),)."""
    rng = np.random.default_rng(args.seed)
    if run.family == "hunyuan":
        return (text.hunyuan_conditioning(args, config, run.tiny, rng, dtype),)
    return text.wan_conditioning(args, config.text_dim, run.tiny, rng, dtype)


def _model(args, run: Settings, config, attention, dtype, nnx, mesh) -> tuple:
    """The tiny random model, or the checkpoint's weights (on a mesh: each straight onto
    its shards), as a tuple of the experts (one but for Wan2.2 A14B); ValueError naming
    what is wrong with a checkpoint."""
    if run.family == "hunyuan":
        from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel as model_cls
        from svg2_jax.models.hunyuan import load
    else:
        from svg2_jax.models.wan import WanTransformer3DModel as model_cls
        from svg2_jax.pipelines.wan import load_experts
    if run.tiny:
        return (model_cls(config, attention=attention, dtype=dtype, param_dtype=dtype,
                          rngs=nnx.Rngs(args.seed)),)
    if run.family == "wan":  # the experts of run.spec, checked by check_wan_flags
        return load_experts(run.spec, args.checkpoint, args.checkpoint_2, dtype=dtype,
                            attention=attention, mesh=mesh)
    model = load(args.checkpoint, config, dtype=dtype, mesh=mesh)
    model.attention = attention
    return (model,)


def _sampler(run: Settings, pipe, models: tuple, mesh):
    from svg2_jax.sampling import FlowMatchEuler, FlowUniPC

    if run.family == "hunyuan":
        (model,) = models
        return pipe.HunyuanSampler(model, FlowMatchEuler(shift=run.shift, pipeline_sigmas=True),
                                   run.sampler, embedded_guidance=run.guidance, mesh=mesh)
    scheduler = (FlowUniPC(flow_shift=run.shift) if run.scheduler == "unipc"
                 else FlowMatchEuler(shift=run.shift))
    return pipe.WanSampler(models, scheduler, run.sampler, mesh=mesh)


def _finite_or_none(x):
    """A nested list of floats with NaN as None (JSON has no NaN)."""
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def sparse_density_mean(per_step_layer: np.ndarray, n_dense: int, run: Settings) -> float:
    """Mean density over the sparse steps and the SVG2 layers (the always-dense layers
    left out: they would pull the mean toward 1). per_step_layer: [steps, passes, L]; 1.0
    when nothing ran sparse."""
    layers = per_step_layer.shape[-1]
    svg2_layers = [i for i in range(layers) if i not in run.dense_layers]
    if run.svg2 is None or n_dense >= per_step_layer.shape[0] or not svg2_layers:
        return 1.0
    return float(per_step_layer[n_dense:][:, :, svg2_layers].mean())


def main(argv=None):
    args = parse_args(argv)
    run, paths = checked_settings(args)
    hy = run.family == "hunyuan"

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from svg2_jax.pipelines import video
    from svg2_jax.sampling import describe_nonfinite, nonfinite_report
    from svg2_jax.sharding import distributed
    from svg2_jax.sharding.balance import balance_report

    dtype = getattr(jnp, args.dtype)
    mesh = _mesh(args)
    try:
        attention = build_attention(run, args.seed, jax)
        pipe, config = _pipeline(run)
        vae_cfg = None if args.vae is None else vae_config(run.family, args.vae)
        video.check_mp4_writer()
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    (c, f, h, w), seq = _check_model_fit(args, run, pipe, config, vae_cfg)
    if run.tiny:
        print(f"{PROG}: no --checkpoint: using a TINY RANDOM {run.family} model"
              + (f" (--model {args.model} only picks the family)" if args.model else "")
              + ". Its output is noise; this run only shows the pipeline.", file=sys.stderr)

    t0 = time.perf_counter()
    # the text encoders are let go before the VAE and the DiT load; the VAE (and the image
    # conditioning it and the CLIP tower encode) before the DiT, so that a broken VAE
    # checkpoint or image stops the run before the big read
    inputs = _conditioning(args, run, config, dtype)
    vae = None if vae_cfg is None else load_vae(run.family, args.vae, vae_cfg)
    condition = wan_flags.image_condition(args, run.spec, vae, run.height, run.width,
                                          run.frames)
    if condition is not None:
        inputs = (*inputs, condition)
    try:
        models = _model(args, run, config, attention, dtype, nnx, mesh)
    except ValueError as e:
        fail(str(e))
    sampler = _sampler(run, pipe, models, mesh)
    load_s = time.perf_counter() - t0

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
    # arrays spread over several processes' devices, whole on every host
    result = dataclasses.replace(result, attn_state=None, **distributed.fetch(dict(
        latents=result.latents, density=result.density, expert=result.expert,
        first_nonfinite_step=result.first_nonfinite_step,
        first_nonfinite_attention=result.first_nonfinite_attention)))
    if not distributed.is_main_process():  # process 0 reports and writes
        if nonfinite_report(result) is not None:
            fail(describe_nonfinite(nonfinite_report(result)) + " (process 0 writes the report)")
        return None

    steps = run.sampler.num_steps
    density = np.asarray(result.density)  # [steps, passes, L, B, H]
    per_step_layer = density.mean(axis=(3, 4))  # [steps, passes, L]
    n_dense = dense_warmup_steps(steps, run.sampler.dense_fraction)
    cfg = run.svg2
    if vae is not None:
        mp4_frames, video_kind = run.frames, "decoded by the VAE"
    else:
        mp4_frames = f
        video_kind = (f"latent preview, not a decode: {f} frames, one per latent frame (the "
                      f"VAE would decode {run.frames}), the first 3 latent channels "
                      "normalised and upsampled 8x; no --vae given")
    report = {
        "model": (f"TINY RANDOM {run.family} (not a real model: output is noise)" if run.tiny
                  else {"checkpoint": os.path.abspath(args.checkpoint), "preset": run.model,
                        **wan_flags.describe_experts(args, run.spec)}),
        "family": run.family,
        "video": {"height": run.height, "width": run.width, "frames": run.frames,
                  "fps": run.fps, "latent_shape": [c, f, h, w], "video_tokens": seq,
                  "mp4": str(paths.mp4), "mp4_frames": mp4_frames, "mp4_content": video_kind,
                  "latents_npy": None if vae is not None else str(paths.latents),
                  "vae": None if vae is None else os.path.abspath(args.vae)},
        "text": text.describe(args, run.family),
        "image": wan_flags.describe_image(args),
        "sampling": {"steps": steps, "scheduler": run.scheduler, "shift": run.shift,
                     ("embedded_guidance" if hy else "guidance"): run.guidance,
                     **({} if run.guidance_2 is None else {
                         "guidance_2": run.guidance_2,
                         "boundary_timestep": run.sampler.boundary_timestep,
                         "expert_per_step": np.asarray(result.expert).tolist()}),
                     "seed": args.seed, "dense_warmup_steps": n_dense},
        "attention": {"kind": args.attention,
                      **({} if cfg is None else {
                          "qc": cfg.num_q_clusters, "kc": cfg.num_k_clusters,
                          "selection": cfg.selection,
                          "error_tolerance": cfg.error_tolerance,
                          "error_pool": cfg.error_pool,
                          "compensation": cfg.compensation,
                          "compensate_own_key": cfg.compensate_own_key,
                          "top_p": cfg.top_p, "min_kc_ratio": cfg.min_kc_ratio,
                          "dense_layers": list(run.dense_layers),
                          "kmeans_iters_cold": cfg.kmeans_iters_cold,
                          "kmeans_iters_warm": cfg.kmeans_iters_warm,
                          "kmeans_during_warmup": run.sampler.kmeans_during_warmup,
                          "shared_cfg_cache": run.sampler.share_cfg_cache,
                          "target_density": cfg.target_density}),
                      "sparse_backend": sparse_backend(cfg)},
        "mesh": None if mesh is None else {
            **mesh.describe(), **({} if cfg is None or mesh.sp == 1 else {
                # busiest device over the mean, summed over layers: heads in order vs
                # the density-balanced assignment the loop used
                "head_imbalance_per_step": balance_report(density, mesh.sp,
                                                          result.expert)})},
        "timings_s": {"load": round(load_s, 3), "compile": round(compile_s, 3),
                      "sample": round(sample_s, 3), "decode": None,  # set once decoded
                      "device": str(jax.devices()[0])},
        # NaN (null in the JSON) where an attention output was not finite
        "density_mean_sparse_steps": _finite_or_none(
            sparse_density_mean(per_step_layer, n_dense, run)),
        "density_mean_over": "steps after the dense warm-up, SVG2 layers only (the "
                             "always-dense layers left out), every pass, batch and head",
        "density_per_step_pass_layer": _finite_or_none(per_step_layer.round(5).tolist()),
        "nonfinite": nonfinite_report(result),
    }
    write_json = lambda tmp: dump_json(report, tmp)
    if report["nonfinite"] is not None:
        write_atomically(paths.report, write_json)
        fail(f"{describe_nonfinite(report['nonfinite'])}. Wrote only the report "
             f"{paths.report} (per step, pass and layer density, null where an attention "
             "output was not finite); no video. Check the inputs, dtype and guidance.")

    lat = np.asarray(result.latents)
    save_latents = lambda: write_atomically(paths.latents, lambda tmp: np.save(tmp, lat))
    t3 = time.perf_counter()
    if vae is not None:
        try:
            frames = pipe.decode_with_jax_vae(lat, vae)[0]
        except Exception as e:  # noqa: BLE001  (keep the sampled latents whatever failed)
            save_latents()
            fail(f"--vae {args.vae}: decoding failed ({type(e).__name__}: {e}); the latents "
                 f"are saved in {paths.latents}")
    else:
        frames = video.latent_preview(lat)[0]
        save_latents()
    report["timings_s"]["decode"] = round(time.perf_counter() - t3, 3)
    try:
        write_atomically(paths.mp4, lambda tmp: video.write_mp4(frames, tmp, fps=run.fps))
    except RuntimeError as e:
        fail(f"{e}" + ("" if vae is not None else f"; the latents are saved in {paths.latents}"))
    write_atomically(paths.report, write_json)
    print(f"{PROG}: wrote {paths.mp4} ({video_kind}) and {paths.report}; compile "
          f"{compile_s:.1f} s, sampling {sample_s:.1f} s, mean density after warm-up "
          f"(SVG2 layers) {report['density_mean_sparse_steps']:.3f}", file=sys.stderr)
    return report


def dump_json(report: dict, path: str):
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)


def cli():
    """Console entry point: exit status 0 on success (main() returns the report dict)."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
