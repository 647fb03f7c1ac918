"""What every model family's config does the same way: the `ModelConfig` base (derived
sizes, diffusers config.json in and out, positive-int checks) and `get_config` (a preset
name, a config, or a config.json path -> the config)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Self

from svg2_jax.input_files import read_json

# Keys of a diffusers config.json that describe the file, not the architecture.
DIFFUSERS_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path")


def pos_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


class ModelConfig:
    """Base of the frozen config dataclasses whose fields are diffusers' config keys.

    A subclass has `num_attention_heads`, `attention_head_dim`, and a `patch` property
    (p_t, p_h, p_w).
    """

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch)

    @classmethod
    def from_diffusers(cls, config: dict) -> Self:
        """From a diffusers config dict (`config.json`); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        config = {k: v for k, v in config.items() if k not in DIFFUSERS_META_KEYS}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_diffusers: unknown config keys {unknown}")
        return cls(**config)

    def to_diffusers(self) -> dict:
        """Keyword arguments for the diffusers model class (its config.json)."""
        return dataclasses.asdict(self)

    def positive_int_problems(self, names) -> list[str]:
        """One message per field of `names` that is not a positive int."""
        return [f"{name} must be a positive int, got {getattr(self, name)!r}"
                for name in names if not pos_int(getattr(self, name))]


def get_config(preset, cls, presets: dict, family: str, json_kind: str = "diffusers"):
    """A preset name, an instance of `cls` (returned as is), or a path to a `json_kind`
    ("diffusers", or "transformers" for the text encoders) config.json, read by
    `cls.from_<json_kind>` -> `cls`; a clear ValueError otherwise."""
    if isinstance(preset, cls):
        return preset
    if isinstance(preset, str) and preset in presets:
        return presets[preset]
    if isinstance(preset, (str, os.PathLike)) and str(preset).endswith(".json"):
        if not os.path.isfile(preset):
            raise ValueError(f"config file {os.fspath(preset)!r} does not exist")
        raw = read_json(preset, "config file")
        try:
            return getattr(cls, f"from_{json_kind}")(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config file {os.fspath(preset)!r}: {e}") from None
    raise ValueError(f"unknown {family} preset {preset!r}; known presets: {sorted(presets)} "
                     f"(or pass a {cls.__name__} or a path to a {json_kind} config.json)")
