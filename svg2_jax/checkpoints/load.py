"""`load_model`: a ready model of one family from any checkpoint it reads: our orbax
directory, or a diffusers / official-layout safetensors or torch checkpoint converted on
the fly, one tensor at a time. Each family's `load` is this with its `ModelFamily`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import jax
from flax import nnx

from svg2_jax.checkpoints.family import ModelFamily, abstract_state
from svg2_jax.checkpoints.keymap import detect_layout, layout_view
from svg2_jax.checkpoints.orbax_io import STATE_DIR, read_orbax_meta, restore_orbax
from svg2_jax.checkpoints.plan import make_plan
from svg2_jax.checkpoints.sources import open_source
from svg2_jax.checkpoints.stream import to_device_tree
from svg2_jax.input_files import read_json
from svg2_jax.sharding.mesh import MeshPlan
from svg2_jax.sharding.rules import param_shardings


def load_model(family: ModelFamily, path: str | os.PathLike, preset, dtype, mesh=None, *,
               rules=None, progress: Callable[[str], None] | None = None,
               **model_kwargs) -> nnx.Module:
    """`family.model_cls(config, dtype=dtype, param_dtype=dtype, **model_kwargs)` holding the
    weights at `path`.

    Args:
      family: the model family (`svg2_jax.models.wan.load.FAMILY`, ...).
      path: one of (detected in this order)
        - an orbax checkpoint directory made by `svg2-convert` / `convert_to_orbax`
          (holds `family.config_file` and `state/`);
        - a diffusers-layout checkpoint: a `.safetensors` file, an `.index.json`, a
          directory (e.g. `<repo>/transformer`), or a torch state dict file (or a
          directory holding only one; see `sources.SOURCES`);
        - an official-layout checkpoint (same forms).
        Checkpoints other than orbax are converted on the fly, one tensor at a time.
      preset: a preset name, a config, or a diffusers config.json path (`family.get_config`).
        Must agree with the checkpoint (an orbax checkpoint's stored config, a diffusers
        directory's config.json, and every tensor shape are checked). None: the
        checkpoint's own config (`checkpoint_config`).
      dtype: weight and activation dtype (the model keeps some parameters float32).
      mesh: optional `jax.sharding.Mesh` (or a `svg2_jax.sharding.MeshPlan`, which
        brings its rules): every parameter goes straight onto its shards, split by its
        logical partition names and `rules` (`svg2_jax.sharding.rules`; default: along
        the model width over every device), never whole onto one device. Orbax
        checkpoints restore sharded; other checkpoints are read on the host one tensor
        at a time, each device receiving its slice.
      rules: logical name -> mesh axes (`svg2_jax.sharding.rules.Rules`), with mesh.
      progress: optional callable(diffusers_key) called after each tensor read.
      model_kwargs: passed to the model (attention, ...).

    Raises:
      ValueError: path does not exist or holds no recognisable checkpoint of the family,
        the preset is unknown or disagrees with the checkpoint, or keys / shapes do not
        match (all listed in one message).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{family.name} checkpoint path {str(path)!r} does not exist")
    config = family.get_config(preset) if preset is not None else checkpoint_config(family, path)
    graphdef, abstract = abstract_state(family, config, dtype, **model_kwargs)
    sharding = None
    if mesh is not None:
        if isinstance(mesh, MeshPlan):
            mesh, rules = mesh.mesh, mesh.rules if rules is None else rules
        sharding = param_shardings(abstract, mesh, rules)

    meta = read_orbax_meta(path, family.config_file, family.format)
    if meta is not None:
        check_config(family, config, family.config_cls.from_diffusers(meta["config"]),
                     f"{path}/{family.config_file}")
        pure = restore_orbax(path, abstract, sharding)
    else:
        check_diffusers_config(family, config, path)
        try:
            raw = open_source(path)
        except ValueError as e:
            raise ValueError(f"no {family.name} checkpoint at {str(path)!r}: not an svg2-convert "
                             f"orbax directory ({family.config_file} + {STATE_DIR}/), and not a "
                             f"readable safetensors or torch checkpoint ({e})") from None
        with raw:
            layout = detect_layout(family.keys, raw.keys())
            if layout is None:
                expected = (f"neither the diffusers nor the official {family.name} transformer "
                            "layout" if family.keys.official_layout is not None else
                            f"not the {family.keys.canonical_layout} {family.name} layout")
                raise ValueError(f"{str(path)!r} holds tensors whose keys are {expected} "
                                 f"(first keys: {sorted(raw.keys())[:5]})")
            source = layout_view(family.keys, raw, layout, config)
            plan = make_plan(family, source, layout, config, abstract)
            pure = to_device_tree(source, plan, sharding or jax.devices()[0], progress)
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract)


def check_config(family: ModelFamily, want, have, where: str):
    """Raises listing every field where the checkpoint's config differs from the preset."""
    if want != have:
        diff = [f"{k}: checkpoint {getattr(have, k)!r}, requested {getattr(want, k)!r}"
                for k in want.__dataclass_fields__ if getattr(want, k) != getattr(have, k)]
        raise ValueError(f"{family.name} config of {where} differs from the requested preset: "
                         + "; ".join(diff))


def _checkpoint_json(family: ModelFamily, path: Path):
    """(config.json, the config it describes) beside a checkpoint, when that file is this
    family's (`ModelFamily.config_of_json`: diffusers' `_class_name`, or transformers'
    `model_type` for the text encoders); else None."""
    config_file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config_file.is_file():
        return None
    raw = read_json(config_file, "config file")
    have = family.config_of_json(raw)
    return None if have is None else (config_file, have)


def check_diffusers_config(family: ModelFamily, config, path: Path):
    """A diffusers (or transformers) model directory carries config.json: when it is the
    family's, it must match the preset."""
    found = _checkpoint_json(family, path)
    if found is not None:
        check_config(family, config, found[1], str(found[0]))


def checkpoint_config(family: ModelFamily, path: str | os.PathLike):
    """The config a checkpoint carries: an orbax directory's stored one, or the config.json
    beside the weights (when it is this family's). Raises ValueError when it carries none
    (then a preset must be named)."""
    path = Path(path)
    meta = read_orbax_meta(path, family.config_file, family.format)
    if meta is not None:
        return family.config_cls.from_diffusers(meta["config"])
    found = _checkpoint_json(family, path)
    if found is None:
        raise ValueError(f"{str(path)!r} carries no {family.name} config (neither an svg2-convert "
                         f"orbax directory nor beside a config.json of this family): name a "
                         "preset or a config.json")
    return found[1]
