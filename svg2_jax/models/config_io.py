"""What every model family's config does the same way: diffusers config.json in and out,
and checking a checkpoint's config against the requested preset."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

# Keys of a diffusers config.json that describe the file, not the architecture.
DIFFUSERS_META_KEYS = ("_class_name", "_diffusers_version", "_name_or_path")


def pos_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def from_diffusers(cls, config: dict):
    """A frozen config dataclass `cls` from a diffusers config dict; unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    config = {k: v for k, v in config.items() if k not in DIFFUSERS_META_KEYS}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_diffusers: unknown config keys {unknown}")
    return cls(**config)


def check_config(want, have, where: str, family: str):
    """Raises listing every field where the checkpoint's config differs from the preset."""
    if want != have:
        diff = [f"{k}: checkpoint {getattr(have, k)!r}, requested {getattr(want, k)!r}"
                for k in want.__dataclass_fields__ if getattr(want, k) != getattr(have, k)]
        raise ValueError(f"{family} config of {where} differs from the requested preset: "
                         + "; ".join(diff))


def check_diffusers_config(config, path: Path, class_name: str, family: str):
    """A diffusers transformer directory carries config.json: it must match the preset."""
    config_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config_file.is_file():
        return
    with open(config_file) as f:
        raw = json.load(f)
    if raw.get("_class_name") != class_name:
        return
    check_config(config, type(config).from_diffusers(raw), str(config_file), family)


def get_config(preset, cls, presets: dict, family: str):
    """A preset name, an instance of `cls` (returned as is), or a path to a diffusers
    config.json -> `cls`; a clear ValueError otherwise."""
    if isinstance(preset, cls):
        return preset
    if isinstance(preset, str) and preset in presets:
        return presets[preset]
    if isinstance(preset, (str, os.PathLike)) and str(preset).endswith(".json"):
        if not os.path.isfile(preset):
            raise ValueError(f"config file {os.fspath(preset)!r} does not exist")
        with open(preset) as f:
            return cls.from_diffusers(json.load(f))
    raise ValueError(f"unknown {family} preset {preset!r}; known presets: {sorted(presets)} "
                     f"(or pass a {cls.__name__} or a path to a diffusers config.json)")
