"""Each kind of transform the converters make, against tensors written out by hand (not
the converter's own plan inverted): Linear transposes, the Conv3d patch embedding, fused
q/k/v and linear1 splits, the final modulation's half swap, and the renames of both
families' official layouts and of diffusers' layout."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import test_hunyuan_helpers as hy
import test_wan_helpers as wan

from convert import hunyuan as convert_hunyuan
from convert import wan as convert_wan
from svg2_jax.models.hunyuan import load as load_hunyuan
from svg2_jax.models.wan import load as load_wan


def marked(shape, tag):
    """A tensor whose every entry is distinct and names its tensor (exact in float32)."""
    return (tag + np.arange(np.prod(shape), dtype=np.float32) / 4096).reshape(shape)


def converted(convert, load, state_dict, layout, config, tmp_path):
    """state_dict (numpy, in `layout`) saved as safetensors, converted to orbax in float32
    and loaded: our flat parameters, "a.b.c" -> numpy."""
    from safetensors.numpy import save_file

    src = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(src))
    convert.convert_to_orbax(src, layout, config, tmp_path / "orbax", dtype=jnp.float32)
    model = load(tmp_path / "orbax", config, dtype=jnp.float32)
    return {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.state(model))}


def check(ours, expectations):
    """expectations: (our path, stacked layer or None, expected numpy tensor)."""
    for path, layer, want in expectations:
        got = ours[path] if layer is None else ours[path][layer]
        np.testing.assert_array_equal(got, want, err_msg=f"{path}[{layer}]")


def patch_kernel(w):
    """Conv3d weight [D, C, pt, ph, pw] -> our kernel [C * pt * ph * pw, D], entry by entry
    (row index c, t, h, w in that order)."""
    d, c, pt, ph, pw = w.shape
    out = np.zeros((c * pt * ph * pw, d), np.float32)
    for o in range(d):
        for i in range(c):
            for t in range(pt):
                for y in range(ph):
                    for x in range(pw):
                        out[((i * pt + t) * ph + y) * pw + x, o] = w[o, i, t, y, x]
    return out


@pytest.fixture(scope="module")
def wan_official():
    model = wan.torch_model(wan.TINY["t2v"], seed=5)
    return {k: v.numpy() for k, v in wan.official_state_dict(model).items()}


@pytest.fixture(scope="module")
def hunyuan_official():
    model = hy.torch_model(hy.TINY["t2v"], seed=5)
    return {k: v.numpy() for k, v in hy.official_state_dict(model).items()}


# official Wan2.1 key -> (our path, stacked layer or None, transposed: a Linear weight)
WAN_OFFICIAL = {
    "blocks.1.self_attn.q.weight": ("blocks.attn1.to_q.kernel", 1, True),
    "blocks.1.self_attn.k.weight": ("blocks.attn1.to_k.kernel", 1, True),
    "blocks.0.self_attn.k.bias": ("blocks.attn1.to_k.bias", 0, False),
    "blocks.0.cross_attn.o.weight": ("blocks.attn2.to_out.kernel", 0, True),
    "blocks.1.cross_attn.v.weight": ("blocks.attn2.to_v.kernel", 1, True),
    "blocks.1.ffn.0.weight": ("blocks.ffn.proj_in.kernel", 1, True),
    "blocks.0.ffn.2.weight": ("blocks.ffn.proj_out.kernel", 0, True),
    # the official norm3 (cross-attention norm) is diffusers' norm2
    "blocks.0.norm3.weight": ("blocks.norm2.scale", 0, False),
    "blocks.0.norm3.bias": ("blocks.norm2.bias", 0, False),
    "blocks.1.modulation": ("blocks.scale_shift_table", 1, False),
    "blocks.0.self_attn.norm_q.weight": ("blocks.attn1.norm_q.scale", 0, False),
    "head.modulation": ("scale_shift_table", None, False),
    "head.head.weight": ("proj_out.kernel", None, True),
    "time_projection.1.weight": ("condition_embedder.time_proj.kernel", None, True),
    "text_embedding.0.bias": ("condition_embedder.text_embedder.linear_1.bias", None, False),
    "time_embedding.2.weight": ("condition_embedder.time_embedder.linear_2.kernel", None, True),
}
# diffusers key -> the same
WAN_DIFFUSERS = {
    "blocks.1.attn1.to_out.0.weight": ("blocks.attn1.to_out.kernel", 1, True),
    "blocks.0.ffn.net.0.proj.weight": ("blocks.ffn.proj_in.kernel", 0, True),
    "blocks.1.ffn.net.2.bias": ("blocks.ffn.proj_out.bias", 1, False),
    "blocks.0.norm2.weight": ("blocks.norm2.scale", 0, False),
    "blocks.1.attn2.norm_k.weight": ("blocks.attn2.norm_k.scale", 1, False),
    "condition_embedder.time_proj.weight": ("condition_embedder.time_proj.kernel", None, True),
}


def renamed(table, hand):
    """The expectations of a rename table on the marked tensors."""
    return [(path, layer, hand[key].T if transposed else hand[key])
            for key, (path, layer, transposed) in table.items()]


def test_wan_official_renames_transposes_and_patch_embedding(wan_official, tmp_path):
    sd = dict(wan_official)
    hand = {key: marked(sd[key].shape, tag)
            for tag, key in enumerate([*WAN_OFFICIAL, "patch_embedding.weight"], start=1)}
    sd.update(hand)
    ours = converted(convert_wan, load_wan, sd, "wan", wan.TINY["t2v"], tmp_path)
    check(ours, renamed(WAN_OFFICIAL, hand) + [
        ("patch_embedding.kernel", None, patch_kernel(hand["patch_embedding.weight"])),
        # the untouched layer of a stacked parameter kept its own tensor
        ("blocks.attn1.to_q.kernel", 0, sd["blocks.0.self_attn.q.weight"].T)])


def test_wan_diffusers_names(tmp_path):
    model = wan.torch_model(wan.TINY["t2v"], seed=6)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    hand = {key: marked(sd[key].shape, tag)
            for tag, key in enumerate([*WAN_DIFFUSERS, "patch_embedding.weight"], start=1)}
    sd.update(hand)
    ours = converted(convert_wan, load_wan, sd, "diffusers", wan.TINY["t2v"], tmp_path)
    check(ours, renamed(WAN_DIFFUSERS, hand) + [
        ("patch_embedding.kernel", None, patch_kernel(hand["patch_embedding.weight"]))])


REFINER = "context_embedder.token_refiner.refiner_blocks."
# official HunyuanVideo key -> (our path, stacked layer or None, transposed)
HUNYUAN_OFFICIAL = {
    "double_blocks.0.img_mod.linear.weight": ("transformer_blocks.norm1.linear.kernel", 0, True),
    "double_blocks.1.txt_mod.linear.bias": ("transformer_blocks.norm1_context.linear.bias", 1,
                                            False),
    "single_blocks.0.modulation.linear.weight": (
        "single_transformer_blocks.norm.linear.kernel", 0, True),
    "single_blocks.1.linear2.weight": ("single_transformer_blocks.proj_out.kernel", 1, True),
    "double_blocks.1.img_attn_q_norm.weight": ("transformer_blocks.attn.norm_q.scale", 1, False),
    "double_blocks.0.txt_attn_k_norm.weight": ("transformer_blocks.attn.norm_added_k.scale", 0,
                                               False),
    "single_blocks.1.k_norm.weight": ("single_transformer_blocks.attn.norm_k.scale", 1, False),
    "double_blocks.0.img_attn_proj.weight": ("transformer_blocks.attn.to_out.kernel", 0, True),
    "double_blocks.1.txt_attn_proj.weight": ("transformer_blocks.attn.to_add_out.kernel", 1,
                                             True),
    "double_blocks.0.txt_mlp.fc2.weight": ("transformer_blocks.ff_context.proj_out.kernel", 0,
                                           True),
    "double_blocks.1.img_mlp.fc1.bias": ("transformer_blocks.ff.proj_in.bias", 1, False),
    "txt_in.t_embedder.mlp.0.weight": (
        "context_embedder.time_text_embed.timestep_embedder.linear_1.kernel", None, True),
    "txt_in.c_embedder.linear_2.weight": (
        "context_embedder.time_text_embed.text_embedder.linear_2.kernel", None, True),
    "txt_in.input_embedder.weight": ("context_embedder.proj_in.kernel", None, True),
    "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight": (
        REFINER + "norm_out.linear.kernel", 0, True),
    "txt_in.individual_token_refiner.blocks.1.mlp.fc1.weight": (
        REFINER + "ff.proj_in.kernel", 1, True),
    "vector_in.in_layer.weight": ("time_text_embed.text_embedder.linear_1.kernel", None, True),
    "guidance_in.mlp.2.bias": ("time_text_embed.guidance_embedder.linear_2.bias", None, False),
    "time_in.mlp.0.weight": ("time_text_embed.timestep_embedder.linear_1.kernel", None, True),
    "final_layer.linear.weight": ("proj_out.kernel", None, True),
}
# fused official tensors, split by hand below
HUNYUAN_FUSED = ("double_blocks.1.img_attn_qkv.weight", "double_blocks.1.img_attn_qkv.bias",
                 "double_blocks.0.txt_attn_qkv.weight", "single_blocks.1.linear1.weight",
                 "single_blocks.0.linear1.bias",
                 "txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight",
                 "final_layer.adaLN_modulation.1.weight",
                 "final_layer.adaLN_modulation.1.bias", "img_in.proj.weight")


def test_hunyuan_official_splits_swap_renames_and_transposes(hunyuan_official, tmp_path):
    sd = dict(hunyuan_official)
    d = hy.TINY["t2v"].inner_dim  # 32
    hand = {key: marked(sd[key].shape, tag)
            for tag, key in enumerate([*HUNYUAN_OFFICIAL, *HUNYUAN_FUSED], start=1)}
    sd.update(hand)
    ours = converted(convert_hunyuan, load_hunyuan, sd, "hunyuan", hy.TINY["t2v"], tmp_path)
    qkv = hand["double_blocks.1.img_attn_qkv.weight"]  # rows: q | k | v
    qkv_b = hand["double_blocks.1.img_attn_qkv.bias"]
    txt = hand["double_blocks.0.txt_attn_qkv.weight"]
    lin1 = hand["single_blocks.1.linear1.weight"]  # rows: q | k | v | mlp
    lin1_b = hand["single_blocks.0.linear1.bias"]
    ref = hand["txt_in.individual_token_refiner.blocks.1.self_attn_qkv.weight"]
    mod = hand["final_layer.adaLN_modulation.1.weight"]  # rows: shift | scale
    mod_b = hand["final_layer.adaLN_modulation.1.bias"]
    check(ours, renamed(HUNYUAN_OFFICIAL, hand) + [
        ("transformer_blocks.attn.to_q.kernel", 1, qkv[:d].T),
        ("transformer_blocks.attn.to_k.kernel", 1, qkv[d:2 * d].T),
        ("transformer_blocks.attn.to_v.kernel", 1, qkv[2 * d:].T),
        ("transformer_blocks.attn.to_q.bias", 1, qkv_b[:d]),
        ("transformer_blocks.attn.to_v.bias", 1, qkv_b[2 * d:]),
        ("transformer_blocks.attn.add_q_proj.kernel", 0, txt[:d].T),
        ("transformer_blocks.attn.add_k_proj.kernel", 0, txt[d:2 * d].T),
        ("transformer_blocks.attn.add_v_proj.kernel", 0, txt[2 * d:].T),
        ("single_transformer_blocks.attn.to_q.kernel", 1, lin1[:d].T),
        ("single_transformer_blocks.attn.to_k.kernel", 1, lin1[d:2 * d].T),
        ("single_transformer_blocks.attn.to_v.kernel", 1, lin1[2 * d:3 * d].T),
        ("single_transformer_blocks.proj_mlp.kernel", 1, lin1[3 * d:].T),
        ("single_transformer_blocks.attn.to_k.bias", 0, lin1_b[d:2 * d]),
        ("single_transformer_blocks.proj_mlp.bias", 0, lin1_b[3 * d:]),
        (REFINER + "attn.to_q.kernel", 1, ref[:d].T),
        (REFINER + "attn.to_k.kernel", 1, ref[d:2 * d].T),
        (REFINER + "attn.to_v.kernel", 1, ref[2 * d:].T),
        # diffusers' AdaLayerNormContinuous wants (scale, shift)
        ("norm_out.linear.kernel", None, np.concatenate([mod[d:], mod[:d]]).T),
        ("norm_out.linear.bias", None, np.concatenate([mod_b[d:], mod_b[:d]])),
        ("x_embedder.proj.kernel", None, patch_kernel(hand["img_in.proj.weight"])),
    ])
