"""`load`: a ready Wan model from an orbax checkpoint (written by `svg2-convert`), a
diffusers safetensors checkpoint, or an official Wan2.1 safetensors checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models import config_io
from svg2_jax.models.wan.config import WanConfig, get_config
from svg2_jax.models.wan.model import WanTransformer3DModel


def load(path: str | os.PathLike, preset: str | WanConfig, dtype=jnp.bfloat16, mesh=None, *,
         attention=DenseAttention(), cross_attention_implementation: str | None = None,
         progress=None) -> WanTransformer3DModel:
    """Load Wan2.1 weights into a `WanTransformer3DModel`.

    Args:
      path: one of (detected in this order)
        - an orbax checkpoint directory made by `svg2-convert` / `convert_to_orbax`
          (holds `wan_config.json` and `state/`);
        - a diffusers-layout safetensors checkpoint: a `.safetensors` file, an
          `.index.json`, or a directory (e.g. `<repo>/transformer`);
        - an official Wan2.1-layout safetensors checkpoint (same forms).
        Safetensors are converted on the fly, one tensor at a time.
      preset: a preset name (`PRESETS`), a `WanConfig`, or a diffusers config.json path.
        Must agree with the checkpoint (an orbax checkpoint's stored config, a diffusers
        directory's config.json, and every tensor shape are checked).
      dtype: weight and activation dtype (norms, modulation tables and the timestep MLP
        stay float32).
      mesh: optional `jax.sharding.Mesh`; every parameter is placed replicated over it
        (NamedSharding with an empty PartitionSpec). Real sharding rules (FSDP / tensor
        parallel) come later.
      attention, cross_attention_implementation: as for `WanTransformer3DModel`.
      progress: optional callable(source_key) called after each tensor read (safetensors).

    Raises:
      ValueError: path does not exist or holds no recognisable Wan checkpoint, the preset
        is unknown or disagrees with the checkpoint, or keys / shapes do not match (all
        listed in one message).
    """
    from convert import common
    from convert import wan as cw
    from convert.safetensors_io import SafetensorsSource

    config = get_config(preset)
    path = Path(path)
    if not path.exists():
        raise ValueError(f"Wan checkpoint path {str(path)!r} does not exist")
    sharding = None
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def build():
        return WanTransformer3DModel(config, attention=attention,
                                     cross_attention_implementation=cross_attention_implementation,
                                     dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))

    graphdef, abstract = nnx.split(nnx.eval_shape(build))

    meta = cw.read_orbax_meta(path)
    if meta is not None:
        _check_config(config, WanConfig.from_diffusers(meta["config"]), f"{path}/{cw.CONFIG_FILE}")
        pure = common.restore_orbax(path, abstract, sharding)
    else:
        _check_diffusers_config(config, path)
        try:
            source = SafetensorsSource(path)
        except ValueError as e:
            raise ValueError(f"no Wan checkpoint at {str(path)!r}: not an svg2-convert orbax "
                             f"directory ({cw.CONFIG_FILE} + {common.STATE_DIR}/), and not "
                             f"safetensors ({e})") from None
        with source:
            layout = cw.detect_layout(source.keys())
            if layout is None:
                raise ValueError(f"{str(path)!r} holds safetensors whose keys are neither the "
                                 "diffusers nor the official Wan2.1 transformer layout (first "
                                 f"keys: {sorted(source.keys())[:5]})")
            plan = cw.make_plan(source, layout, config, abstract)
            pure = common.to_device_tree(source, plan, sharding or jax.devices()[0], progress)
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract)


def _check_config(want: WanConfig, have: WanConfig, where: str):
    config_io.check_config(want, have, where, "Wan")


def _check_diffusers_config(config: WanConfig, path: Path):
    config_io.check_diffusers_config(config, path, "WanTransformer3DModel", "Wan")
