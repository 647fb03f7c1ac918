"""What `svg2-generate` runs when a flag is not given, per model family.

The values come from the library's configs: SVG2 settings from `SVG2Config`, the
denoising loop from `SamplerConfig`, HunyuanVideo's embedded guidance from
`HunyuanSampler`, the model from its family's presets. The tables below state only where
a family departs from those defaults, each with its source, so a changed config default
changes the command line and its --help.
"""

from __future__ import annotations

import dataclasses

from svg2_jax.config import SVG2Config
from svg2_jax.pipelines.hunyuan import HunyuanSampler
from svg2_jax.pipelines.wan import sampler_config
from svg2_jax.pipelines.wan_models import WanModelSpec, model_spec
from svg2_jax.sampling import SamplerConfig


@dataclasses.dataclass(frozen=True)
class VideoDefaults:
    height: int
    width: int
    frames: int
    fps: int


@dataclasses.dataclass(frozen=True)
class FamilyDefaults:
    """family: "wan" or "hunyuan". model: its default preset (`models.<family>.PRESETS`).
    sampler: steps, CFG scale and dense warm-up. guidance: the --guidance default (Wan: the
    CFG scale, sampler.guidance_scale; HunyuanVideo: the embedded guidance, its sampler has
    CFG off). schedulers: accepted --scheduler values, the first is the default.
    shift / shift_hd, svg2 / svg2_hd and sampler / sampler_hd (None: sampler): below 720p /
    at 720p and above (`is_hd`)."""

    family: str
    model: str
    sampler: SamplerConfig
    guidance: float
    schedulers: tuple[str, ...]
    shift: float
    shift_hd: float
    svg2: SVG2Config
    svg2_hd: SVG2Config
    video: VideoDefaults
    sampler_hd: SamplerConfig | None = None

    def svg2_for(self, height: int, width: int) -> SVG2Config:
        return self.svg2_hd if is_hd(height, width) else self.svg2

    def sampler_for(self, height: int, width: int) -> SamplerConfig:
        return self.sampler_hd if is_hd(height, width) and self.sampler_hd else self.sampler

    def shift_for(self, height: int, width: int) -> float:
        return self.shift_hd if is_hd(height, width) else self.shift


def is_hd(height: int, width: int) -> bool:
    """720p and above (either orientation): where the reference raises QC and Wan's shift."""
    return max(height, width) >= 1280 or min(height, width) >= 720


def _field_default(cls, name):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


# SamplerConfig's defaults are the reference's Wan T2V loop (50 steps, CFG 5.0, the first
# 20% of steps dense); SVG2Config's are its Wan 720p settings, and below 720p it uses 200
# query clusters. Flow shift: diffusers' Wan examples (3.0 below 720p, 5.0 at 720p).
# Video: diffusers' WanPipeline defaults; Wan2.1 videos are 16 fps.
WAN = FamilyDefaults(
    family="wan", model="wan2.1-t2v-1.3b", sampler=SamplerConfig(),
    guidance=SamplerConfig().guidance_scale, schedulers=("unipc", "euler"),
    shift=3.0, shift_hd=5.0,
    svg2=dataclasses.replace(SVG2Config(), num_q_clusters=200), svg2_hd=SVG2Config(),
    video=VideoDefaults(height=480, width=832, frames=81, fps=16))

# HunyuanVideo is guidance-distilled (no CFG pass; the embedded guidance goes in as an
# input) and the reference runs 10% of its steps dense with 400 query clusters at 720p.
# FlowMatchEuler with shift 7 is HunyuanVideoPipeline's scheduler.
HUNYUAN = FamilyDefaults(
    family="hunyuan", model="hunyuan-video-t2v-720p",
    sampler=dataclasses.replace(SamplerConfig(), guidance_scale=1.0, dense_fraction=0.1),
    guidance=_field_default(HunyuanSampler, "embedded_guidance"), schedulers=("euler",),
    shift=7.0, shift_hd=7.0,
    svg2=dataclasses.replace(SVG2Config(), num_q_clusters=200),
    svg2_hd=dataclasses.replace(SVG2Config(), num_q_clusters=400),
    video=WAN.video)

FAMILIES = {d.family: d for d in (WAN, HUNYUAN)}

# The reference's Wan I2V scripts (scripts/wan/wan_i2v_{480p,720p}_sap.sh): 40 steps, the
# first 35% dense at 720p (QC 300), 20% below (QC 200); KC 1000, top-p 0.9 as for T2V.
I2V_DENSE_FRACTION, I2V_DENSE_FRACTION_HD = 0.2, 0.35


def wan_model(model: "str | WanModelSpec", image: bool) -> FamilyDefaults:
    """The Wan family's defaults for one model (`svg2_jax.pipelines.wan_models`: its steps,
    guidance per expert, expert boundary, flow shift and video size), generating from an
    image or not (image-to-video takes the reference's I2V warm-up)."""
    spec = model_spec(model)
    sampler = sampler_config(spec, dense_fraction=(I2V_DENSE_FRACTION if image else
                                                   WAN.sampler.dense_fraction))
    sampler_hd = dataclasses.replace(sampler, dense_fraction=I2V_DENSE_FRACTION_HD) \
        if image else None
    return dataclasses.replace(
        WAN, model=spec.name, sampler=sampler, sampler_hd=sampler_hd, guidance=spec.guidance,
        shift=spec.shift, shift_hd=spec.shift_hd,
        video=VideoDefaults(height=spec.height, width=spec.width, frames=spec.frames,
                            fps=spec.fps))

# Without --checkpoint the tiny random models (the pipelines' TINY_CONFIG, 480 video
# tokens at this size) run a short loop with clusters that fit those tokens.
TINY_VIDEO = VideoDefaults(height=128, width=192, frames=17, fps=16)
TINY_STEPS = 10
TINY_CLUSTERS = (16, 48)  # (QC, KC)


def tiny(defaults: FamilyDefaults) -> FamilyDefaults:
    """`defaults` for the tiny random model of the family."""
    qc, kc = TINY_CLUSTERS
    svg2 = dataclasses.replace(defaults.svg2, num_q_clusters=qc, num_k_clusters=kc)
    return dataclasses.replace(
        defaults, sampler=dataclasses.replace(defaults.sampler, num_steps=TINY_STEPS),
        svg2=svg2, svg2_hd=svg2, video=TINY_VIDEO)


def describe(get, tiny_get=None) -> str:
    """A --help phrase of the default `get(family defaults)`: one value when the families
    agree, else one per family, then the tiny model's (`tiny_get`, default `get`) when it
    differs; e.g. "50; tiny model 10" or "wan 5.0, hunyuan 6.0"."""
    values = {name: str(get(d)) for name, d in FAMILIES.items()}
    text = (next(iter(values.values())) if len(set(values.values())) == 1
            else ", ".join(f"{name} {v}" for name, v in values.items()))
    tiny_values = sorted({str((tiny_get or get)(tiny(d))) for d in FAMILIES.values()})
    if set(tiny_values) != set(values.values()):
        text += "; tiny model " + "/".join(tiny_values)
    return text
