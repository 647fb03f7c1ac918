"""HunyuanVideo text-to-video sampling with the compiled loop.

As diffusers' HunyuanVideoPipeline: FlowMatchEuler with sigmas linspace(1, 0, n + 1)[:-1]
shifted by 7, the distilled (embedded) guidance input guidance_scale x 1000 and no true
classifier-free guidance. The text encoders (Llama + CLIP,
`svg2_jax.text.encode_hunyuan_prompt`) and the VAE (`decode_with_jax_vae`) are JAX too: a
prompt becomes a video without torch; the loop takes the text states, so they may also come precomputed.
`decode_with_diffusers_vae` decodes through diffusers' PyTorch VAE instead (the parity
tests' reference; needs the `torch` extra).
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models import hunyuan_vae
from svg2_jax.models.hunyuan import (HunyuanVideoConfig, HunyuanVideoTransformer3DModel,
                                     hunyuan_forward)
from svg2_jax.pipelines import video
from svg2_jax.sampling import SamplerConfig, make_sampler
from svg2_jax.sharding.mesh import attention_state

# A deliberately tiny random HunyuanVideo (1 dual + 1 single block, 2 x 16 heads), for
# showing the path in seconds. Its output is noise.
TINY_CONFIG = HunyuanVideoConfig(in_channels=16, out_channels=16, num_attention_heads=2,
                                 attention_head_dim=16, num_layers=1, num_single_layers=1,
                                 num_refiner_layers=1, text_embed_dim=64,
                                 pooled_projection_dim=32, rope_axes_dim=(4, 6, 6))


def patch(config: HunyuanVideoConfig):
    return config.patch_size_t, config.patch_size, config.patch_size


def latent_shape(config: HunyuanVideoConfig, height: int, width: int, frames: int,
                 vae: "video.VAECompression | None" = None):
    """vae: the VAE's config (its compression; None: 4x / 8x, the released VAE's)."""
    return video.latent_shape(config.in_channels, patch(config), height, width, frames, vae)


def sequence_length(config: HunyuanVideoConfig, height: int, width: int, frames: int,
                    vae: "video.VAECompression | None" = None) -> int:
    """Video tokens per sample (118800 for 1280x720, 129 frames); text tokens come on top."""
    return video.sequence_length(config.in_channels, patch(config), height, width, frames,
                                 vae)


@dataclasses.dataclass
class HunyuanSampler:
    """The compiled sampler of one HunyuanVideo model.

    sample(latents, text) -> SampleResult with text = (prompt_embeds [B, T, 4096],
    prompt_attention_mask [B, T], pooled_prompt_embeds [B, 768]). embedded_guidance:
    the distilled guidance scale (diffusers' guidance_scale, 6.0 by default); it goes in
    as guidance_scale x 1000 when the model has a guidance embedding. mesh: as
    `WanSampler`'s (sequence and head parallel; no CFG axis, there is no second pass).
    """

    model: HunyuanVideoTransformer3DModel
    scheduler: object
    config: SamplerConfig
    embedded_guidance: float = 6.0
    mesh: object = None

    def __post_init__(self):
        if self.config.cfg:
            raise ValueError("HunyuanVideo uses embedded (distilled) guidance: set the "
                             "sampler's guidance_scale to 1 and pass embedded_guidance")
        if self.mesh is not None:
            self.mesh.prepare(self.model)
        graphdef, self.params = nnx.split(self.model)
        dtype = self.model.dtype
        use_guidance = self.model.config.guidance_embeds
        scale = self.embedded_guidance

        def model_fn(params, latents, t, text, state):
            embeds, mask, pooled = text
            guidance = (jnp.full(t.shape, scale * 1000.0, jnp.float32) if use_guidance
                        else None)
            return hunyuan_forward(graphdef, params, latents.astype(dtype), t,
                                   embeds.astype(dtype), mask, pooled.astype(dtype), guidance,
                                   state)

        self._sample = make_sampler(model_fn, self.model.attention, self.scheduler, self.config,
                                    self.mesh)

    def init_state(self, batch: int, abstract: bool = False):
        """The attention state for `batch` videos (`attention_state`)."""
        return attention_state(self.model, batch, self.mesh, abstract)

    def lower(self, latents, text):
        return self._sample.lower(self.params, latents, text, None,
                                  self.init_state(latents.shape[0], abstract=True))

    def __call__(self, latents, text):
        return self._sample(self.params, latents, text, None, self.init_state(latents.shape[0]))


def decode_latents(latents: np.ndarray, vae):
    """Latents [B, 16, F, H, W] (what the sampler returns) -> the decoded video, a torch
    tensor [B, 3, T, H*8, W*8] in about [-1, 1], through a diffusers
    `AutoencoderKLHunyuanVideo`, dividing by its scaling_factor first as
    HunyuanVideoPipeline does."""
    import torch

    z = torch.from_numpy(np.array(latents, np.float32)).to(vae.dtype)
    with torch.no_grad():
        return vae.decode(z / vae.config.scaling_factor).sample


def decode_with_diffusers_vae(latents: np.ndarray, vae_path: str) -> np.ndarray:
    """Latents [B, 16, F, H, W] -> uint8 video [B, T, H*8, W*8, 3] through diffusers'
    AutoencoderKLHunyuanVideo loaded from vae_path (`decode_latents`)."""
    try:
        import torch
        from diffusers import AutoencoderKLHunyuanVideo
    except ImportError as e:
        raise RuntimeError("decoding needs PyTorch and diffusers: pip install 'svg2-jax[torch]'"
                           ) from e
    vae = AutoencoderKLHunyuanVideo.from_pretrained(vae_path, torch_dtype=torch.float32)
    return video.to_uint8_frames(decode_latents(latents, vae))


def decode_with_jax_vae(latents, vae: "hunyuan_vae.AutoencoderKLHunyuanVideo | str | os.PathLike",
                        preset: "str | hunyuan_vae.HunyuanVideoVAEConfig | None" = None, *,
                        tiling: hunyuan_vae.HunyuanVAETiling = hunyuan_vae.HunyuanVAETiling(),
                        dtype=jnp.float32) -> np.ndarray:
    """Latents [B, 16, F, H, W] -> uint8 video [B, 1 + 4(F - 1), H*8, W*8, 3] through the JAX
    HunyuanVideo VAE, dividing by its scaling_factor as HunyuanVideoPipeline does, in
    diffusers' tiles (`tiling`: temporal tiles by default; `use_tiling=True` adds spatial
    ones, as `vae.enable_tiling()`).

    vae: a loaded `AutoencoderKLHunyuanVideo`, or a checkpoint path for `hunyuan_vae.load`
      with `preset` (None: the checkpoint's own config) and weight `dtype`.
    """
    if not isinstance(vae, hunyuan_vae.AutoencoderKLHunyuanVideo):
        vae = hunyuan_vae.load(vae, preset, dtype)
    z = hunyuan_vae.unscale(jnp.asarray(latents, jnp.float32), vae.config)
    return video.to_uint8_frames(hunyuan_vae.hunyuan_vae_decode(vae, z, tiling))
