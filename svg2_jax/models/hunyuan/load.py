"""`load`: a ready HunyuanVideo model from an orbax checkpoint (written by `svg2-convert`), a
diffusers checkpoint, or an official HunyuanVideo checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from svg2_jax.layer_attention import DenseAttention
from svg2_jax.models import config_io
from svg2_jax.models.hunyuan.config import DIFFUSERS_CLASS, HunyuanVideoConfig, get_config
from svg2_jax.models.hunyuan.model import HunyuanVideoTransformer3DModel


def load(path: str | os.PathLike, preset: str | HunyuanVideoConfig, dtype=jnp.bfloat16,
         mesh=None, *, attention=DenseAttention(), progress=None
         ) -> HunyuanVideoTransformer3DModel:
    """Load HunyuanVideo weights into a `HunyuanVideoTransformer3DModel`.

    Args:
      path: one of (detected in this order)
        - an orbax checkpoint directory made by `svg2-convert` / `convert_to_orbax`
          (holds `hunyuan_config.json` and `state/`);
        - a diffusers-layout checkpoint: a `.safetensors` file, an `.index.json`, a
          directory (e.g. `<repo>/transformer`), or a torch state dict file;
        - an official HunyuanVideo-layout checkpoint: the released torch `.pt`
          (`mp_rank_00_model_states.pt`, or a directory holding only it), or safetensors
          with the official keys.
        Checkpoints other than orbax are converted on the fly, one tensor at a time.
      preset: a preset name (`PRESETS`), a `HunyuanVideoConfig`, or a diffusers config.json
        path. Must agree with the checkpoint (an orbax checkpoint's stored config, a
        diffusers directory's config.json, and every tensor shape are checked).
      dtype: weight and activation dtype (norm scales and the timestep / guidance MLPs stay
        float32).
      mesh: optional `jax.sharding.Mesh`; every parameter is placed replicated over it.
      attention: as for `HunyuanVideoTransformer3DModel`.
      progress: optional callable(diffusers_key) called after each tensor read.

    Raises:
      ValueError: path does not exist or holds no recognisable HunyuanVideo checkpoint, the
        preset is unknown or disagrees with the checkpoint, or keys / shapes do not match
        (all listed in one message).
    """
    from convert import common
    from convert import hunyuan as ch

    config = get_config(preset)
    path = Path(path)
    if not path.exists():
        raise ValueError(f"HunyuanVideo checkpoint path {str(path)!r} does not exist")
    sharding = None
    if mesh is not None:
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def build():
        return HunyuanVideoTransformer3DModel(config, attention=attention, dtype=dtype,
                                              param_dtype=dtype, rngs=nnx.Rngs(0))

    graphdef, abstract = nnx.split(nnx.eval_shape(build))

    meta = ch.read_orbax_meta(path)
    if meta is not None:
        _check_config(config, HunyuanVideoConfig.from_diffusers(meta["config"]),
                      f"{path}/{ch.CONFIG_FILE}")
        pure = common.restore_orbax(path, abstract, sharding)
    else:
        _check_diffusers_config(config, path)
        try:
            raw = ch.open_source(path)
        except ValueError as e:
            raise ValueError(f"no HunyuanVideo checkpoint at {str(path)!r}: not an svg2-convert "
                             f"orbax directory ({ch.CONFIG_FILE} + state/), and not a readable "
                             f"safetensors or torch checkpoint ({e})") from None
        with raw:
            layout = ch.detect_layout(raw.keys())
            if layout is None:
                raise ValueError(f"{str(path)!r} holds tensors whose keys are neither the "
                                 "diffusers nor the official HunyuanVideo transformer layout "
                                 f"(first keys: {sorted(raw.keys())[:5]})")
            source = ch.layout_view(raw, layout, config)
            plan = ch.make_plan(source, layout, config, abstract)
            pure = common.to_device_tree(source, plan, sharding or jax.devices()[0], progress)
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract)


def _check_config(want: HunyuanVideoConfig, have: HunyuanVideoConfig, where: str):
    config_io.check_config(want, have, where, "HunyuanVideo")


def _check_diffusers_config(config: HunyuanVideoConfig, path: Path):
    config_io.check_diffusers_config(config, path, DIFFUSERS_CLASS, "HunyuanVideo")
