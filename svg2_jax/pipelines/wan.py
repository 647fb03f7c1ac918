"""Wan2.1 text-to-video sampling: shapes, the compiled denoising loop, latent decoding.

The denoiser and the loop are JAX; the text encoder (umT5-XXL) and the VAE stay in
PyTorch through transformers/diffusers until JAX ports exist, and are optional: the loop
takes precomputed text embeddings, and latents can be saved without decoding.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models.wan import WanConfig, WanTransformer3DModel, wan_forward
from svg2_jax.sampling import SamplerConfig, make_sampler

# Wan2.1's VAE: 8x spatial, 4x temporal compression, first frame kept (F = 1 + (T-1)/4).
VAE_SPATIAL = 8
VAE_TEMPORAL = 4

# A deliberately tiny random Wan (2 layers, 2 x 32 heads) for showing the whole path
# on a fresh machine in seconds. Its output is noise.
TINY_CONFIG = WanConfig(num_attention_heads=2, attention_head_dim=32, in_channels=16,
                        out_channels=16, text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2)


def latent_shape(config: WanConfig, height: int, width: int, frames: int):
    """(C, F, H, W) of the latents for a video of frames x height x width pixels, with a
    clear error when the size cannot go through the VAE and the patch embedding."""
    pt, ph, pw = config.patch_size
    problems = []
    if frames < 1 or (frames - 1) % VAE_TEMPORAL:
        problems.append(f"frames={frames} must be 1 + {VAE_TEMPORAL}k (e.g. 81): the VAE "
                        f"keeps the first frame and compresses the rest {VAE_TEMPORAL}x")
    for name, size, p in (("height", height, ph), ("width", width, pw)):
        if size < 1 or size % (VAE_SPATIAL * p):
            problems.append(f"{name}={size} must be a positive multiple of {VAE_SPATIAL * p} "
                            f"(VAE {VAE_SPATIAL}x times patch {p})")
    f = 1 + (frames - 1) // VAE_TEMPORAL if frames >= 1 else 0
    if not problems and f % pt:
        problems.append(f"{f} latent frames are not a multiple of the temporal patch {pt}")
    if problems:
        raise ValueError("cannot generate this size: " + "; ".join(problems))
    return config.in_channels, f, height // VAE_SPATIAL, width // VAE_SPATIAL


def sequence_length(config: WanConfig, height: int, width: int, frames: int) -> int:
    """Video tokens per sample (e.g. 75600 for 1280x720, 81 frames)."""
    _, f, h, w = latent_shape(config, height, width, frames)
    pt, ph, pw = config.patch_size
    return (f // pt) * (h // ph) * (w // pw)


@dataclasses.dataclass
class WanSampler:
    """The compiled sampler of one model, attention and solver.

    sample(latents, context, uncond_context) -> SampleResult; the same shapes never
    recompile. params stay outside the compiled program (an argument, not a constant).
    """

    model: WanTransformer3DModel
    scheduler: object
    config: SamplerConfig

    def __post_init__(self):
        graphdef, self.params = nnx.split(self.model)
        dtype = self.model.dtype

        def model_fn(params, latents, t, context, state):
            return wan_forward(graphdef, params, latents.astype(dtype), t,
                               context.astype(dtype), state)

        self._sample = make_sampler(model_fn, self.model.attention, self.scheduler, self.config)

    def init_state(self, batch: int):
        return self.model.init_attention_state(batch)

    def lower(self, latents, context, uncond_context):
        return self._sample.lower(self.params, latents, context, uncond_context,
                                  self.init_state(latents.shape[0]))

    def __call__(self, latents, context, uncond_context):
        return self._sample(self.params, latents, context, uncond_context,
                            self.init_state(latents.shape[0]))


def initial_noise(seed: int, shape) -> jax.Array:
    """[B, C, F, H, W] float32 standard normal latents (the loop keeps latents in float32)."""
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def decode_with_diffusers_vae(latents: np.ndarray, vae_path: str) -> np.ndarray:
    """Latents [B, 16, F, H, W] -> uint8 video [B, T, H*8, W*8, 3] through diffusers'
    AutoencoderKLWan (PyTorch), un-normalising with its latents_mean/std as diffusers'
    WanPipeline does."""
    try:
        import torch
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        raise RuntimeError("decoding needs PyTorch and diffusers: pip install 'svg2-jax[torch]'"
                           ) from e
    vae = AutoencoderKLWan.from_pretrained(vae_path, torch_dtype=torch.float32)
    z = torch.from_numpy(np.asarray(latents, np.float32))
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(z * std + mean).sample  # [B, 3, T, H, W] in [-1, 1]
    video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).numpy()


def latent_preview(latents: np.ndarray) -> np.ndarray:
    """Not a decode: the first 3 latent channels, normalised per channel and upsampled 8x,
    as uint8 frames [B, F, H*8, W*8, 3], for a look at the latents without a VAE."""
    x = np.asarray(latents[:, :3], np.float32)
    lo = x.min(axis=(2, 3, 4), keepdims=True)
    hi = x.max(axis=(2, 3, 4), keepdims=True)
    x = (x - lo) / np.maximum(hi - lo, 1e-6)
    x = np.repeat(np.repeat(x, VAE_SPATIAL, axis=3), VAE_SPATIAL, axis=4)
    return (np.moveaxis(x, 1, -1) * 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str, fps: int = 16):
    """frames: [T, H, W, 3] uint8 -> an H.264 mp4 through imageio's ffmpeg plugin."""
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise RuntimeError("writing mp4 needs imageio and imageio-ffmpeg: "
                           "pip install 'svg2-jax[video]'") from e
    try:
        with warnings.catch_warnings():
            # JAX warns on any fork; this one only starts the ffmpeg encoder process.
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264",
                        macro_block_size=1)
    except Exception as e:  # a missing ffmpeg backend surfaces here
        raise RuntimeError(f"could not write {path}: {e}. Install imageio-ffmpeg "
                           "(pip install 'svg2-jax[video]').") from e
