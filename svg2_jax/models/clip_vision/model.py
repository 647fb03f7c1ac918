"""The CLIP vision tower as Flax NNX modules (transformers' `CLIPVisionModel`: the image
encoder of Wan2.1's image-to-video models, which take its penultimate hidden states).

Module names are transformers 5.24's (`embeddings.class_embedding`,
`embeddings.patch_embedding`, `embeddings.position_embedding`, `pre_layrnorm` (sic),
`encoder.layers.{i}.*` as the text tower's, `post_layernorm`); checkpoints saved by
transformers 4 put `vision_model.` before each key, removed on read. The encoder is
`svg2_jax.models.clip_text`'s, with bidirectional attention. The stride-patch Conv2d is a
Linear on flattened (c, p_h, p_w) patches.

    model = CLIPVisionModel(PRESETS["clip-vit-h-14-vision"], rngs=nnx.Rngs(0))
    states = model.hidden_states(pixel_values)      # [33, B, 257, 1280]
    wan_image_features = states[-2]                 # diffusers' encode_image
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from svg2_jax.models.clip_text.model import CLIPEncoder
from svg2_jax.models.clip_vision.config import CLIPVisionConfig
from svg2_jax.models.common.layers import FP32LayerNorm
from svg2_jax.models.common.text_encoder import linear


class CLIPVisionEmbeddings(nnx.Module):
    """Class token + patch embeddings, plus learned positions (at the trained size only:
    transformers' interpolate_pos_encoding is not ported)."""

    def __init__(self, config: CLIPVisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.config = config
        self.class_embedding = nnx.Param(
            jax.random.normal(rngs.params(), (d,), param_dtype))
        self.patch_embedding = linear(config.num_channels * p * p, d, bias=False, dtype=dtype,
                                      param_dtype=param_dtype, rngs=rngs)
        self.position_embedding = nnx.Embed(config.num_positions, d, dtype=dtype,
                                            param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values: [B, C, S, S] -> [B, 1 + (S/p)^2, D]."""
        p = self.config.patch_size
        patches = rearrange(pixel_values, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=p, pw=p)
        x = self.patch_embedding(patches)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype),
                               (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1)
        return x + self.position_embedding(jnp.arange(x.shape[1]))[None]


class CLIPVisionModel(nnx.Module):
    """transformers' `CLIPVisionModel`: pixels -> hidden states (and the pooled class token).

    dtype: activations and matmuls (float32 by default: one image per video, and the
    features condition every step); LayerNorms compute in float32.
    """

    def __init__(self, config: CLIPVisionConfig, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, eps = config.hidden_size, config.layer_norm_eps
        self.config, self.dtype = config, dtype
        self.embeddings = CLIPVisionEmbeddings(config, **kw)
        self.pre_layrnorm = FP32LayerNorm(d, eps, True)
        self.encoder = CLIPEncoder(config, causal=False, **kw)
        self.post_layernorm = FP32LayerNorm(d, eps, True)

    def _check(self, pixel_values):
        c = self.config
        want = (c.num_channels, c.image_size, c.image_size)
        if getattr(pixel_values, "ndim", None) != 4 or tuple(pixel_values.shape[1:]) != want:
            raise ValueError(f"CLIPVisionModel: pixel_values must be [B, {', '.join(map(str, want))}]"
                             f" (the processor's center crop), got "
                             f"{getattr(pixel_values, 'shape', None)}")

    def _embed(self, pixel_values):
        self._check(pixel_values)
        h = self.embeddings(pixel_values.astype(self.dtype))
        return self.pre_layrnorm(h).astype(self.dtype)

    def hidden_states(self, pixel_values: jax.Array) -> jax.Array:
        """[num_layers + 1, B, N, D]: the embeddings (after `pre_layrnorm`), then every
        layer's output: transformers' `output_hidden_states=True` tuple, stacked."""
        h = self._embed(pixel_values)
        return jnp.concatenate([h[None], self.encoder.hidden_states(h, None)], axis=0)

    def __call__(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """pixel_values: [B, C, S, S] (`preprocess.clip_pixel_values`) ->
        (last_hidden_state [B, N, D], pooler_output [B, D] = post_layernorm(class token))."""
        last = self.encoder(self._embed(pixel_values), None)
        return last, self.post_layernorm(last[:, 0]).astype(self.dtype)


@nnx.jit
def penultimate_hidden_states(model: CLIPVisionModel, pixel_values: jax.Array) -> jax.Array:
    """hidden_states[-2] [B, N, D]: the image features diffusers' WanImageToVideoPipeline
    (`encode_image`) gives the transformer. Compiled once per input shape."""
    return model.hidden_states(pixel_values)[-2]
