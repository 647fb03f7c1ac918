"""The HunyuanVideo DiT as Flax NNX modules (diffusers' `HunyuanVideoTransformer3DModel`).

Layout follows diffusers 0.42.1 `models/transformers/transformer_hunyuan_video.py` module
for module (`x_embedder`, `context_embedder`, `time_text_embed`, `transformer_blocks`,
`single_transformer_blocks`, `norm_out`, `proj_out`), so the weight converters are renames
plus transposes. The dual-stream blocks, the single-stream blocks and the refiner blocks
are each stacked on a leading layer axis (`nnx.vmap`) and run with one `jax.lax.scan`, so
compile time does not grow with depth.

Self-attention is pluggable (`svg2_jax.layer_attention`): `DenseAttention()` or
`SVG2Attention(config)`, called on the joint [video | text] sequence with `num_text` and
`text_lengths` (see `attention.py`). Its per-layer state is stacked over all
`num_layers + num_single_layers` attention layers, numbered as the reference does: dual
block i is layer i, single block j is layer num_layers + j (20 + j for the 720p model).

Calling it:

    model = HunyuanVideoTransformer3DModel(PRESETS["hunyuan-video-t2v-720p"], rngs=nnx.Rngs(0))
    out, attn_state, density = model(latents, t, text, text_mask, pooled, guidance)
    # latents [B, 16, F, H, W], t [B], text [B, T, 4096], text_mask [B, T], pooled [B, 768],
    # guidance [B] (the distilled-guidance scale x 1000, as diffusers' pipeline passes it)

Recommended jit pattern (pure function of the weights; the graph definition, which holds
the config and the attention object, is static):

    graphdef, params = nnx.split(model)
    step = jax.jit(functools.partial(hunyuan_forward, graphdef))
    attn_state = model.init_attention_state(B)            # None for dense
    for t in timesteps:
        out, attn_state, density = step(params, latents, t, text, text_mask, pooled,
                                        guidance, attn_state)

Precision (default bf16 weights and activations): norms, AdaLN modulation, gated residual
sums, the timestep / guidance MLPs (float32 weights) and the rotary embedding compute in
float32; matmuls and attention in `dtype`. Pass dtype=param_dtype=jnp.float32 for a
float32 model (parity tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models.hunyuan.attention import (HunyuanVideoJointAttention,
                                               HunyuanVideoSingleAttention)
from svg2_jax.models.hunyuan.config import HunyuanVideoConfig
from svg2_jax.models.common.embeddings import unpatchify_channels_first
from svg2_jax.models.common.inputs import check_latents, check_sequence, check_timestep, shape
from svg2_jax.models.common.layers import FeedForward, FP32LayerNorm, linear
from svg2_jax.models.common.stack import scan_blocks, stacked_blocks
from svg2_jax.models.hunyuan.embeddings import (HunyuanVideoConditionEmbedding,
                                                HunyuanVideoPatchEmbed, rotary_embedding)
from svg2_jax.models.hunyuan.layers import (EPS, AdaLayerNormContinuous, AdaLayerNormZero,
                                            AdaLayerNormZeroSingle, gated_residual, modulate)
from svg2_jax.models.hunyuan.refiner import HunyuanVideoTokenRefiner
from svg2_jax.sharding.rules import EMBED, MLP


class HunyuanVideoTransformerBlock(nnx.Module):
    """Dual-stream block: separate AdaLN, projections and FFN for video and text, one joint
    attention over [video | text]."""

    def __init__(self, config: HunyuanVideoConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        dim, mlp = config.inner_dim, config.mlp_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.dtype = dtype
        self.norm1 = AdaLayerNormZero(dim, **kw)
        self.norm1_context = AdaLayerNormZero(dim, **kw)
        self.attn = HunyuanVideoJointAttention(dim, config.num_attention_heads,
                                               config.attention_head_dim, **kw)
        self.norm2 = FP32LayerNorm(dim, EPS, elementwise_affine=False)
        self.ff = FeedForward(dim, mlp, dim, approximate=True, **kw)
        self.norm2_context = FP32LayerNorm(dim, EPS, elementwise_affine=False)
        self.ff_context = FeedForward(dim, mlp, dim, approximate=True, **kw)

    def __call__(self, x, context, temb, rotary, text_lengths, attention, state, layer_index):
        """x: [B, Sv, D]; context: [B, T, D]; temb: [B, D]; rotary: (cos, sin)
        [Sv, head_dim/2]; text_lengths: [B] int32.

        Returns (x [B, Sv, D], context [B, T, D], new attention state, density [B, H]).
        """
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(
            context, temb)

        attn_out, context_attn_out, state, density = self.attn(
            norm_x, norm_c, rotary, text_lengths, attention, state, layer_index)
        x = gated_residual(x, attn_out, gate_msa)
        context = gated_residual(context, context_attn_out, c_gate_msa)

        norm_x = modulate(self.norm2(x), shift_mlp, scale_mlp, self.dtype)
        norm_c = modulate(self.norm2_context(context), c_shift_mlp, c_scale_mlp, self.dtype)
        x = gated_residual(x, self.ff(norm_x), gate_mlp)
        context = gated_residual(context, self.ff_context(norm_c), c_gate_mlp)
        return x, context, state, density


class HunyuanVideoSingleTransformerBlock(nnx.Module):
    """Single-stream block over [video | text]: one AdaLN, attention and a parallel MLP,
    concatenated and projected back by `proj_out`, then a gated residual."""

    def __init__(self, config: HunyuanVideoConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        dim, mlp = config.inner_dim, config.mlp_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn = HunyuanVideoSingleAttention(dim, config.num_attention_heads,
                                                config.attention_head_dim, **kw)
        self.norm = AdaLayerNormZeroSingle(dim, **kw)
        self.proj_mlp = linear(dim, mlp, names=(EMBED, MLP), **kw)
        self.proj_out = linear(dim + mlp, dim, names=(MLP, EMBED), **kw)

    def __call__(self, x, temb, rotary, num_text, text_lengths, attention, state, layer_index):
        """x: [B, Sv + T, D] with T = num_text text tokens last; temb: [B, D].

        Returns (x [B, Sv + T, D], new attention state, density [B, H]).
        """
        norm_x, gate = self.norm(x, temb)
        mlp = jax.nn.gelu(self.proj_mlp(norm_x), approximate=True)
        attn_out, state, density = self.attn(norm_x, rotary, num_text, text_lengths,
                                             attention, state, layer_index)
        out = self.proj_out(jnp.concatenate([attn_out, mlp], axis=-1))
        return gated_residual(x, out, gate), state, density


class HunyuanVideoTransformer3DModel(nnx.Module):
    """HunyuanVideo DiT with stacked blocks and pluggable joint self-attention.

    Args:
      config: architecture (`HunyuanVideoConfig`, e.g. `PRESETS["hunyuan-video-t2v-720p"]`).
      attention: the self-attention object (`DenseAttention()` default, or
        `SVG2Attention(...)`); a hashable frozen dataclass, static under jit.
      dtype: activation / matmul dtype. param_dtype: weight dtype (norm parameters and the
        timestep / guidance MLPs stay float32 regardless).
      rngs: for the random initialisation (weights are normally loaded over it).
    """

    def __init__(self, config: HunyuanVideoConfig, *, attention=DenseAttention(),
                 dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs: nnx.Rngs):
        dim = config.inner_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = config
        self.attention = attention
        self.dtype = dtype

        self.x_embedder = HunyuanVideoPatchEmbed(config.patch, config.in_channels, dim, **kw)
        self.context_embedder = HunyuanVideoTokenRefiner(
            config.text_embed_dim, config.num_attention_heads, config.attention_head_dim,
            config.num_refiner_layers, **kw)
        self.time_text_embed = HunyuanVideoConditionEmbedding(
            dim, config.pooled_projection_dim, config.guidance_embeds, **kw)

        # every parameter: [num_layers, ...] / [num_single_layers, ...]
        self.transformer_blocks = stacked_blocks(
            config.num_layers, lambda r: HunyuanVideoTransformerBlock(
                config, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)
        self.single_transformer_blocks = stacked_blocks(
            config.num_single_layers, lambda r: HunyuanVideoSingleTransformerBlock(
                config, dtype=dtype, param_dtype=param_dtype, rngs=r), rngs)

        self.norm_out = AdaLayerNormContinuous(dim, **kw)
        self.proj_out = linear(dim, config.patch_volume * config.out_channels,
                               names=(EMBED, None), **kw)

    def init_attention_state(self, batch: int):
        """Fresh stacked state of the attention object over all num_layers +
        num_single_layers attention layers (None for dense)."""
        cfg = self.config
        return self.attention.init_state(cfg.num_attention_layers, batch,
                                         cfg.num_attention_heads, cfg.attention_head_dim)

    def __call__(self, hidden_states: jax.Array, timestep: jax.Array,
                 encoder_hidden_states: jax.Array, encoder_attention_mask: jax.Array,
                 pooled_projections: jax.Array, guidance: jax.Array | None = None,
                 attn_state=None):
        """One denoiser evaluation.

        Args:
          hidden_states: [B, C, F, H, W] latents (F divisible by patch_size_t, H and W by
            patch_size).
          timestep: [B] diffusion timesteps (float or int).
          encoder_hidden_states: [B, T, text_embed_dim] LLM text states (diffusers' pipeline
            pads to T = 256 after dropping the prompt template).
          encoder_attention_mask: [B, T] 1 / True for real tokens. The refiner uses the mask
            as given; the joint attention, like diffusers, uses only its row sums (the
            number of real tokens), i.e. assumes right padding.
          pooled_projections: [B, pooled_projection_dim] pooled CLIP text embedding.
          guidance: [B] distilled-guidance input (diffusers' pipeline passes the guidance
            scale x 1000); required iff config.guidance_embeds.
          attn_state: stacked attention state from `init_attention_state`, or the previous
            call's; None starts a fresh one.

        Returns:
          (out [B, out_channels, F, H, W] in `dtype`, new attention state,
           density [num_layers + num_single_layers, B, heads]: fraction of query-key pairs
           each layer's attention computed, 1 for dense).
        """
        cfg = self.config
        grid = self._check_inputs(hidden_states, timestep, encoder_hidden_states,
                                  encoder_attention_mask, pooled_projections, guidance)
        if attn_state is None:
            attn_state = self.init_attention_state(hidden_states.shape[0])

        rotary = rotary_embedding(cfg.rope_axes_dim, grid, cfg.rope_theta)
        temb = self.time_text_embed(timestep, pooled_projections, guidance)
        x = self.x_embedder(hidden_states.astype(self.dtype))
        context = self.context_embedder(encoder_hidden_states, timestep, encoder_attention_mask)
        text_lengths = jnp.sum(encoder_attention_mask.astype(jnp.int32), axis=1)

        x, attn_state, density = self._run_blocks(x, context, temb, rotary, text_lengths,
                                                  attn_state)

        x = self.proj_out(self.norm_out(x, temb))
        return unpatchify_channels_first(x, grid, cfg.patch), attn_state, density

    def _run_blocks(self, x, context, temb, rotary, text_lengths, attn_state):
        """The dual blocks (scan 1) on (video, text), then the single blocks (scan 2) on the
        joint [video | text]; each scan takes its slice of the stacked attention state.

        x: [B, Sv, D]; context: [B, T, D] -> (video tokens [B, Sv, D], new state,
        density [L, B, H]).
        """
        cfg, attention = self.config, self.attention
        n_dual, t = cfg.num_layers, context.shape[1]
        dual_state = jax.tree.map(lambda a: a[:n_dual], attn_state)
        single_state = jax.tree.map(lambda a: a[n_dual:], attn_state)

        def dual(block, carry, layer):
            x, context = carry
            state, index = layer
            x, context, state, density = block(x, context, temb, rotary, text_lengths,
                                               attention, state, index)
            return (x, context), (state, density)

        def single(block, joint, layer):
            state, index = layer
            joint, state, density = block(joint, temb, rotary, t, text_lengths, attention,
                                          state, index)
            return joint, (state, density)

        (x, context), (dual_state, dual_density) = scan_blocks(
            self.transformer_blocks, dual, (x, context), (dual_state, jnp.arange(n_dual)))
        joint, (single_state, single_density) = scan_blocks(
            self.single_transformer_blocks, single, jnp.concatenate([x, context], axis=1),
            (single_state, n_dual + jnp.arange(cfg.num_single_layers)))

        attn_state = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), dual_state,
                                  single_state)
        density = jnp.concatenate([dual_density, single_density])
        return joint[:, :-t], attn_state, density

    def _check_inputs(self, hidden_states, timestep, encoder_hidden_states,
                      encoder_attention_mask, pooled_projections, guidance):
        """Shape checks with messages; returns the post-patch grid (F', H', W')."""
        cfg, model = self.config, "HunyuanVideo"
        b, grid = check_latents(model, hidden_states, cfg.in_channels, cfg.patch)
        check_timestep(model, timestep, b)
        es = encoder_hidden_states
        check_sequence(model, "encoder_hidden_states", es, b, "text_embed_dim",
                       cfg.text_embed_dim)
        mask = encoder_attention_mask
        if tuple(getattr(mask, "shape", ())) != es.shape[:2] or not (
                jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
            raise ValueError(f"HunyuanVideo: encoder_attention_mask must be an int or bool "
                             f"[B, T]={es.shape[:2]} array, got "
                             f"{getattr(mask, 'dtype', None)}{shape(mask)}")
        pp = pooled_projections
        if tuple(getattr(pp, "shape", ())) != (b, cfg.pooled_projection_dim):
            raise ValueError(f"HunyuanVideo: pooled_projections must be [B={b}, "
                             f"pooled_projection_dim={cfg.pooled_projection_dim}], got "
                             f"{shape(pp)}")
        if cfg.guidance_embeds:
            if guidance is None or tuple(getattr(guidance, "shape", ())) != (b,):
                raise ValueError(f"HunyuanVideo: this guidance-distilled model (guidance_embeds"
                                 f"=True) needs guidance [B]=[{b}], got "
                                 f"{getattr(guidance, 'shape', guidance)}")
        elif guidance is not None:
            raise ValueError("HunyuanVideo: guidance given to a model without a guidance "
                             "embedding (config.guidance_embeds is False)")
        return grid


def hunyuan_forward(graphdef: nnx.GraphDef, params: nnx.State, hidden_states, timestep,
                    encoder_hidden_states, encoder_attention_mask, pooled_projections,
                    guidance=None, attn_state=None):
    """Pure form of `HunyuanVideoTransformer3DModel.__call__` over `nnx.split(model)`:
    `jax.jit(functools.partial(hunyuan_forward, graphdef))(params, ...)`. Same returns."""
    model = nnx.merge(graphdef, params)
    return model(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                 pooled_projections, guidance, attn_state)
