"""Wan2.1 text-to-video sampling: shapes, the compiled denoising loop, latent decoding.

The denoiser and the loop are JAX; the text encoder (umT5-XXL) stays in PyTorch through
transformers until a JAX port exists, and is optional: the loop takes precomputed text
embeddings. Latents decode with the JAX VAE (`decode_with_jax_vae`) or diffusers'
(`decode_with_diffusers_vae`), or are saved without decoding.
"""

from __future__ import annotations

import dataclasses

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models import wan_vae
from svg2_jax.models.wan import WanConfig, WanTransformer3DModel, wan_forward
from svg2_jax.pipelines import video
from svg2_jax.sampling import SamplerConfig, make_sampler

# A deliberately tiny random Wan (2 layers, 2 x 32 heads) for showing the whole path
# on a fresh machine in seconds. Its output is noise.
TINY_CONFIG = WanConfig(num_attention_heads=2, attention_head_dim=32, in_channels=16,
                        out_channels=16, text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2)


def latent_shape(config: WanConfig, height: int, width: int, frames: int):
    """(C, F, H, W) of Wan latents for a video of that size (clear error if it cannot be)."""
    return video.latent_shape(config.in_channels, config.patch_size, height, width, frames)


def sequence_length(config: WanConfig, height: int, width: int, frames: int) -> int:
    """Video tokens per sample (75600 for 1280x720, 81 frames)."""
    return video.sequence_length(config.in_channels, config.patch_size, height, width, frames)


@dataclasses.dataclass
class WanSampler:
    """The compiled sampler of one model, attention and solver.

    sample(latents, context, uncond_context) -> SampleResult; the same shapes never
    recompile. params stay outside the compiled program (an argument, not a constant).
    mesh: a `svg2_jax.sharding.MeshPlan` to run on many devices (the model is prepared
    for it in place: head-parallel attention, parameters on their shards), or None.
    """

    model: WanTransformer3DModel
    scheduler: object
    config: SamplerConfig
    mesh: object = None

    def __post_init__(self):
        if self.mesh is not None:
            self.mesh.prepare(self.model)
        graphdef, self.params = nnx.split(self.model)
        dtype = self.model.dtype

        def model_fn(params, latents, t, context, state):
            return wan_forward(graphdef, params, latents.astype(dtype), t,
                               context.astype(dtype), state)

        self._sample = make_sampler(model_fn, self.model.attention, self.scheduler, self.config,
                                    self.mesh)

    def init_state(self, batch: int, abstract: bool = False):
        """The attention state for `batch` videos (on a mesh: made on its devices; with
        abstract=True only its shapes, for `lower`)."""
        make = lambda: self.model.init_attention_state(batch)
        if self.mesh is not None:
            return self.mesh.init_state(self.model.attention, make, abstract)
        return jax.eval_shape(make) if abstract else make()

    def lower(self, latents, context, uncond_context):
        """For ahead-of-time compilation: `.lower(...).compile()`."""
        return self._sample.lower(self.params, latents, context, uncond_context,
                                  self.init_state(latents.shape[0], abstract=True))

    def __call__(self, latents, context, uncond_context):
        return self._sample(self.params, latents, context, uncond_context,
                            self.init_state(latents.shape[0]))


def decode_latents(latents: np.ndarray, vae):
    """Latents [B, z, F, H, W] (what the sampler returns) -> the decoded video, a torch
    tensor [B, 3, T, H*8, W*8] in about [-1, 1], through a diffusers `AutoencoderKLWan`,
    un-normalising with its latents_mean/std first as diffusers' WanPipeline does."""
    import torch

    z = torch.from_numpy(np.array(latents, np.float32)).to(vae.dtype)
    channels = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, dtype=z.dtype).view(channels)
    std = torch.tensor(vae.config.latents_std, dtype=z.dtype).view(channels)
    with torch.no_grad():
        return vae.decode(z * std + mean).sample


def decode_with_diffusers_vae(latents: np.ndarray, vae_path: str) -> np.ndarray:
    """Latents [B, 16, F, H, W] -> uint8 video [B, T, H*8, W*8, 3] through diffusers'
    AutoencoderKLWan (PyTorch) loaded from vae_path (`decode_latents`)."""
    try:
        import torch
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        raise RuntimeError("decoding needs PyTorch and diffusers: pip install 'svg2-jax[torch]'"
                           ) from e
    vae = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=torch.float32)
    return video.to_uint8_frames(decode_latents(latents, vae))


def decode_with_jax_vae(latents, vae: "wan_vae.AutoencoderKLWan | str | os.PathLike",
                        preset: "str | wan_vae.WanVAEConfig | None" = None, *,
                        chunk_frames: int | None = 1, dtype=jnp.float32) -> np.ndarray:
    """Latents [B, z_dim, F, H, W] -> uint8 video [B, 1 + 4(F - 1), H*s, W*s, 3] through the
    JAX Wan VAE, un-normalising with its latents_mean/std as diffusers' WanPipeline does,
    decoding `chunk_frames` latent frames per compiled step (memory bounded by a chunk).

    vae: a loaded `AutoencoderKLWan`, or a checkpoint path for `wan_vae.load` (an
      svg2-convert orbax directory or a diffusers `vae` directory) with `preset` (None:
      the checkpoint's own config) and weight `dtype`.
    """
    if not isinstance(vae, wan_vae.AutoencoderKLWan):
        vae = wan_vae.load(vae, preset, dtype)
    z = wan_vae.denormalize(jnp.asarray(latents, jnp.float32), vae.config)
    return video.to_uint8_frames(wan_vae.wan_vae_decode(vae, z, chunk_frames))
