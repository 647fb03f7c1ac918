"""svg2-generate's text conditioning: a prompt encoded by the family's JAX text encoders
(Wan: umT5; HunyuanVideo: Llama + CLIP) read from local checkpoints, precomputed states
read and checked, or random states for the tiny model. No torch. The flags are checked
with the others before any model work (`check_text_flags`); problems name the flag and the
file."""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path

import numpy as np

from svg2_jax.cli.flags import input_problem
from svg2_jax.input_files import load_npy, load_npz

PROG = "svg2-generate"
# files one of which a Hugging Face tokenizer directory holds (`load_tokenizer` reads them)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def fail(message: str):
    raise SystemExit(f"{PROG}: {message}")


def flag_value(args, flag: str):
    """The parsed value of `flag` ("--text-encoder-2" -> args.text_encoder_2)."""
    return getattr(args, flag.lstrip("-").replace("-", "_"))


@dataclasses.dataclass(frozen=True)
class TextEncoderFlags:
    """One text encoder of a family: its checkpoint flag and the repo folder it converts
    from, its tokenizer flag and the repo folder beside that one holding the tokenizer,
    the `svg2_jax.models.<model>` that loads it, and what it is (for messages)."""

    encoder: str
    encoder_folder: str
    tokenizer: str
    tokenizer_folder: str
    model: str
    what: str


# family -> its text encoders, in the order the pipeline runs them
TEXT_ENCODERS = {
    "wan": (TextEncoderFlags("--text-encoder", "text_encoder", "--tokenizer", "tokenizer",
                             "umt5", "umT5"),),
    "hunyuan": (
        TextEncoderFlags("--text-encoder", "text_encoder", "--tokenizer", "tokenizer",
                         "llama", "Llama"),
        TextEncoderFlags("--text-encoder-2", "text_encoder_2", "--tokenizer-2", "tokenizer_2",
                         "clip_text", "CLIP")),
}
FAMILY_NAMES = {"wan": "Wan", "hunyuan": "HunyuanVideo"}


def _owners() -> dict[str, list[tuple[str, TextEncoderFlags]]]:
    """Encoder flag -> the (family, encoder) pairs that read it (and its tokenizer flag)."""
    owners: dict[str, list] = {}
    for family, specs in TEXT_ENCODERS.items():
        for spec in specs:
            owners.setdefault(spec.encoder, []).append((family, spec))
    return owners


OWNERS = _owners()


def add_encoder_flags(group):
    """The argparse flags of every family's text encoders and tokenizers (TEXT_ENCODERS)."""
    for flag, owners in OWNERS.items():
        spec = owners[0][1]
        whose = " or ".join(f"{FAMILY_NAMES[family]}'s {s.what}" for family, s in owners)
        group.add_argument(flag, help=f"for --prompt: {whose} text encoder: an svg2-convert "
                           f"orbax directory or the repo's {spec.encoder_folder}/ folder")
        group.add_argument(spec.tokenizer, help=f"tokenizer folder of {flag} (default: that "
                           f"folder if it holds one, else {spec.tokenizer_folder}/ beside it, "
                           "as in the repos)")


def check_text_flags(args, family: str) -> list[str]:
    """Before any model work, every problem of the conditioning flags, each naming its
    flag: flags that exclude each other or that the family or the run would not read, the
    text a real model needs, and the encoder and tokenizer paths a --prompt reads (the
    tokenizers' defaults found)."""
    problems = []
    prompt = args.prompt is not None
    if prompt and args.text_embeddings:
        problems.append("--prompt and --text-embeddings exclude each other: give one")
    if family == "hunyuan":
        problems += [f"{flag} is not supported for HunyuanVideo (embedded guidance, no "
                     "negative prompt)" for flag in ("--negative-prompt", "--negative-embeddings")
                     if flag_value(args, flag) is not None]
    else:
        if args.negative_prompt is not None and args.negative_embeddings:
            problems.append("--negative-prompt and --negative-embeddings exclude each other: "
                            "give one")
        if args.negative_prompt is not None and not prompt:
            problems.append("--negative-prompt needs --prompt, whose text encoder encodes it "
                            "(with --text-embeddings, give --negative-embeddings)")
    specs = TEXT_ENCODERS[family]
    if args.checkpoint is not None and not (prompt or args.text_embeddings):
        problems.append(f"a real model needs --prompt (with "
                        f"{' and '.join(s.encoder for s in specs)}) or --text-embeddings")
    for encoder_flag, owners in OWNERS.items():
        families = [f for f, _ in owners]
        tokenizer_flag = owners[0][1].tokenizer
        for flag in (encoder_flag, tokenizer_flag):
            value = flag_value(args, flag)
            if value is None:
                continue
            if family not in families:
                problems.append(f"{flag} is read only for {' and '.join(families)} (this run "
                                f"is {family})")
            elif not prompt:
                problems.append(f"{flag} is read only with --prompt, which is not given")
            else:
                problem = input_problem(flag, value, "dir" if flag == tokenizer_flag else None)
                if problem:
                    problems.append(problem)
    if prompt:
        for spec in specs:
            encoder = flag_value(args, spec.encoder)
            if encoder is None:
                problems.append(f"--prompt needs {spec.encoder}: the {spec.what} text encoder "
                                f"(an svg2-convert orbax directory or the checkpoint repo's "
                                f"{spec.encoder_folder}/ folder); or pass --text-embeddings")
            elif flag_value(args, spec.tokenizer) is None and os.path.exists(encoder):
                try:
                    tokenizer_dir(args, spec)
                except ValueError as e:
                    problems.append(str(e))
    return problems


