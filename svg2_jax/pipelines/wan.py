"""Wan sampling (Wan2.1 T2V / I2V / FLF2V, Wan2.2 A14B T2V / I2V with two experts, Wan2.2
TI2V-5B): shapes, loading the experts, the compiled denoising loop, latent decoding.

The denoiser, the loop, the image conditioning (`wan_i2v`: the JAX VAE and CLIP vision
tower), the text encoder (umT5, `svg2_jax.text.encode_wan_prompt`) and the VAE decode
(`decode_with_jax_vae`) are JAX: a prompt (and an image) becomes a video without torch.
The loop takes the text states, so they may also come precomputed.
`decode_with_diffusers_vae` decodes through diffusers' PyTorch VAE instead (the parity
tests' reference; needs the `torch` extra). The released models' settings are
`wan_models.WAN_MODELS`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax.models import wan_vae
from svg2_jax.models.wan import WanConfig, WanTransformer3DModel, load, wan_forward
from svg2_jax.pipelines import video
from svg2_jax.pipelines.wan_i2v import WanImageCondition
from svg2_jax.pipelines.wan_models import WanModelSpec, model_spec
from svg2_jax.sampling import SampleResult, SamplerConfig, make_sampler
from svg2_jax.sharding.mesh import attention_state

# A deliberately tiny random Wan (2 layers, 2 x 32 heads) for showing the whole path
# on a fresh machine in seconds. Its output is noise.
TINY_CONFIG = WanConfig(num_attention_heads=2, attention_head_dim=32, in_channels=16,
                        out_channels=16, text_dim=64, freq_dim=32, ffn_dim=128, num_layers=2)

# where the two experts of a Wan2.2 A14B checkpoint directory live: diffusers' repos (and
# svg2-convert's output for them), the official release
EXPERT_DIRS = (("transformer", "transformer_2"), ("high_noise_model", "low_noise_model"))


def model_vae(spec: "WanModelSpec | str") -> wan_vae.WanVAEConfig:
    """The config of the VAE a released model's latents belong to (its compression)."""
    return wan_vae.get_config(model_spec(spec).vae)


def _compression(vae) -> "video.VAECompression | None":
    return model_vae(vae) if isinstance(vae, (WanModelSpec, str)) else vae


def latent_shape(config: WanConfig, height: int, width: int, frames: int,
                 vae: "video.VAECompression | WanModelSpec | str | None" = None):
    """(C, F, H, W) of the noise latents (C = out_channels, the VAE's z_dim: image
    conditioning comes on top) for a video of that size, with a clear error if it cannot
    be. vae: the VAE's config (its compression), or a model (`wan_models.model_spec`: its
    VAE's); None: Wan2.1's 4x / 8x."""
    return video.latent_shape(config.out_channels, config.patch_size, height, width, frames,
                              _compression(vae))


def sequence_length(config: WanConfig, height: int, width: int, frames: int,
                    vae: "video.VAECompression | WanModelSpec | str | None" = None) -> int:
    """Video tokens per sample (75600 for Wan2.1 at 1280x720, 81 frames); vae as for
    `latent_shape`."""
    return video.sequence_length(config.out_channels, config.patch_size, height, width,
                                 frames, _compression(vae))


