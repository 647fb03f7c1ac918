"""Shared fixtures for the HunyuanVideo tests (tiny random diffusers models, their inputs,
and the official checkpoint layout made by inverting diffusers' key mapping).

No tests here; the name only keeps it inside the HunyuanVideo test files' pattern.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402

from test_wan_helpers import rel_err, same_params  # noqa: E402,F401  (shared, re-exported)

from svg2_jax.models.hunyuan import HunyuanVideoConfig, hunyuan_forward  # noqa: E402

TEXT_LEN = 12
TEXT_LENGTHS = (5, 9)  # real tokens per sample, right-padded to TEXT_LEN

TINY = {
    # head dim 16 = rope axes 4 + 6 + 6; guidance-distilled like the 720p model
    "t2v": HunyuanVideoConfig(in_channels=4, out_channels=4, num_attention_heads=2,
                              attention_head_dim=16, num_layers=2, num_single_layers=2,
                              num_refiner_layers=2, text_embed_dim=24,
                              pooled_projection_dim=20, rope_axes_dim=(4, 6, 6)),
    # no guidance input, temporal patch 2, out != in channels, mlp_ratio 2, 1 refiner layer
    "nog": HunyuanVideoConfig(in_channels=4, out_channels=6, num_attention_heads=2,
                              attention_head_dim=16, num_layers=1, num_single_layers=2,
                              num_refiner_layers=1, mlp_ratio=2.0, patch_size_t=2,
                              guidance_embeds=False, text_embed_dim=24,
                              pooled_projection_dim=20, rope_axes_dim=(4, 6, 6)),
}


def latent_fhw(config: HunyuanVideoConfig) -> tuple[int, int, int]:
    """A post-patch grid of 3 x 3 x 5 (odd on every axis): S = 45 video tokens."""
    return 3 * config.patch_size_t, 3 * config.patch_size, 5 * config.patch_size


def torch_model(config: HunyuanVideoConfig, seed: int = 0):
    """A diffusers HunyuanVideoTransformer3DModel (fp32, eval) with every parameter random,
    including norm scales that initialise to 1."""
    torch.manual_seed(seed)
    model = diffusers.HunyuanVideoTransformer3DModel(**config.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def inputs(config: HunyuanVideoConfig, batch: int = 2, seed: int = 1) -> dict:
    """Random torch inputs for one forward (fp32), text right-padded per TEXT_LENGTHS."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = latent_fhw(config)
    lengths = torch.tensor(TEXT_LENGTHS[:batch])
    out = dict(
        hidden_states=torch.randn(batch, config.in_channels, f, h, w, generator=g),
        timestep=torch.tensor([999.0, 3.5, 500.0][:batch]),
        encoder_hidden_states=torch.randn(batch, TEXT_LEN, config.text_embed_dim, generator=g),
        encoder_attention_mask=(torch.arange(TEXT_LEN)[None] < lengths[:, None]).long(),
        pooled_projections=torch.randn(batch, config.pooled_projection_dim, generator=g))
    if config.guidance_embeds:
        out["guidance"] = torch.tensor([6000.0, 3500.0, 1000.0][:batch])
    return out


def torch_forward(model, x: dict) -> np.ndarray:
    with torch.no_grad():
        return model(**x, return_dict=False)[0].numpy()


def jax_args(x: dict, attn_state=None) -> tuple:
    """The torch inputs as the positional arguments of our model."""
    import jax.numpy as jnp

    g = x.get("guidance")
    mask = x["encoder_attention_mask"].numpy()
    if np.issubdtype(mask.dtype, np.integer):
        mask = mask.astype(np.int32)  # torch's int64, without x64 in jax
    return (jnp.asarray(x["hidden_states"].numpy()), jnp.asarray(x["timestep"].numpy()),
            jnp.asarray(x["encoder_hidden_states"].numpy()),
            jnp.asarray(mask),
            jnp.asarray(x["pooled_projections"].numpy()),
            None if g is None else jnp.asarray(g.numpy()), attn_state)


def jax_forward(model, x: dict, attn_state=None):
    """One jitted forward. The graph definition is a static argument of a single shared jit,
    so every model of the same config, dtype and attention reuses one compilation (eager
    dispatch costs more per call than compiling once)."""
    return forward_args(model, *jax_args(x, attn_state))


def forward_args(model, *args):
    """`jax_forward` on our model's positional arguments."""
    from flax import nnx

    graphdef, params = nnx.split(model)
    return _jit_forward(graphdef, params, *args)


_jit_forward = jax.jit(hunyuan_forward, static_argnums=0)


# diffusers -> official HunyuanVideo names, written out by hand as the inverse of diffusers'
# convert_hunyuan_video_transformer_to_diffusers; `official_state_dict` checks it against
# that function.
_TOP = (("x_embedder.", "img_in."),
        ("time_text_embed.timestep_embedder.linear_1.", "time_in.mlp.0."),
        ("time_text_embed.timestep_embedder.linear_2.", "time_in.mlp.2."),
        ("time_text_embed.guidance_embedder.linear_1.", "guidance_in.mlp.0."),
        ("time_text_embed.guidance_embedder.linear_2.", "guidance_in.mlp.2."),
        ("time_text_embed.text_embedder.linear_1.", "vector_in.in_layer."),
        ("time_text_embed.text_embedder.linear_2.", "vector_in.out_layer."),
        ("context_embedder.proj_in.", "txt_in.input_embedder."),
        ("context_embedder.time_text_embed.timestep_embedder.linear_1.",
         "txt_in.t_embedder.mlp.0."),
        ("context_embedder.time_text_embed.timestep_embedder.linear_2.",
         "txt_in.t_embedder.mlp.2."),
        ("context_embedder.time_text_embed.text_embedder.", "txt_in.c_embedder."),
        ("proj_out.", "final_layer.linear."))
