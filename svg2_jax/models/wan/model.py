"""The Wan (2.1 / 2.2) video DiT as Flax NNX modules (diffusers' `WanTransformer3DModel`).

Layout follows diffusers 0.42.1 `models/transformers/transformer_wan.py` module for module
(`patch_embedding`, `condition_embedder`, `blocks`, `norm_out`, `proj_out`,
`scale_shift_table`), so the weight converters are renames plus transposes. The blocks'
parameters are stacked on a leading layer axis (built with `nnx.vmap`) and run with one
`jax.lax.scan`, so a 40-layer model compiles a single block.

Self-attention is pluggable (`svg2_jax.layer_attention`): `DenseAttention()` or
`SVG2Attention(config)`. Its per-layer state (SVG2 centroids, None for dense) is stacked
on the same layer axis and scanned alongside the weights.

Calling it:

    model = WanTransformer3DModel(PRESETS["wan2.1-t2v-1.3b"], rngs=nnx.Rngs(0))
    out, attn_state, density = model(latents, t, text)     # [B, C, F, H, W], [B], [B, L, 4096]

Recommended jit pattern (pure function of the weights; the graph definition, which holds
the config and the attention object, is static):

    graphdef, params = nnx.split(model)
    step = jax.jit(functools.partial(wan_forward, graphdef))
    attn_state = model.attention.init_state(cfg.num_layers, B, cfg.num_attention_heads,
                                            cfg.attention_head_dim)   # None for dense
    for t in timesteps:                    # or inside lax.fori_loop / scan
        out, attn_state, density = step(params, latents, t, text, attn_state)

Switching dense <-> SVG2 is `model.attention = SVG2Attention(...)` (or the `attention=`
constructor argument) and a fresh `nnx.split`; no model code changes. `nnx.jit(model)`
also works.

Precision (default bf16 weights and activations): as in diffusers, the norms, the AdaLN
modulation (`scale_shift_table` + timestep projection), the timestep MLP (`time_embedder`
weights are float32) and the rotary embedding compute in float32; residual adds around
self-attention and the FFN happen in float32 and are cast back. Pass
dtype=param_dtype=jnp.float32 for a float32 model (parity tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models.common.embeddings import patchify, unpatchify_channels_last
from svg2_jax.models.common.inputs import check_latents, check_sequence, check_timestep
from svg2_jax.models.common.layers import FeedForward, FP32LayerNorm, linear
from svg2_jax.models.common.stack import scan_blocks, stacked_blocks
from svg2_jax.models.wan.attention import WanCrossAttention, WanSelfAttention
from svg2_jax.models.wan.config import WanConfig
from svg2_jax.models.wan.embeddings import WanTimeTextImageEmbedding, rotary_embedding
from svg2_jax.sharding.rules import EMBED


class WanTransformerBlock(nnx.Module):
    """Self-attention, cross-attention, FFN, with 6-way AdaLN modulation (shift, scale,
    gate for the self-attention and for the FFN) from `scale_shift_table` + temb."""

    def __init__(self, config: WanConfig, *, cross_attention_implementation: str | None,
                 dtype, param_dtype, rngs: nnx.Rngs):
        dim, heads, eps = config.inner_dim, config.num_attention_heads, config.eps
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanSelfAttention(dim, heads, eps, **kw)
        self.attn2 = WanCrossAttention(dim, heads, eps, config.added_kv_proj_dim,
                                       implementation=cross_attention_implementation, **kw)
        self.norm2 = (FP32LayerNorm(dim, eps, elementwise_affine=True)
                      if config.cross_attn_norm else None)
        self.ffn = FeedForward(dim, config.ffn_dim, dim, approximate=True, **kw)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        # float32 like diffusers (`_keep_in_fp32_modules`); init as diffusers' randn/sqrt(dim)
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 6, dim), jnp.float32) / dim ** 0.5)

    def __call__(self, x, context, context_image, timestep_proj, rotary, attention, state,
                 layer_index):
        """x: [B, S, D]; context: [B, L, D]; context_image: [B, N, D] | None;
        timestep_proj: [B, T, 6, D] (T = 1, or S for per-token timesteps); rotary: (cos,
        sin) [S, head_dim/2].

        Returns (x [B, S, D], new attention state, density [B, H]).
        """
        mod = self.scale_shift_table[...][None] + timestep_proj.astype(jnp.float32)
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            mod[:, :, i] for i in range(6))  # each [B, T, D]

        # 1. self-attention
        h = (self.norm1(x) * (1 + scale_msa) + shift_msa).astype(self.dtype)
        attn_out, state, density = self.attn1(h, rotary, attention, state, layer_index)
        x = (x.astype(jnp.float32) + attn_out * gate_msa).astype(self.dtype)

        # 2. cross-attention (no modulation, plain residual in the activation dtype)
        h = x if self.norm2 is None else self.norm2(x).astype(self.dtype)
        x = x + self.attn2(h, context, context_image)

        # 3. feed-forward
        h = (self.norm3(x) * (1 + c_scale_msa) + c_shift_msa).astype(self.dtype)
        x = (x.astype(jnp.float32) + self.ffn(h).astype(jnp.float32) * c_gate_msa
             ).astype(self.dtype)
        return x, state, density


class WanTransformer3DModel(nnx.Module):
    """Wan DiT (Wan2.1 T2V / I2V / FLF2V, a Wan2.2 expert, TI2V-5B) with stacked blocks and
    pluggable self-attention.

    Args:
      config: architecture (`WanConfig`, e.g. `PRESETS["wan2.1-t2v-14b"]`).
      attention: the self-attention object (`DenseAttention()` default, or
        `SVG2Attention(...)`); a hashable frozen dataclass, static under jit.
      cross_attention_implementation: passed to `jax.nn.dot_product_attention` for the
        text/image cross-attention (None = XLA, "cudnn" on NVIDIA GPUs).
      dtype: activation / matmul dtype. param_dtype: weight dtype (norm parameters,
        `scale_shift_table`s and the timestep MLP stay float32 regardless).
      rngs: for the random initialisation (weights are normally loaded over it).
    """

    def __init__(self, config: WanConfig, *, attention=DenseAttention(),
                 cross_attention_implementation: str | None = None, dtype=jnp.bfloat16,
                 param_dtype=jnp.bfloat16, rngs: nnx.Rngs):
        dim = config.inner_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.attention = attention
        self.dtype = dtype

        # Conv3d(kernel = stride = patch) == Linear over flattened patches
        self.patch_embedding = linear(config.in_channels * config.patch_volume, dim,
                                      names=(None, EMBED), **kw)
        self.condition_embedder = WanTimeTextImageEmbedding(config, **kw)

        self.blocks = stacked_blocks(  # every parameter: [num_layers, ...]
            config.num_layers, lambda r: WanTransformerBlock(
                config, cross_attention_implementation=cross_attention_implementation,
                dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)

        self.norm_out = FP32LayerNorm(dim, config.eps, elementwise_affine=False)
        self.proj_out = linear(dim, config.out_channels * config.patch_volume,
                               names=(EMBED, None), **kw)
        self.scale_shift_table = nnx.Param(
            jax.random.normal(rngs.params(), (1, 2, dim), jnp.float32) / dim ** 0.5)

    def init_attention_state(self, batch: int):
        """Fresh stacked state of the attention object for `batch` videos (None for dense)."""
        cfg = self.config
        return self.attention.init_state(cfg.num_layers, batch, cfg.num_attention_heads,
                                         cfg.attention_head_dim)

    def __call__(self, hidden_states: jax.Array, timestep: jax.Array,
                 encoder_hidden_states: jax.Array, attn_state=None,
                 encoder_hidden_states_image: jax.Array | None = None):
        """One denoiser evaluation.

        Args:
          hidden_states: [B, C, F, H, W] latents (F, H, W divisible by the patch size).
          timestep: [B] diffusion timesteps (float or int), or [B, S] one per video token
            (S = F'H'W' post-patch tokens; Wan2.2 TI2V's image-to-video keeps the first
            frame's tokens at 0: diffusers' `expand_timesteps`).
          encoder_hidden_states: [B, L, text_dim] text encoder states (diffusers pads to
            L = 512 tokens).
          attn_state: stacked attention state from `init_attention_state` /
            `attention.init_state`, or the previous call's; None starts a fresh one.
          encoder_hidden_states_image: I2V only: [B, N, image_dim] CLIP features (N = 257;
            FLF2V: [2B, N, image_dim], first and last frame). The image tokens are kept
            apart from the text instead of concatenated and split again: the same result
            as diffusers (which splits at L - 512) and the official code (first 257).

        Returns:
          (out [B, out_channels, F, H, W] in `dtype`, new attention state,
           density [num_layers, B, heads]: fraction of query-key pairs each layer's
           self-attention computed, 1 for dense).
        """
        cfg = self.config
        grid = self._check_inputs(hidden_states, timestep, encoder_hidden_states,
                                  encoder_hidden_states_image)
        b = hidden_states.shape[0]
        if attn_state is None:
            attn_state = self.init_attention_state(b)

        rotary = rotary_embedding(cfg.attention_head_dim, grid)
        x = self.patch_embedding(patchify(hidden_states.astype(self.dtype), cfg.patch))
        temb, timestep_proj, context, context_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image)
        timestep_proj = timestep_proj.reshape(*timestep_proj.shape[:2], 6, -1)  # [B, T, 6, D]

        x, attn_state, density = self._run_blocks(x, context, context_image, timestep_proj,
                                                  rotary, attn_state)

        mod = self.scale_shift_table[...][None] + temb.astype(jnp.float32)[:, :, None]
        shift, scale = mod[:, :, 0], mod[:, :, 1]  # [B, T, D]
        x = (self.norm_out(x) * (1 + scale) + shift).astype(self.dtype)
        x = self.proj_out(x)
        return unpatchify_channels_last(x, grid, cfg.patch), attn_state, density

    def _run_blocks(self, x, context, context_image, timestep_proj, rotary, attn_state):
        """Scan the stacked blocks; the attention state is scanned alongside.

        x: [B, S, D] -> (x [B, S, D], new state, density [L, B, H]).
        """
        attention = self.attention

        def body(block, x, layer):
            state, index = layer
            x, state, density = block(x, context, context_image, timestep_proj, rotary,
                                      attention, state, index)
            return x, (state, density)

        x, (attn_state, density) = scan_blocks(
            self.blocks, body, x, (attn_state, jnp.arange(self.config.num_layers)))
        return x, attn_state, density

    def _check_inputs(self, hidden_states, timestep, encoder_hidden_states, image):
        """Shape checks with messages; returns the post-patch grid (F', H', W')."""
        cfg, model = self.config, "Wan"
        b, grid = check_latents(model, hidden_states, cfg.in_channels, cfg.patch)
        if max(grid) > cfg.rope_max_seq_len:
            raise ValueError(f"Wan: post-patch grid {grid} exceeds rope_max_seq_len="
                             f"{cfg.rope_max_seq_len} on some axis")
        check_timestep(model, timestep, b, tokens=grid[0] * grid[1] * grid[2])
        check_sequence(model, "encoder_hidden_states", encoder_hidden_states, b, "text_dim",
                       cfg.text_dim)
        if cfg.is_i2v:
            rows = 2 * b if cfg.pos_embed_seq_len else b
            if image is None:
                raise ValueError("Wan: this is an image-to-video model "
                                 f"(image_dim={cfg.image_dim}): pass encoder_hidden_states_image")
            if (image.ndim != 3 or image.shape[0] != rows or image.shape[2] != cfg.image_dim
                    or (cfg.pos_embed_seq_len and 2 * image.shape[1] != cfg.pos_embed_seq_len)):
                want = (f"[{rows}, {cfg.pos_embed_seq_len // 2}, {cfg.image_dim}]"
                        if cfg.pos_embed_seq_len else f"[{rows}, N, {cfg.image_dim}]")
                raise ValueError(f"Wan: encoder_hidden_states_image must be {want}, got "
                                 f"{image.shape}")
        elif image is not None:
            raise ValueError("Wan: encoder_hidden_states_image given to a text-to-video model "
                             "(config.image_dim is None)")
        return grid


def wan_forward(graphdef: nnx.GraphDef, params: nnx.State, hidden_states, timestep,
                encoder_hidden_states, attn_state=None, encoder_hidden_states_image=None):
    """Pure form of `WanTransformer3DModel.__call__` over `nnx.split(model)`:
    `jax.jit(functools.partial(wan_forward, graphdef))(params, ...)`. Same returns."""
    model = nnx.merge(graphdef, params)
    return model(hidden_states, timestep, encoder_hidden_states, attn_state,
                 encoder_hidden_states_image)