def _listing(path: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "nothing"


def expert_paths(spec: WanModelSpec, checkpoint, checkpoint_2=None,
                 second_name: str = "the second checkpoint") -> tuple[Path, ...]:
    """The checkpoint path of each expert of `spec`, with errors that say what is there.

    One expert: `checkpoint` (a diffusers repo root with `transformer/` is looked into).
    Two experts: `checkpoint` and `checkpoint_2` (high-noise then low-noise), or one
    directory holding both (`transformer/` + `transformer_2/`, diffusers and svg2-convert;
    `high_noise_model/` + `low_noise_model/`, the official release). second_name: what the
    errors call `checkpoint_2` (a command's flag).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    if checkpoint_2 is not None:
        if spec.num_experts == 1:
            raise ValueError(f"{spec.name} has one transformer: a second checkpoint "
                             f"({checkpoint_2}) is for the two-expert Wan2.2 A14B models")
        second = Path(checkpoint_2)
        if not second.exists():
            raise ValueError(f"second expert checkpoint not found: {second}")
        return path, second
    pairs = [(path / a, path / b) for a, b in EXPERT_DIRS] if path.is_dir() else []
    both = [p for p in pairs if p[0].is_dir() and p[1].is_dir()]
    if spec.num_experts == 1:
        if both:
            raise ValueError(
                f"{path} holds two experts ({both[0][0].name}/ and {both[0][1].name}/): a "
                f"Wan2.2 A14B checkpoint, not one {spec.name} transformer (use "
                "--model wan2.2-t2v-a14b or wan2.2-i2v-a14b, or point at one transformer)")
        return (pairs[0][0],) if pairs and pairs[0][0].is_dir() else (path,)
    if both:
        return both[0]
    half = [(p, q) for p, q in pairs if p.is_dir() or q.is_dir()]
    if half:
        have, missing = half[0] if half[0][0].is_dir() else half[0][::-1]
        raise ValueError(
            f"{spec.name} needs two experts, but {path} holds {have.name}/ without "
            f"{missing.name}/ (it holds: {_listing(path)}); a Wan2.1 checkpoint has one "
            f"transformer. Pass the other expert as {second_name}")
    raise ValueError(
        f"{spec.name} needs two experts (high-noise and low-noise transformers): pass the "
        f"second as {second_name}, or a directory holding transformer/ and "
        f"transformer_2/ (diffusers, svg2-convert) or high_noise_model/ and "
        f"low_noise_model/ (official); {path} holds {_listing(path) if path.is_dir() else 'one file'}")


def load_experts(spec: "WanModelSpec | str", checkpoint, checkpoint_2=None,
                 dtype=jnp.bfloat16, **load_kwargs) -> tuple[WanTransformer3DModel, ...]:
    """The model's transformer(s) (`expert_paths`), each loaded with `svg2_jax.models.wan.load`
    against the spec's preset (errors name the expert and what its checkpoint holds)."""
    spec = model_spec(spec)
    paths = expert_paths(spec, checkpoint, checkpoint_2)
    names = ("high-noise expert", "low-noise expert") if len(paths) == 2 else (spec.name,)
    models = []
    for name, path in zip(names, paths):
        try:
            models.append(load(path, spec.transformer, dtype=dtype, **load_kwargs))
        except ValueError as e:
            raise ValueError(f"{spec.name} {name} ({path}): {e}") from None
    return tuple(models)


def _timestep_grid(mask: jax.Array, patch) -> jax.Array:
    """The first-frame mask [1, 1, F, H, W] at the post-patch grid, flattened [S]
    (diffusers' `first_frame_mask[0][0][:, ::2, ::2].flatten()` for patch (1, 2, 2))."""
    pt, ph, pw = patch
    return mask[0, 0, ::pt, ::ph, ::pw].reshape(-1)


def _wan_model_fn(graphdef, dtype, patch):
    """model_fn(params, latents, t, (text, condition), state) of `make_sampler` for one
    transformer: the image condition concatenated (I2V) or put in place of the first frame
    with per-token timesteps (TI2V), as diffusers' pipelines build the model input."""

    def model_fn(params, latents, t, context, state):
        text, cond = context
        x, timestep, image = latents, t, None
        if cond is not None:
            image = cond.image_embeds
            if cond.replaces_first_frame:
                mask = cond.first_frame_mask
                x = (1 - mask) * cond.latents + mask * latents
                timestep = _timestep_grid(mask, patch)[None] * t[:, None]
            else:
                x = jnp.concatenate([latents, cond.latents.astype(latents.dtype)], axis=1)
        return wan_forward(graphdef, params, x.astype(dtype), timestep, text.astype(dtype),
                           state, None if image is None else image.astype(dtype))

    return model_fn


@dataclasses.dataclass
class WanSampler:
    """The compiled sampler of one Wan model (one transformer, or two experts), attention
    and solver.

    model: the transformer, or the experts, high-noise first (then `config` needs
      `boundary_timestep`; both experts have one architecture and attention).
    __call__(latents, context, uncond_context, condition=None) -> SampleResult; the same
    shapes never recompile; params stay outside the compiled program (arguments, not
    constants). condition: the `wan_i2v.WanImageCondition` of image-to-video models.
    mesh: a `svg2_jax.sharding.MeshPlan` to run on many devices (each model is prepared
    for it in place: head-parallel attention, parameters on their shards), or None.
    """

    model: WanTransformer3DModel | Sequence[WanTransformer3DModel]
    scheduler: object
    config: SamplerConfig
    mesh: object = None

    def __post_init__(self):
        models = tuple(self.model) if isinstance(self.model, (list, tuple)) else (self.model,)
        if len({m.config for m in models}) > 1 or len({m.attention for m in models}) > 1:
            raise ValueError("the experts must share one architecture and attention, got "
                             f"{[m.config for m in models]} / {[m.attention for m in models]}")
        if self.mesh is not None:
            for m in models:
                self.mesh.prepare(m)
        self.models = models
        self.transformer_config = models[0].config
        split = [nnx.split(m) for m in models]
        fns = [_wan_model_fn(g, m.dtype, m.config.patch_size) for (g, _), m in zip(split, models)]
        params = tuple(p for _, p in split)
        self.params = params[0] if len(models) == 1 else params
        self._sample = make_sampler(fns[0] if len(models) == 1 else fns, models[0].attention,
                                    self.scheduler, self.config, self.mesh)

    def init_state(self, batch: int, abstract: bool = False):
        """Each expert's fresh attention state (a tuple with two experts; on a mesh made
        on its devices; abstract=True: only shapes, `attention_state`)."""
        states = tuple(attention_state(m, batch, self.mesh, abstract) for m in self.models)
        return states[0] if len(states) == 1 else states

    def check_condition(self, latents, condition: WanImageCondition | None):
        """A clear error when the conditioning does not fit the model or the latents."""
        cfg = self.transformer_config
        b, c, f, h, w = latents.shape
        extra = cfg.in_channels - cfg.out_channels
        if c != cfg.out_channels:
            raise ValueError(f"latents have {c} channels; the model denoises "
                             f"out_channels={cfg.out_channels}")
        if condition is None:
            if extra or cfg.image_dim is not None:
                raise ValueError("this is an image-to-video model: pass an image condition "
                                 "(wan_i2v.image_condition)")
            return
        if cfg.image_dim is not None and condition.image_embeds is None:
            raise ValueError(f"the model takes CLIP image features (image_dim={cfg.image_dim})"
                             ": the condition has none (give image_condition an image_encoder)")
        if cfg.image_dim is None and condition.image_embeds is not None:
            raise ValueError("the condition has CLIP image features this model does not take "
                             "(image_dim is None)")
        z = condition.latents
        if condition.replaces_first_frame:
            if extra:
                raise ValueError("a first-frame (TI2V) condition for a model with "
                                 f"{extra} conditioning channels (in_channels "
                                 f"{cfg.in_channels}): build it with replace_first_frame=False")
            want = (b, c, 1, h, w)
            mask = (1, 1, f, h, w)
            if tuple(z.shape) != want or tuple(condition.first_frame_mask.shape) != mask:
                raise ValueError(f"first-frame condition latents {tuple(z.shape)} / mask "
                                 f"{tuple(condition.first_frame_mask.shape)} do not fit latents "
                                 f"{tuple(latents.shape)} (want {want} / {mask})")
        elif tuple(z.shape) != (b, extra, f, h, w):
            raise ValueError(f"condition latents {tuple(z.shape)} do not fit: the model takes "
                             f"{extra} conditioning channels at the latents' size "
                             f"{(b, extra, f, h, w)}" + (" (a TI2V-5B model conditions on the "
                             "first frame: replace_first_frame=True)" if not extra else ""))

    def arguments(self, latents, context, uncond_context, condition=None,
                  abstract: bool = False) -> tuple:
        """The compiled loop's arguments (checked): (params, latents, (context,
        condition), (uncond_context, condition), fresh states; abstract=True: the states'
        shapes only)."""
        self.check_condition(latents, condition)
        return (self.params, latents, (context, condition), (uncond_context, condition),
                self.init_state(latents.shape[0], abstract))

    def lower(self, latents, context, uncond_context, condition=None):
        """For ahead-of-time compilation: `.lower(...).compile()`, then call the result with
        `arguments(...)`."""
        return self._sample.lower(*self.arguments(latents, context, uncond_context, condition,
                                                  abstract=True))

    def __call__(self, latents, context, uncond_context, condition=None) -> SampleResult:
        result = self._sample(*self.arguments(latents, context, uncond_context, condition))
        if condition is not None and condition.replaces_first_frame:
            # diffusers puts the image latents in place of the first frame of the result too
            mask = condition.first_frame_mask
            result = dataclasses.replace(
                result, latents=(1 - mask) * condition.latents + mask * result.latents)
        return result


def sampler_config(spec: "WanModelSpec | str", **overrides) -> SamplerConfig:
    """The `SamplerConfig` of a released model: its steps, guidance (per expert) and
    expert boundary, then `overrides` (dense_fraction, ...)."""
    spec = model_spec(spec)
    values = dict(num_steps=spec.steps, guidance_scale=spec.guidance,
                  guidance_scale_2=spec.guidance_2, boundary_timestep=spec.boundary_timestep)
    return SamplerConfig(**{**values, **overrides})


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