_REFINER = (("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.to_out.0.", "self_attn_proj."),
            ("ff.net.0.proj.", "mlp.fc1."), ("ff.net.2.", "mlp.fc2."),
            ("norm_out.linear.", "adaLN_modulation.1."))
_DUAL = (("norm1.linear.", "img_mod.linear."), ("norm1_context.linear.", "txt_mod.linear."),
         ("attn.norm_q.", "img_attn_q_norm."), ("attn.norm_k.", "img_attn_k_norm."),
         ("attn.norm_added_q.", "txt_attn_q_norm."), ("attn.norm_added_k.", "txt_attn_k_norm."),
         ("attn.to_out.0.", "img_attn_proj."), ("attn.to_add_out.", "txt_attn_proj."),
         ("ff.net.0.proj.", "img_mlp.fc1."), ("ff.net.2.", "img_mlp.fc2."),
         ("ff_context.net.0.proj.", "txt_mlp.fc1."), ("ff_context.net.2.", "txt_mlp.fc2."))
_SINGLE = (("attn.norm_q.", "q_norm."), ("attn.norm_k.", "k_norm."),
           ("proj_out.", "linear2."), ("norm.linear.", "modulation.linear."))
# fused official tensors: (diffusers block stem, official name, diffusers parts in row order)
_FUSED = (("context_embedder.token_refiner.refiner_blocks.{}.",
           "txt_in.individual_token_refiner.blocks.{}.self_attn_qkv.",
           ("attn.to_q.", "attn.to_k.", "attn.to_v.")),
          ("transformer_blocks.{}.", "double_blocks.{}.img_attn_qkv.",
           ("attn.to_q.", "attn.to_k.", "attn.to_v.")),
          ("transformer_blocks.{}.", "double_blocks.{}.txt_attn_qkv.",
           ("attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj.")),
          ("single_transformer_blocks.{}.", "single_blocks.{}.linear1.",
           ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp.")))
_BLOCKS = ((r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.(.+)",
            "txt_in.individual_token_refiner.blocks", _REFINER),
           (r"transformer_blocks\.(\d+)\.(.+)", "double_blocks", _DUAL),
           (r"single_transformer_blocks\.(\d+)\.(.+)", "single_blocks", _SINGLE))


def official_key(key: str) -> str:
    """The official name of an unfused diffusers key."""
    if key.startswith("norm_out.linear."):
        return "final_layer.adaLN_modulation.1." + key.rsplit(".", 1)[1]
    for ours, theirs in _TOP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    for pattern, prefix, table in _BLOCKS:
        m = re.fullmatch(pattern, key)
        if m:
            for ours, theirs in table:
                if m.group(2).startswith(ours):
                    return f"{prefix}.{m.group(1)}.{theirs}{m.group(2)[len(ours):]}"
    raise AssertionError(f"no official name for {key}")


def official_state_dict(model, prefix: str = "") -> dict:
    """The model's weights under official HunyuanVideo names: q/k/v (and the single blocks'
    MLP input) fused, the output modulation's halves in (shift, scale) order."""
    from diffusers.loaders.single_file_utils import (
        convert_hunyuan_video_transformer_to_diffusers)

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    official, used = {}, set()
    for stem, name, parts in _FUSED:
        i = 0
        while f"{stem.format(i)}{parts[0]}weight" in sd:
            for leaf in ("weight", "bias"):
                keys = [f"{stem.format(i)}{p}{leaf}" for p in parts]
                official[name.format(i) + leaf] = torch.cat([sd[k] for k in keys])
                used.update(keys)
            i += 1
    for key, value in sd.items():
        if key in used:
            continue
        if key.startswith("norm_out.linear."):
            scale, shift = value.chunk(2, dim=0)
            value = torch.cat([shift, scale]).contiguous()
        official[official_key(key)] = value
    # diffusers' own mapping must give the model's keys back; it hardcodes the 720p width
    # (3072) for the single blocks' linear1 split, so those are checked by hand here
    linear1 = {k: v for k, v in official.items() if ".linear1." in k}
    back = convert_hunyuan_video_transformer_to_diffusers(
        {k: v for k, v in official.items() if k not in linear1})
    split = {k for k in sd if k.startswith("single_transformer_blocks.")
             and (".attn.to_" in k or ".proj_mlp." in k)}
    assert set(back) == set(sd) - split, set(back) ^ (set(sd) - split)
    assert all(torch.equal(back[k], sd[k]) for k in back)
    d = model.config.num_attention_heads * model.config.attention_head_dim
    for key, value in linear1.items():
        i, leaf = re.fullmatch(r"single_blocks\.(\d+)\.linear1\.(\w+)", key).groups()
        q, k, v, mlp = torch.split(value, (d, d, d, value.shape[0] - 3 * d))
        base = f"single_transformer_blocks.{i}."
        for part, tensor in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v),
                             ("proj_mlp", mlp)):
            assert torch.equal(tensor, sd[f"{base}{part}.{leaf}"])
    return {prefix + k: v for k, v in official.items()}
