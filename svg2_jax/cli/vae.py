"""svg2-generate's --vae: the model family's JAX VAE (an svg2-convert orbax directory or a
diffusers `vae/` folder, its own config). Its config is read with the up-front checks
(`vae_config`: the latent size follows its compression, `vae_problems`: its latent
channels must be the DiT's), its weights before the DiT's (`load_vae`) so a broken file
stops the run before the big read. No torch. Problems name --vae."""

from __future__ import annotations

import importlib

from svg2_jax.cli.text import fail

# family -> the svg2_jax.models module of its VAE
VAE_MODELS = {"wan": "wan_vae", "hunyuan": "hunyuan_vae"}


def _load_module(family: str):
    return importlib.import_module(f"svg2_jax.models.{VAE_MODELS[family]}.load")


def vae_config(family: str, path: str):
    """The config the VAE checkpoint at `path` carries, no weights read (ValueError naming
    --vae when it carries none of the family's)."""
    from svg2_jax.checkpoints import checkpoint_config

    try:
        return checkpoint_config(_load_module(family).FAMILY, path)
    except ValueError as e:
        raise ValueError(f"--vae {path}: {e}") from None


def vae_problems(config, path: str, latent_channels: int) -> list[str]:
    """The VAE decodes the DiT's latents: as many latent channels as the DiT outputs."""
    if config.latent_channels != latent_channels:
        return [f"--vae {path} decodes {config.latent_channels}-channel latents; the model "
                f"makes {latent_channels}: not this model's VAE"]
    return []


def wan_vae_problems(config, path: str, spec) -> list[str]:
    """A Wan model's latents come from one VAE (`wan_models.WanModelSpec.vae`): --vae must
    compress as that one does (Wan2.1's 4x / 8x, Wan2.2's 4x / 16x)."""
    from svg2_jax.pipelines.wan import model_vae

    want, have = model_vae(spec), config
    if ((have.temporal_compression, have.spatial_compression)
            != (want.temporal_compression, want.spatial_compression)):
        return [f"--vae {path} compresses {have.temporal_compression}x in time and "
                f"{have.spatial_compression}x in space; {spec.name}'s latents come from a "
                f"{want.temporal_compression}x / {want.spatial_compression}x VAE ({spec.vae})"]
    return []


def load_vae(family: str, path: str, config):
    """The family's VAE at `path` with `config` (`vae_config`'s) in float32, as diffusers'
    pipelines run it."""
    import jax.numpy as jnp

    try:
        return _load_module(family).load(path, config, jnp.float32)
    except ValueError as e:
        fail(f"--vae {path}: {e}")