def tokenizer_dir(args, spec: TextEncoderFlags) -> Path:
    """The tokenizer of `spec`'s encoder: its tokenizer flag; else the encoder's directory
    when it holds a tokenizer; else `spec.tokenizer_folder` beside it (the repos keep
    text_encoder/ and tokenizer/ side by side). ValueError when none is found."""
    given = flag_value(args, spec.tokenizer)
    if given is not None:
        return Path(given)
    encoder = Path(flag_value(args, spec.encoder))
    base = encoder if encoder.is_dir() else encoder.parent
    candidates = (base, base.parent / spec.tokenizer_folder)
    for candidate in candidates:
        if any((candidate / name).is_file() for name in TOKENIZER_FILES):
            return candidate
    raise ValueError(f"no tokenizer for {spec.encoder} {str(encoder)!r}: none in "
                     f"{str(candidates[0])!r} nor in {str(candidates[1])!r}; pass "
                     f"{spec.tokenizer} DIR (the checkpoint repo's {spec.tokenizer_folder}/ "
                     "folder)")


def _load(args, spec: TextEncoderFlags, dtype):
    """(tokenizer, encoder) of `spec`, errors naming the flag."""
    from svg2_jax.text import load_tokenizer

    directory = tokenizer_dir(args, spec)  # found already by check_text_flags
    try:
        tokenizer = load_tokenizer(directory)
    except ValueError as e:
        fail(f"{spec.tokenizer} {directory}: {e}")
    path = flag_value(args, spec.encoder)
    module = importlib.import_module(f"svg2_jax.models.{spec.model}")
    try:
        encoder = module.load(path, None, dtype)  # the checkpoint's own config
    except ValueError as e:
        fail(f"{spec.encoder} {path} (a {spec.what} encoder): {e}")
    return tokenizer, encoder


def _check_width(states, width: int, args, spec: TextEncoderFlags, takes: str):
    if states.shape[-1] != width:
        fail(f"{spec.encoder} {flag_value(args, spec.encoder)} gives {states.shape[-1]}-wide "
             f"states; the model takes {takes}={width}: not this model's {spec.what} encoder")


def wan_conditioning(args, text_dim: int, tiny: bool, rng, dtype):
    """(context, uncond_context) float32 [1, L, text_dim]: --prompt / --negative-prompt
    through umT5, or --text-embeddings / --negative-embeddings (unconditional: zeros when
    no negative is given with embeddings), or random states for the tiny model."""
    negative = None
    if args.text_embeddings:
        context = load_embeddings(args.text_embeddings, text_dim, "--text-embeddings")
    elif args.prompt is not None:
        from svg2_jax.text import encode_wan_prompt

        (spec,) = TEXT_ENCODERS["wan"]
        tokenizer, encoder = _load(args, spec, dtype)
        # diffusers' WanPipeline encodes the negative prompt ("" by default) the same way
        prompts = [args.prompt] + ([] if args.negative_embeddings else
                                   [args.negative_prompt or ""])
        try:
            states = np.asarray(encode_wan_prompt(tokenizer, encoder, prompts), np.float32)
        except ValueError as e:
            fail(f"--prompt: {e}")
        _check_width(states, text_dim, args, spec, "text_dim")
        context, negative = states[:1], (states[1:] if len(states) > 1 else None)
    else:  # the tiny model (check_text_flags requires text for a real one)
        context = rng.normal(size=(1, 16, text_dim)).astype(np.float32)
    if args.negative_embeddings:
        negative = load_embeddings(args.negative_embeddings, text_dim, "--negative-embeddings")
    if negative is None:
        negative = np.zeros_like(context)
    if negative.shape != context.shape:
        fail(f"negative embeddings {negative.shape} must match the prompt embeddings "
             f"{context.shape}")
    return context, negative


