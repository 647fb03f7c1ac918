"""What a Wan transformer checkpoint holds, read off its tensor shapes (or an orbax
directory's stored config) without loading it: for errors that name what is there when a
checkpoint does not fit the preset asked for (a Wan2.1 checkpoint for a Wan2.2 preset, an
I2V one for a T2V model, ...)."""

from __future__ import annotations

import math
import os
import re

from svg2_jax.checkpoints import detect_layout, open_source, read_orbax_meta
from svg2_jax.models.wan.config import PRESETS, WanConfig
from svg2_jax.models.wan.keys import KEYS, official_to_diffusers_key

# the fields the shapes determine (heads and head_dim only through their product)
_FIELDS = ("num_layers", "in_channels", "out_channels", "ffn_dim", "image_dim",
           "pos_embed_seq_len")


def _architecture_of_shapes(shapes: dict[str, tuple[int, ...]]) -> dict | None:
    pe = shapes.get("patch_embedding.weight")  # [D, C, p_t, p_h, p_w]
    proj = shapes.get("proj_out.weight")
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    ffn = shapes.get("blocks.0.ffn.net.0.proj.weight")
    if pe is None or proj is None or not blocks or ffn is None or len(pe) != 5:
        return None
    image = shapes.get("condition_embedder.image_embedder.norm1.weight")
    pos = shapes.get("condition_embedder.image_embedder.pos_embed")
    return dict(inner_dim=pe[0], num_layers=max(blocks) + 1, in_channels=pe[1],
                out_channels=proj[0] // math.prod(pe[2:]), ffn_dim=ffn[0],
                image_dim=None if image is None else image[0],
                pos_embed_seq_len=None if pos is None else pos[1])


def _architecture_of_config(config: WanConfig) -> dict:
    return dict(inner_dim=config.inner_dim, **{f: getattr(config, f) for f in _FIELDS})


def checkpoint_architecture(path: str | os.PathLike) -> dict | None:
    """inner_dim, num_layers, in/out_channels, ffn_dim, image_dim, pos_embed_seq_len of
    the Wan transformer at `path` (orbax, diffusers or official layout), None when it is
    not a readable Wan transformer checkpoint."""
    from svg2_jax.models.wan.load import FAMILY

    try:
        meta = read_orbax_meta(path, FAMILY.config_file, FAMILY.format)
        if meta is not None:
            return _architecture_of_config(WanConfig.from_diffusers(meta["config"]))
        with open_source(path) as raw:
            layout = detect_layout(KEYS, raw.keys())
            if layout is None:
                return None
            rename = (lambda k: k) if layout == KEYS.canonical_layout else \
                official_to_diffusers_key
            return _architecture_of_shapes({rename(k): raw.shape(k) for k in raw.keys()})
    except (OSError, ValueError, KeyError):
        return None


def matching_presets(arch: dict) -> list[str]:
    return [name for name, config in PRESETS.items()
            if _architecture_of_config(config) == arch]


def describe_checkpoint(path: str | os.PathLike) -> str | None:
    """One line on what the checkpoint at `path` is ("40 layers, dim 5120, in_channels 36,
    ...: the architecture of preset(s) wan2.1-i2v-14b"), None when unreadable."""
    arch = checkpoint_architecture(path)
    if arch is None:
        return None
    text = (f"{arch['num_layers']} layers, dim {arch['inner_dim']}, in_channels "
            f"{arch['in_channels']}, out_channels {arch['out_channels']}, ffn {arch['ffn_dim']}, "
            + ("no CLIP image input" if arch["image_dim"] is None
               else f"CLIP image_dim {arch['image_dim']}")
            + ("" if arch["pos_embed_seq_len"] is None
               else f", first+last-frame positions {arch['pos_embed_seq_len']}"))
    names = matching_presets(arch)
    return (f"{path} holds a Wan transformer of {text}: "
            + (f"the architecture of {' / '.join(names)}" if names else "no known preset"))
