"""svg2-generate's text conditioning: precomputed embeddings read and checked, or a
prompt encoded with a local umT5 (Wan). Problems exit with a message naming the file."""

from __future__ import annotations

import os

import numpy as np

PROG = "svg2-generate"
WAN_TEXT_LENGTH = 512  # diffusers' WanPipeline max_sequence_length


def fail(message: str):
    raise SystemExit(f"{PROG}: {message}")


def load_embeddings(path, text_dim: int, what: str) -> np.ndarray:
    """.npy [L, text_dim] (or [1, L, text_dim]) -> float32 [1, L, text_dim], checked."""
    if not os.path.exists(path):
        fail(f"{what} file not found: {path}")
    x = np.load(path)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[-1] != text_dim:
        fail(f"{what} must be [L, {text_dim}] (or [1, L, {text_dim}]), got {x.shape} from "
             f"{path}")
    if not np.isfinite(x).all():
        fail(f"{what} in {path} contains NaN/Inf")
    return x.astype(np.float32)


def encode_prompt(prompt: str, encoder_path: str, max_length: int = WAN_TEXT_LENGTH):
    """umT5 states [1, max_length, D] of a prompt as diffusers' WanPipeline computes them
    (padded to max_length, padding positions zeroed)."""
    try:
        import torch
        from transformers import AutoTokenizer, UMT5EncoderModel
    except ImportError as e:
        raise SystemExit(f"{PROG}: --prompt needs torch and transformers (pip install "
                         "transformers) and a local umT5 folder") from e
    tok = AutoTokenizer.from_pretrained(encoder_path)
    enc = UMT5EncoderModel.from_pretrained(encoder_path, torch_dtype=torch.float32)
    t = tok([prompt], padding="max_length", max_length=max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(t.input_ids, t.attention_mask).last_hidden_state
    n = int(t.attention_mask.sum())
    h[:, n:] = 0
    return h.numpy()


HUNYUAN_KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds")


def load_hunyuan_text(path, config):
    """.npz with prompt_embeds [T, D], prompt_attention_mask [T], pooled_prompt_embeds [P]
    (a leading batch axis of 1 is accepted) -> batched float32 / bool arrays, checked."""
    if not os.path.exists(path):
        fail(f"--text-embeddings file not found: {path}")
    with np.load(path) as z:
        missing = set(HUNYUAN_KEYS) - set(z)
        if missing:
            fail(f"{path} lacks {sorted(missing)} (HunyuanVideo needs "
                 f"{', '.join(HUNYUAN_KEYS)})")
        emb, mask, pooled = (np.asarray(z[k]) for k in HUNYUAN_KEYS)
    emb = emb[None] if emb.ndim == 2 else emb
    mask = mask[None] if mask.ndim == 1 else mask
    pooled = pooled[None] if pooled.ndim == 1 else pooled
    if (emb.ndim != 3 or emb.shape[0] != 1 or emb.shape[-1] != config.text_embed_dim
            or mask.shape != emb.shape[:2] or pooled.shape != (1, config.pooled_projection_dim)):
        fail(f"{path}: expected prompt_embeds [T, {config.text_embed_dim}], "
             f"prompt_attention_mask [T], pooled_prompt_embeds "
             f"[{config.pooled_projection_dim}]; got {emb.shape}, {mask.shape}, {pooled.shape}")
    if not (np.isfinite(emb).all() and np.isfinite(pooled).all()):
        fail(f"text embeddings in {path} contain NaN/Inf")
    if mask.sum() < 1:
        fail(f"{path}: the attention mask has no real token")
    return emb.astype(np.float32), mask.astype(bool), pooled.astype(np.float32)