def hunyuan_conditioning(args, config, tiny: bool, rng, dtype):
    """(prompt_embeds [1, T, D] float32, prompt_attention_mask [1, T] bool,
    pooled_prompt_embeds [1, P] float32): --prompt through Llama + CLIP, --text-embeddings
    (.npz), or random states for the tiny model."""
    if args.text_embeddings:
        return load_hunyuan_text(args.text_embeddings, config)
    if args.prompt is not None:
        from svg2_jax.text import encode_hunyuan_prompt

        llama_spec, clip_spec = TEXT_ENCODERS["hunyuan"]
        parts = _load(args, llama_spec, dtype) + _load(args, clip_spec, dtype)
        try:
            text = encode_hunyuan_prompt(*parts, [args.prompt])
        except ValueError as e:
            fail(f"--prompt: {e}")
        embeds = np.asarray(text.prompt_embeds, np.float32)
        pooled = np.asarray(text.pooled_prompt_embeds, np.float32)
        _check_width(embeds, config.text_embed_dim, args, llama_spec, "text_embed_dim")
        _check_width(pooled, config.pooled_projection_dim, args, clip_spec,
                     "pooled_projection_dim")
        return embeds, np.asarray(text.prompt_attention_mask) != 0, pooled
    # the tiny model (check_text_flags requires text for a real one)
    return (rng.normal(size=(1, 16, config.text_embed_dim)).astype(np.float32),
            np.arange(16)[None] < 10,
            rng.normal(size=(1, config.pooled_projection_dim)).astype(np.float32))


def describe(args, family: str) -> dict:
    """What conditioned the run, for the JSON report (paths absolute)."""
    if args.text_embeddings:
        return {"source": "--text-embeddings", "file": os.path.abspath(args.text_embeddings),
                "negative": (os.path.abspath(args.negative_embeddings)
                             if args.negative_embeddings else None)}
    if args.prompt is None:
        return {"source": "random states (tiny model)"}
    specs = TEXT_ENCODERS[family]
    out = {"source": "--prompt", "prompt": args.prompt,
           "encoders": {s.encoder: os.path.abspath(flag_value(args, s.encoder))
                        for s in specs},
           "tokenizers": {s.tokenizer: str(tokenizer_dir(args, s).resolve()) for s in specs}}
    if family == "wan":
        out["negative_prompt"] = (None if args.negative_embeddings else
                                  args.negative_prompt or "")
        out["negative"] = (os.path.abspath(args.negative_embeddings)
                           if args.negative_embeddings else None)
    return out


def _read(load, path, what):
    try:
        return load(path, what)
    except ValueError as e:
        fail(str(e))


def _floats(x: np.ndarray, name: str, path) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        fail(f"{name} in {path} must be floating point, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        fail(f"{name} in {path} contains NaN/Inf")
    return x


def load_embeddings(path, text_dim: int, what: str) -> np.ndarray:
    """.npy [L, text_dim] (or [1, L, text_dim]), L >= 1 -> float32 [1, L, text_dim],
    checked. what: the flag, for messages."""
    x = _read(load_npy, path, what)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] != 1 or x.shape[-1] != text_dim or x.shape[1] < 1:
        fail(f"{what} must be [L, {text_dim}] (or [1, L, {text_dim}]) with L >= 1 tokens, "
             f"got {x.shape} from {path}")
    return _floats(x, what, path)


HUNYUAN_KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")


def load_hunyuan_text(path, config):
    """.npz with prompt_embeds [T, D] (T >= 1), prompt_attention_mask [T],
    pooled_prompt_embeds [P] (a leading batch axis of 1 is accepted) -> batched float32 /
    bool arrays, checked."""
    z = _read(load_npz, path, "--text-embeddings (HunyuanVideo: an .npz)")
    missing = set(HUNYUAN_KEYS) - set(z)
    if missing:
        fail(f"{path} lacks {sorted(missing)} (HunyuanVideo needs "
             f"{', '.join(HUNYUAN_KEYS)})")
    emb, mask, pooled = (z[k] for k in HUNYUAN_KEYS)
    emb = emb[None] if emb.ndim == 2 else emb
    mask = mask[None] if mask.ndim == 1 else mask
    pooled = pooled[None] if pooled.ndim == 1 else pooled
    if (emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[1] < 1
            or emb.shape[-1] != config.text_embed_dim or mask.shape != emb.shape[:2]
            or pooled.shape != (1, config.pooled_projection_dim)):
        fail(f"{path}: expected prompt_embeds [T, {config.text_embed_dim}] with T >= 1, "
             f"prompt_attention_mask [T], pooled_prompt_embeds "
             f"[{config.pooled_projection_dim}]; got {emb.shape}, {mask.shape}, {pooled.shape}")
    if not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
        fail(f"{path}: prompt_attention_mask must hold only 0/1 (or booleans)")
    if mask.sum() < 1:
        fail(f"{path}: the attention mask has no real token")
    return (_floats(emb, "prompt_embeds", path), mask.astype(bool),
            _floats(pooled, "pooled_prompt_embeds", path))
