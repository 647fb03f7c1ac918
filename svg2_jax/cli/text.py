"""svg2-generate's text conditioning: precomputed embeddings read and checked, or a
prompt encoded with a local umT5 (Wan). Problems exit with a message naming the file."""

from __future__ import annotations

import numpy as np

from svg2_jax.input_files import load_npy, load_npz

PROG = "svg2-generate"
WAN_TEXT_LENGTH = 512  # diffusers' WanPipeline max_sequence_length


def fail(message: str):
    raise SystemExit(f"{PROG}: {message}")


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


def encode_prompt(prompt: str, encoder_path: str, max_length: int = WAN_TEXT_LENGTH):
    """umT5 states [1, max_length, D] of a prompt as diffusers' WanPipeline computes them
    (padded to max_length, padding positions zeroed)."""
    try:
        import torch
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError as e:
        raise SystemExit(f"{PROG}: --prompt needs torch and transformers (pip install "
                         "transformers) and a local umT5 folder") from e
    try:
        tok = AutoTokenizer.from_pretrained(encoder_path)
        enc = UMT5EncoderModel.from_pretrained(encoder_path, torch_dtype=torch.float32)
    except (OSError, ValueError) as e:
        fail(f"--text-encoder {encoder_path}: not a loadable umT5 folder "
             f"({type(e).__name__}: {e})")
    t = tok([prompt], padding="max_length", max_length=max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(t.input_ids, t.attention_mask).last_hidden_state
    n = int(t.attention_mask.sum())
    h[:, n:] = 0
    return h.numpy()


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
