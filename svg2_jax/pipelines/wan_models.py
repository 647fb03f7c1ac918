"""The released Wan models as pipelines: what each is beyond one transformer's architecture
(how many experts and where they switch, per-token timesteps, which VAE, what image
conditioning it takes) and the sampling settings its authors release it with.

`WAN_MODELS[name]` for the names `svg2-generate --model` takes; `model_spec(model)` also
derives a one-expert spec from a `WanConfig` or a diffusers config.json.
"""

from __future__ import annotations

import dataclasses
import os

from svg2_jax.models.wan import WanConfig, get_config

NUM_TRAIN_TIMESTEPS = 1000  # every Wan scheduler config's num_train_timesteps

# image conditioning a model takes
NO_IMAGE = "none"            # text-to-video
FIRST_FRAME = "first"        # image-to-video: the first frame
FIRST_LAST = "first_last"    # the first frame, optionally also the last (FLF2V)
OPTIONAL_FIRST = "optional"  # Wan2.2 TI2V-5B: text-to-video, or the first frame replaced


@dataclasses.dataclass(frozen=True)
class WanModelSpec:
    """A Wan model as its pipeline runs it.

    transformer: the `svg2_jax.models.wan` preset of each expert (or a WanConfig).
    boundary_ratio: two experts (diffusers' `transformer` for t >= boundary_ratio *
      1000, `transformer_2` below); None: one transformer.
    expand_timesteps: per-token timesteps, the image latents replacing the first frame
      (Wan2.2 TI2V-5B; diffusers' `expand_timesteps`).
    vae: the `svg2_jax.models.wan_vae` preset its latents belong to.
    image: NO_IMAGE, FIRST_FRAME, FIRST_LAST or OPTIONAL_FIRST (what --image /
      --last-image may be). image_encoder: the `svg2_jax.models.clip_vision` preset of the
      CLIP features the transformer takes (its image_dim), None without.
    steps, guidance, guidance_2 (the second expert's, None with one), shift (flow shift
      below 720p), shift_hd (at 720p), height, width, frames, fps: the released sampling
      settings (sources in the table's comments).
    """

    name: str
    transformer: str | WanConfig
    boundary_ratio: float | None = None
    expand_timesteps: bool = False
    vae: str = "wan2.1-vae"
    image: str = NO_IMAGE
    image_encoder: str | None = None
    steps: int = 50
    guidance: float = 5.0
    guidance_2: float | None = None
    shift: float = 3.0
    shift_hd: float = 5.0
    height: int = 480
    width: int = 832
    frames: int = 81
    fps: int = 16

    @property
    def config(self) -> WanConfig:
        return get_config(self.transformer)

    @property
    def num_experts(self) -> int:
        return 1 if self.boundary_ratio is None else 2

    @property
    def boundary_timestep(self) -> float | None:
        """diffusers' `boundary_ratio * scheduler.config.num_train_timesteps`."""
        return None if self.boundary_ratio is None else self.boundary_ratio * NUM_TRAIN_TIMESTEPS

    @property
    def takes_image(self) -> bool:
        return self.image != NO_IMAGE

    @property
    def needs_image(self) -> bool:
        return self.image in (FIRST_FRAME, FIRST_LAST)

    @property
    def takes_last_image(self) -> bool:
        return self.image == FIRST_LAST


# Sources. Architectures: svg2_jax.models.wan.config. Boundary ratios and expand_timesteps:
# diffusers' scripts/convert_wan_to_diffusers.py (main, 2026), which builds the released
# Diffusers repos' pipelines (T2V-A14B: WanPipeline(boundary_ratio=0.875); I2V-A14B:
# WanImageToVideoPipeline(boundary_ratio=0.9); TI2V-5B: WanPipeline(expand_timesteps=True),
# with the Wan2.2 VAE). Sampling settings: the official repositories' configs and
# generate.py (Wan-Video/Wan2.1: T2V 50 steps, I2V 40, FLF2V 50; shift 5.0, I2V at 480p
# 3.0, FLF2V 16; guidance 5.0. Wan-Video/Wan2.2 wan/configs: T2V-A14B 40 steps, shift 12.0,
# guidance (low noise 3.0, high noise 4.0); I2V-A14B 40 steps, shift 5.0, guidance 3.5 /
# 3.5; TI2V-5B 50 steps, shift 5.0, guidance 5.0, 121 frames at 24 fps, sizes 704x1280).
# diffusers' guidance_scale is the first (high-noise) expert's, guidance_scale_2 the
# second's. Default sizes: Wan2.1's the diffusers pipelines' (480x832; the 1.3B and the
# 480P I2V models are 480p models), Wan2.2 A14B's and FLF2V's the official 1280x720.
# The Wan2.1 T2V shift below 720p (3.0) is diffusers' Wan docs'.
WAN_MODELS: dict[str, WanModelSpec] = {s.name: s for s in (
    WanModelSpec("wan2.1-t2v-1.3b", "wan2.1-t2v-1.3b"),
    WanModelSpec("wan2.1-t2v-14b", "wan2.1-t2v-14b"),
    WanModelSpec("wan2.1-i2v-14b", "wan2.1-i2v-14b", image=FIRST_FRAME,
                 image_encoder="clip-vit-h-14-vision", steps=40),
    WanModelSpec("wan2.1-flf2v-14b", "wan2.1-flf2v-14b", image=FIRST_LAST,
                 image_encoder="clip-vit-h-14-vision", shift=16.0, shift_hd=16.0, height=720,
                 width=1280),
    WanModelSpec("wan2.2-t2v-a14b", "wan2.2-t2v-a14b", boundary_ratio=0.875, steps=40,
                 guidance=4.0, guidance_2=3.0, shift=12.0, shift_hd=12.0, height=720,
                 width=1280),
    WanModelSpec("wan2.2-i2v-a14b", "wan2.2-i2v-a14b", boundary_ratio=0.9, image=FIRST_LAST,
                 steps=40, guidance=3.5, guidance_2=3.5, shift=5.0, shift_hd=5.0, height=720,
                 width=1280),
    WanModelSpec("wan2.2-ti2v-5b", "wan2.2-ti2v-5b", expand_timesteps=True, vae="wan2.2-vae",
                 image=OPTIONAL_FIRST, steps=50, guidance=5.0, shift=5.0, shift_hd=5.0,
                 height=704, width=1280, frames=121, fps=24),
)}


def model_spec(model: "str | WanConfig | WanModelSpec | os.PathLike") -> WanModelSpec:
    """A released model's spec by name (`WAN_MODELS`), or a one-expert spec for a
    `WanConfig` / diffusers config.json: text-to-video when in_channels == out_channels
    (TI2V-style per-token timesteps when that is 48, the Wan2.2 VAE's latents), else
    first-frame image-to-video, with CLIP features when image_dim is set (and the last
    frame too when pos_embed_seq_len is)."""
    if isinstance(model, WanModelSpec):
        return model
    if isinstance(model, str) and model in WAN_MODELS:
        return WAN_MODELS[model]
    config = get_config(model)  # ValueError naming the presets when it is neither
    name = str(model) if not isinstance(model, WanConfig) else "custom"
    if config.in_channels == config.out_channels:
        if config.out_channels == 48:
            return WanModelSpec(name, config, expand_timesteps=True, vae="wan2.2-vae",
                                image=OPTIONAL_FIRST)
        return WanModelSpec(name, config)
    image = FIRST_LAST if config.pos_embed_seq_len or config.image_dim is None else FIRST_FRAME
    return WanModelSpec(name, config, image=image, steps=40,
                        image_encoder="clip-vit-h-14-vision" if config.image_dim else None)
