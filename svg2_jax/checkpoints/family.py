"""`ModelFamily`: what the family-independent checkpoint code needs to know about one model
family (its config and model classes, key tables, file names); one per family, next to
its model (`svg2_jax.models.wan.load.FAMILY`, `svg2_jax.models.hunyuan.load.FAMILY`)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

from flax import nnx

from svg2_jax.checkpoints.keymap import KeyMap


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """name: the family in messages ("Wan"); config_cls, get_config(preset) -> config;
    model_cls(config, *, dtype, param_dtype, rngs, **model_kwargs); diffusers_class: the
    `_class_name` of its diffusers config.json; keys: its `KeyMap`; config_file, format: the
    metadata file of its orbax checkpoints and the format name stored in it; describe: the
    config fields named when a checkpoint does not fit."""

    name: str
    config_cls: type
    get_config: Callable
    model_cls: type
    diffusers_class: str
    keys: KeyMap
    config_file: str
    format: str
    describe: tuple[str, ...]

    @property
    def layouts(self) -> tuple[str, ...]:
        return self.keys.layouts

    def accepts(self, preset) -> bool:
        """Whether `preset` (what `get_config` takes) describes this family: a config of
        its class, one of its preset names, or a diffusers config.json of its
        `diffusers_class` (one without `_class_name` when its keys make a config)."""
        if isinstance(preset, self.config_cls):
            return True
        if not isinstance(preset, (str, os.PathLike)):
            return False
        if not str(preset).endswith(".json"):
            try:
                self.get_config(preset)
            except ValueError:
                return False
            return True
        try:
            with open(preset) as f:
                raw = json.load(f)
            if "_class_name" in raw:
                return raw["_class_name"] == self.diffusers_class
            self.config_cls.from_diffusers(raw)
        except (OSError, ValueError, TypeError, AttributeError):
            return False
        return True

    def describe_config(self, config) -> str:
        return "(" + ", ".join(f"{f}={getattr(config, f)!r}" for f in self.describe) + ")"


def abstract_state(family: ModelFamily, config, dtype, **model_kwargs):
    """(graphdef, abstract state) of a model with `dtype` activations and weights."""
    model = nnx.eval_shape(lambda: family.model_cls(
        config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), **model_kwargs))
    return nnx.split(model)
