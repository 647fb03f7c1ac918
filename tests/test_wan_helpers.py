"""Shared fixtures for the Wan tests (tiny random diffusers models and their inputs).

No tests here; the name only keeps it inside the Wan test files' pattern.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from svg2_jax.models.wan import WanConfig  # noqa: E402

# Latent F=3, H=6, W=10 -> a 3 x 3 x 5 post-patch grid (odd on every axis), S = 45.
LATENT_FHW = (3, 6, 10)
TEXT_LEN_I2V = 512  # diffusers' WanAttnProcessor hardcodes 512 text tokens for I2V
IMAGE_TOKENS = 9

TINY = {
    # head dim 12: rotary parts t=4, h=w=4
    "t2v": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4,
                     out_channels=4, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2),
    # head dim 24 (t=8, h=w=8), no cross-attention norm, out != in channels
    "t2v_hd24_nonorm": WanConfig(num_attention_heads=2, attention_head_dim=24, in_channels=4,
                                 out_channels=6, text_dim=32, freq_dim=16, ffn_dim=64,
                                 num_layers=3, cross_attn_norm=False),
    "i2v": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=6,
                     out_channels=4, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2,
                     image_dim=20, added_kv_proj_dim=24),
    "flf2v": WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=6,
                       out_channels=4, text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2,
                       image_dim=20, added_kv_proj_dim=24,
                       pos_embed_seq_len=2 * IMAGE_TOKENS),
}


def torch_model(config: WanConfig, seed: int = 0):
    """A diffusers WanTransformer3DModel (fp32, eval) with every parameter random,
    including norm scales/biases and position embeddings that initialise to 1 / 0."""
    torch.manual_seed(seed)
    model = diffusers.WanTransformer3DModel(**config.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(config: WanConfig, batch: int = 2, seed: int = 1) -> dict:
    """Random torch inputs for one forward (fp32)."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = LATENT_FHW
    text_len = TEXT_LEN_I2V if config.is_i2v else 16
    out = dict(
        hidden_states=torch.randn(batch, config.in_channels, f, h, w, generator=g),
        timestep=torch.tensor([999.0, 3.5, 500.0, 0.0][:batch]),
        encoder_hidden_states=torch.randn(batch, text_len, config.text_dim, generator=g))
    if config.is_i2v:
        rows = 2 * batch if config.pos_embed_seq_len else batch
        out["encoder_hidden_states_image"] = torch.randn(rows, IMAGE_TOKENS, config.image_dim,
                                                         generator=g)
    return out


def torch_forward(model, x: dict) -> np.ndarray:
    with torch.no_grad():
        return model(**x, return_dict=False)[0].numpy()


def jax_args(x: dict, attn_state=None) -> tuple:
    """The torch inputs as the positional arguments of our model."""
    import jax.numpy as jnp

    image = x.get("encoder_hidden_states_image")
    return (jnp.asarray(x["hidden_states"].numpy()), jnp.asarray(x["timestep"].numpy()),
            jnp.asarray(x["encoder_hidden_states"].numpy()), attn_state,
            None if image is None else jnp.asarray(image.numpy()))


def jax_forward(model, x: dict, attn_state=None):
    """Eager call: on CPU, op-by-op dispatch (its per-op compilations are shared by all
    tests) beats compiling each tiny model whole."""
    return model(*jax_args(x, attn_state))


def same_params(a, b) -> bool:
    """Two NNX models hold identical parameters (paths, dtypes and values)."""
    from flax import nnx

    fa, fb = (dict(nnx.to_flat_state(nnx.state(m))) for m in (a, b))
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(np.asarray(fa[k][...]),
                                                      np.asarray(fb[k][...])) for k in fa)


def rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


# diffusers -> official Wan2.1 names, written out by hand as the inverse of
# single_file_utils' rename table; `official_state_dict` checks it against diffusers' own
# `convert_wan_transformer_to_diffusers`.
_TOP = (("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
        ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
        ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
        ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
        ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
        ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
        ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
        ("proj_out.", "head.head."),
        ("patch_embedding.", "patch_embedding."))
_BLOCK = (("attn1.to_out.0.", "self_attn.o."), ("attn2.to_out.0.", "cross_attn.o."),
          ("attn1.to_", "self_attn."), ("attn2.to_", "cross_attn."),
          ("attn1.norm_", "self_attn.norm_"), ("attn2.norm_added_k.", "cross_attn.norm_k_img."),
          ("attn2.norm_", "cross_attn.norm_"), ("attn2.add_k_proj.", "cross_attn.k_img."),
          ("attn2.add_v_proj.", "cross_attn.v_img."), ("ffn.net.0.proj.", "ffn.0."),
          ("ffn.net.2.", "ffn.2."), ("norm2.", "norm3."), ("scale_shift_table", "modulation"))


def official_key(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key == "condition_embedder.image_embedder.pos_embed":
        return "img_emb.emb_pos"
    for ours, theirs in _TOP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    assert m, key
    rest = m.group(2)
    for ours, theirs in _BLOCK:
        if rest.startswith(ours):
            return f"blocks.{m.group(1)}.{theirs}{rest[len(ours):]}"
    raise AssertionError(f"no official name for {key}")


def official_state_dict(model, prefix: str = "") -> dict:
    """The model's weights under official Wan2.1 key names (contiguous, for save_file)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    official = {prefix + official_key(k): v for k, v in sd.items()}
    back = convert_wan_transformer_to_diffusers(dict(official))
    # single_file_utils does not rename the FLF2V position embedding; everything else
    # must round-trip exactly through diffusers' own mapping
    back = {("condition_embedder.image_embedder.pos_embed" if k == "img_emb.emb_pos" else k): v
            for k, v in back.items()}
    assert set(back) == set(sd), set(back) ^ set(sd)
    assert all(back[k] is sd[k] for k in sd)
    return official
