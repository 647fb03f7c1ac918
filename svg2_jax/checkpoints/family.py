"""`ModelFamily`: what the family-independent checkpoint code needs to know about one model
family (its config and model classes, key tables, file names); one per family, next to
its model (`svg2_jax.models.wan.load.FAMILY`, `svg2_jax.models.hunyuan.load.FAMILY`, and
the text encoders' `svg2_jax.models.{umt5,llama,clip_text}.load.FAMILY`)."""

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
    config fields named when a checkpoint does not fit; config_from_json(raw) -> the config a
    checkpoint directory's config.json describes, or None when that file is not this
    family's (default: diffusers' `_class_name` is `diffusers_class`, read by
    `config_cls.from_diffusers`; the text encoders read transformers' config.json)."""

    name: str
    config_cls: type
    get_config: Callable
    model_cls: type
    diffusers_class: str
    keys: KeyMap
    config_file: str
    format: str
    describe: tuple[str, ...]
    config_from_json: Callable[[dict], object | None] | None = None

    @property
    def layouts(self) -> tuple[str, ...]:
        return self.keys.layouts

    def config_of_json(self, raw: dict):
        """The config of a checkpoint directory's config.json, None if not this family's."""
        if self.config_from_json is not None:
            return self.config_from_json(raw)
        if raw.get("_class_name") != self.diffusers_class:
            return None
        return self.config_cls.from_diffusers(raw)

    def accepts(self, preset) -> bool:
        """Whether `preset` (what `get_config` takes) describes this family: a config of
        its class, one of its preset names, or a config.json of this family
        (`config_of_json`; a diffusers one without `_class_name` when its keys make a
        config)."""
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
            if "_class_name" not in raw and self.config_from_json is None:
                self.config_cls.from_diffusers(raw)
                return True
            return self.config_of_json(raw) is not None
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    def describe_config(self, config) -> str:
        return "(" + ", ".join(f"{f}={getattr(config, f)!r}" for f in self.describe) + ")"


def abstract_state(family: ModelFamily, config, dtype, **model_kwargs):
    """(graphdef, abstract state) of a model with `dtype` activations and weights."""
    model = nnx.eval_shape(lambda: family.model_cls(
        config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0), **model_kwargs))
    return nnx.split(model)
