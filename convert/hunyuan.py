"""HunyuanVideo transformer weights -> the NNX state of `svg2_jax.models.hunyuan`.

Two source layouts:
  "diffusers": `HunyuanVideoTransformer3DModel.save_pretrained` keys
    (`transformer_blocks.0.attn.to_q.weight`), safetensors (single file, sharded + index
    JSON, or a directory) or a torch state dict file.
  "hunyuan": the official HunyuanVideo release keys (`double_blocks.0.img_attn_qkv.weight`,
    `single_blocks.0.linear1.weight`, `txt_in.*`, `time_in.*`, `vector_in.*`,
    `guidance_in.*`, `img_in.*`, `final_layer.*`, optionally prefixed
    `model.diffusion_model.`), normally a torch `.pt` state dict (`mp_rank_00_model_states.pt`,
    which holds it under "module"), or safetensors with the same keys. They are renamed to
    diffusers keys with the mapping of diffusers' `convert_hunyuan_video_transformer_to_diffusers`
    (`diffusers/loaders/single_file_utils.py`, identical to
    `scripts/convert_hunyuan_video_to_diffusers.py`, diffusers 0.42.1): its rename table
    applied in the same order, then its special cases: the fused `*_qkv` tensors chunked in 3
    along dim 0; the single blocks' `linear1` split into q, k, v (inner_dim rows each) and the
    MLP input (the rest: diffusers hardcodes inner_dim = 3072, the 720p model's, we take it
    from the config); the final `adaLN_modulation.1` halves swapped from (shift, scale) to
    diffusers' (scale, shift). The split happens as each piece is read (`OfficialLayoutSource`),
    so nothing fused is held twice.

Diffusers keys then map onto our parameter paths: module names are diffusers' (see
`svg2_jax/models/hunyuan/model.py`) except `to_out.0` -> `to_out`, FeedForward's
`net.0.proj` -> `proj_in` and `net.2` -> `proj_out`; torch Linear `weight` [out, in] ->
`kernel` [in, out]; norm `weight` -> `scale`; the Conv3d patch embedding weight
[D, C, p_t, p_h, p_w] -> kernel [C*p_t*p_h*p_w, D]; `transformer_blocks.{i}.*`,
`single_transformer_blocks.{i}.*` and `context_embedder.token_refiner.refiner_blocks.{i}.*`
go to index i of their stacked parameters.

Strictness, streaming and atomic writes are the Wan converter's (`convert.common`, whose
`Target`, `Plan`, streaming reader, orbax writer and restore this module uses): every missing key, unexpected key and shape mismatch is listed in one ValueError
before any tensor is read; tensors are read one at a time into one preallocated buffer per
(stacked) parameter; the output directory appears only when complete. Nothing is skipped
silently: the only keys not converted are the other top-level entries of a wrapped torch
checkpoint (e.g. next to "module"), reported in `Plan.ignored` and the output's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convert.safetensors_io import SafetensorsSource
from convert import common
from convert.common import ConversionReport, Plan, Target

LAYOUTS = ("diffusers", "hunyuan")
CONFIG_FILE = "hunyuan_config.json"
FORMAT = "svg2-jax-hunyuan-video"
OFFICIAL_PREFIX = "model.diffusion_model."
# top-level modules of the official HunyuanVideo transformer (HYVideoDiffusionTransformer)
OFFICIAL_ROOTS = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.",
                  "double_blocks.", "single_blocks.", "final_layer.")

# diffusers' TRANSFORMER_KEYS_RENAME_DICT for HunyuanVideo, same order (str.replace applied
# in sequence: "img_mod.linear" must come before "modulation.linear")
OFFICIAL_RENAMES = (
    ("img_in", "x_embedder"),
    ("time_in.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("guidance_in.mlp.0", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.mlp.2", "time_text_embed.guidance_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("double_blocks", "transformer_blocks"),
    ("img_attn_q_norm", "attn.norm_q"),
    ("img_attn_k_norm", "attn.norm_k"),
    ("img_attn_proj", "attn.to_out.0"),
    ("txt_attn_q_norm", "attn.norm_added_q"),
    ("txt_attn_k_norm", "attn.norm_added_k"),
    ("txt_attn_proj", "attn.to_add_out"),
    ("img_mod.linear", "norm1.linear"),
    ("img_norm1", "norm1.norm"),
    ("img_norm2", "norm2"),
    ("img_mlp", "ff"),
    ("txt_mod.linear", "norm1_context.linear"),
    ("txt_norm1", "norm1.norm"),
    ("txt_norm2", "norm2_context"),
    ("txt_mlp", "ff_context"),
    ("self_attn_proj", "attn.to_out.0"),
    ("modulation.linear", "norm.linear"),
    ("pre_norm", "norm.norm"),
    ("final_layer.norm_final", "norm_out.norm"),
    ("final_layer.linear", "proj_out"),
    ("fc1", "net.0.proj"),
    ("fc2", "net.2"),
    ("input_embedder", "proj_in"),
)
# diffusers' remap_txt_in_ rename_key, same order
_TXT_IN_RENAMES = (
    ("individual_token_refiner.blocks", "token_refiner.refiner_blocks"),
    ("adaLN_modulation.1", "norm_out.linear"),
    ("txt_in", "context_embedder"),
    ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    ("c_embedder", "time_text_embed.text_embedder"),
    ("mlp", "ff"),
)

# our stacked block containers (path prefix) -> the config field with their count
STACKED = ((("transformer_blocks",), "num_layers"),
           (("single_transformer_blocks",), "num_single_layers"),
           (("context_embedder", "token_refiner", "refiner_blocks"), "num_refiner_layers"))
_FEED_FORWARDS = ("ff", "ff_context")

Rows = tuple[tuple[int, int], ...]  # dim-0 row ranges of a source tensor, concatenated


def _replace_all(key: str, table) -> str:
    for old, new in table:
        key = key.replace(old, new)
    return key


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """torch.chunk(parts) row ranges of n rows (each ceil(n / parts), the last one short)."""
    size = -(-n // parts)
    return [(min(i * size, n), min((i + 1) * size, n)) for i in range(parts)]


def official_to_diffusers(key: str, rows: int, inner_dim: int) -> list[tuple[str, Rows | None]]:
    """An official HunyuanVideo key -> the diffusers keys made from it, each with the dim-0
    row ranges of the official tensor it takes (None: the whole tensor). rows: the official
    tensor's dim 0; inner_dim: the model width (the single blocks' q, k, v rows)."""
    if key.startswith(OFFICIAL_PREFIX):
        key = key[len(OFFICIAL_PREFIX):]
    key = _replace_all(key, OFFICIAL_RENAMES)
    # diffusers' TRANSFORMER_SPECIAL_KEYS_REMAP, in its order
    if "txt_in" in key:
        if "self_attn_qkv" in key:
            return [(_replace_all(key.replace("self_attn_qkv", f"attn.to_{c}"), _TXT_IN_RENAMES),
                     (r,)) for c, r in zip("qkv", _chunks(rows, 3))]
        return [(_replace_all(key, _TXT_IN_RENAMES), None)]
    if "img_attn_qkv" in key:
        return [(key.replace("img_attn_qkv", f"attn.to_{c}"), (r,))
                for c, r in zip("qkv", _chunks(rows, 3))]
    if "txt_attn_qkv" in key:
        return [(key.replace("txt_attn_qkv", f"attn.add_{c}_proj"), (r,))
                for c, r in zip("qkv", _chunks(rows, 3))]
    if "single_blocks" in key:
        for leaf in ("weight", "bias"):
            if f"linear1.{leaf}" in key:
                base = key.replace("single_blocks", "single_transformer_blocks").removesuffix(
                    f".linear1.{leaf}")
                h = inner_dim
                ranges = [(0, h), (h, 2 * h), (2 * h, 3 * h), (3 * h, max(rows, 3 * h))]
                ranges = [(min(a, rows), min(b, rows)) for a, b in ranges]
                names = [f"{base}.attn.to_q.{leaf}", f"{base}.attn.to_k.{leaf}",
                         f"{base}.attn.to_v.{leaf}", f"{base}.proj_mlp.{leaf}"]
                return [(n, (r,)) for n, r in zip(names, ranges)]
        key = key.replace("single_blocks", "single_transformer_blocks")
        key = key.replace("linear2", "proj_out").replace("q_norm", "attn.norm_q")
        return [(key.replace("k_norm", "attn.norm_k"), None)]
    if "final_layer.adaLN_modulation.1" in key:
        shift, scale = _chunks(rows, 2)
        return [(key.replace("final_layer.adaLN_modulation.1", "norm_out.linear"),
                 (scale, shift))]
    return [(key, None)]


def detect_layout(keys) -> str | None:
    """"diffusers", "hunyuan", or None when the keys look like neither."""
    keys = list(keys)
    if any(k.startswith(("context_embedder.", "x_embedder.", "transformer_blocks.",
                         "single_transformer_blocks.")) for k in keys):
        return "diffusers"
    stripped = [k.removeprefix(OFFICIAL_PREFIX) for k in keys]
    if any(k.startswith(("txt_in.", "img_in.", "double_blocks.", "single_blocks."))
           for k in stripped):
        return "hunyuan"
    return None


# ---------------------------------------------------------------------------------------
# sources: key -> shape / numpy tensor, one at a time


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("model", "module", "state_dict")  # diffusers' script unwraps these


class TorchCheckpointSource:
    """Key -> shape / tensor of a `torch.save`d state dict (zip format), memory-mapped,
    with the interface of `SafetensorsSource` (use as a context manager).

    A dict holding the state dict under "model", "module" or "state_dict" is unwrapped, as
    diffusers' conversion script does (the official `mp_rank_00_model_states.pt` holds it
    under "module"); other top-level entries are listed in `ignored`. Tensors are copied
    out of the mapping one by one; every `reopen_bytes` read the mapping is dropped and
    re-made, so the pages already read do not accumulate in this process's resident set
    (the Wan converter's reason for reopening safetensors per read).
    """

    def __init__(self, path: str | os.PathLike, reopen_bytes: int = 1 << 30):
        self.path = Path(path)
        self.reopen_bytes = reopen_bytes
        self.ignored: list[str] = []
        state = self._load()
        self._shape = {k: tuple(v.shape) for k, v in state.items()}
        unsupported = sorted(f"{k} ({v.dtype})" for k, v in state.items()
                             if _numpy_dtype(v.dtype) is None)
        if unsupported:
            raise ValueError(f"{str(self.path)!r} holds tensors of unsupported dtypes (float32, "
                             f"float16 and bfloat16 are supported): {unsupported}")
        self._state, self._since_open = state, 0

    def _load(self) -> dict:
        import torch

        try:
            obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch raises RuntimeError / UnpicklingError)
            raise ValueError(f"cannot read {str(self.path)!r} as a torch state dict (it must be "
                             f"a torch.save zip file of tensors): {type(e).__name__}: {e}"
                             ) from None
        where = ""
        for wrapper in _WRAPPER_KEYS:
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                self.ignored += [f"{where}{k}" for k in obj if k != wrapper]
                where += f"{wrapper}/"
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise ValueError(f"{str(self.path)!r} holds a {type(obj).__name__}, not a state dict")
        bad = sorted(f"{where}{k}" for k, v in obj.items()
                     if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        if bad:
            raise ValueError(f"{str(self.path)!r} is not a flat state dict of tensors: non-tensor "
                             f"entries {bad}")
        return obj

    def keys(self) -> list[str]:
        return list(self._shape)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape[key]

    def read(self, key: str) -> np.ndarray:
        return self.read_rows(key, None)

    def read_rows(self, key: str, rows: Rows | None) -> np.ndarray:
        """The tensor (or the concatenation of its dim-0 row ranges) as a numpy copy in its
        stored dtype (bf16 as ml_dtypes.bfloat16); only those rows are touched."""
        import torch

        if self._state is None:
            self._state = self._load()
        tensor = self._state[key]
        if rows is not None:
            parts = [tensor[a:b] for a, b in rows]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts)
        out = _to_numpy(tensor)
        del tensor
        self._since_open += out.nbytes
        if self._since_open >= self.reopen_bytes:
            self._state, self._since_open = None, 0
        return out

    def close(self):
        self._state, self._shape = None, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _numpy_dtype(torch_dtype):
    import ml_dtypes
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16,
            torch.bfloat16: ml_dtypes.bfloat16}.get(torch_dtype)


def _to_numpy(tensor) -> np.ndarray:
    """A C-contiguous numpy copy (never a view of the memory-mapped file)."""
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return tensor.view(torch.int16).numpy().view(_numpy_dtype(tensor.dtype)).copy(order="C")
    return tensor.numpy().copy(order="C")


def open_source(path: str | os.PathLike):
    """A `TorchCheckpointSource` for a torch file (.pt, .pth, .bin, .ckpt) or a directory
    whose only checkpoint is one; else a `SafetensorsSource` (file, index, directory)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint path {str(path)!r} does not exist")
    if path.is_file() and path.suffix in TORCH_SUFFIXES:
        return TorchCheckpointSource(path)
    if path.is_dir() and not any(path.glob("*.safetensors")) \
            and not any(path.glob("*.safetensors.index.json")):
        torch_files = sorted(p for s in TORCH_SUFFIXES for p in path.glob(f"*{s}"))
        if len(torch_files) == 1:
            return TorchCheckpointSource(torch_files[0])
        if len(torch_files) > 1:
            raise ValueError(f"{str(path)!r} holds several torch checkpoints "
                             f"{[p.name for p in torch_files]}: pass the one to use")
    return SafetensorsSource(path)


class OfficialLayoutSource:
    """An official-layout source seen under diffusers' keys (same interface): fused tensors
    appear as their pieces and are split as each piece is read.

    foreign: source keys outside the official top-level modules (never renamed: a diffusers
    key would otherwise pass through the renames unchanged); duplicates: keys that map to a
    diffusers key another key already gave. Both are reported by `make_plan`.
    """

    def __init__(self, inner, inner_dim: int):
        self.inner, self.path = inner, inner.path
        self.ignored = list(getattr(inner, "ignored", []))
        self._parts: dict[str, tuple[str, Rows | None]] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self.foreign, self.duplicates = [], []
        for key in inner.keys():
            if not key.removeprefix(OFFICIAL_PREFIX).startswith(OFFICIAL_ROOTS):
                self.foreign.append(key)
                continue
            shape = inner.shape(key)
            for name, rows in official_to_diffusers(key, shape[0] if shape else 0, inner_dim):
                if name in self._parts:
                    self.duplicates.append(f"{key} (maps to {name}, already given by "
                                           f"{self._parts[name][0]})")
                    continue
                self._parts[name] = (key, rows)
                self._shape[name] = shape if rows is None else (
                    sum(b - a for a, b in rows), *shape[1:])

    def keys(self) -> list[str]:
        return list(self._parts)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape[key]

    def origin(self, key: str) -> str:
        """The official key a diffusers key is read from."""
        return self._parts[key][0]

    def read(self, key: str) -> np.ndarray:
        source_key, rows = self._parts[key]
        if rows is None:
            return self.inner.read(source_key)
        if hasattr(self.inner, "read_rows"):
            return self.inner.read_rows(source_key, rows)
        # safetensors: the whole fused tensor is read for each of its pieces
        tensor = self.inner.read(source_key)
        return np.concatenate([tensor[a:b] for a, b in rows])

    def close(self):
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def layout_view(source, layout: str, config):
    """The source as diffusers-named tensors: itself for "diffusers", an
    `OfficialLayoutSource` over it for "hunyuan"."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout {layout!r}; expected one of {LAYOUTS}")
    return source if layout == "diffusers" else OfficialLayoutSource(source, config.inner_dim)


# ---------------------------------------------------------------------------------------
# the plan: diffusers keys -> our parameters


def _stacked(path: tuple[str, ...], config):
    """(prefix length, layer count) when `path` lies in a stacked block container."""
    for prefix, field in STACKED:
        if path[:len(prefix)] == prefix:
            return len(prefix), getattr(config, field)
    return 0, None


def _diffusers_name(path: tuple[str, ...]) -> tuple[str, str]:
    """Our parameter path (block index omitted) -> (diffusers dotted name, transform)."""
    *modules, leaf = path
    parts = []
    for i, p in enumerate(modules):
        if p == "to_out":
            parts.append("to_out.0")
        elif p in ("proj_in", "proj_out") and i and modules[i - 1] in _FEED_FORWARDS:
            parts.append("net.0.proj" if p == "proj_in" else "net.2")
        else:
            parts.append(p)
    name = ".".join(parts)
    if leaf == "kernel":
        return f"{name}.weight", ("conv" if modules == ["x_embedder", "proj"] else "transpose")
    if leaf == "scale":
        return f"{name}.weight", "copy"
    return f"{name}.{leaf}", "copy"


def expected_keys(config, abstract_state) -> dict[str, Target]:
    """Every diffusers key our state needs -> its Target (shapes in torch layout)."""
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        path = tuple(str(p) for p in path)
        shape = tuple(var.shape)
        n, layers = _stacked(path, config)
        if n:
            shape = shape[1:]
        name, transform = _diffusers_name(path)
        if transform == "transpose":
            src_shape = shape[::-1]
        elif transform == "conv":
            src_shape = (shape[1], config.in_channels, *config.patch)
        else:
            src_shape = shape
        if n:
            prefix, rest = name.split(".")[:n], name.split(".")[n:]
            for i in range(layers):
                out[".".join([*prefix, str(i), *rest])] = Target(path, i, transform, src_shape)
        else:
            out[name] = Target(path, None, transform, src_shape)
    return out


def make_plan(source, layout: str, config, abstract_state) -> Plan:
    """Check a diffusers-named source (`layout_view`) against our state; raise ONE
    ValueError listing every problem."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout {layout!r}; expected one of {LAYOUTS}")
    expected = expected_keys(config, abstract_state)
    origin = getattr(source, "origin", None)
    named = (lambda k: f"{k} (from {origin(k)})") if origin else (lambda k: k)
    reads, mismatched = {}, []
    unexpected = list(getattr(source, "foreign", [])) + list(getattr(source, "duplicates", []))
    for key in source.keys():
        if key not in expected:
            unexpected.append(named(key))
            continue
        target, shape = expected[key], source.shape(key)
        if shape != target.source_shape:
            mismatched.append(f"{named(key)}: checkpoint {shape}, model expects "
                              f"{target.source_shape}")
        reads[key] = target
    missing = sorted(set(expected) - set(reads))
    if missing or unexpected or mismatched:
        lines = [f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
                 f"shape mismatches converting {str(source.path)!r} ({layout} layout) to "
                 f"HunyuanVideo {_describe(config)}"]
        detected = detect_layout(getattr(source, "inner", source).keys())
        if detected not in (None, layout):
            lines.append(f"hint: the keys look like the {detected!r} layout, not {layout!r}")
        for title, items in (("missing keys" + (" (diffusers names)" if origin else ""),
                              missing), ("unexpected keys", sorted(unexpected)),
                             ("shape mismatches", mismatched)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  {item}" for item in items)
        raise ValueError("\n".join(lines))
    leaves = {tuple(str(p) for p in path): (tuple(var.shape), np.dtype(var.dtype))
              for path, var in nnx.to_flat_state(abstract_state)}
    return Plan(layout, reads, leaves, sorted(getattr(source, "ignored", [])))


def _describe(config) -> str:
    return (f"(dual={config.num_layers}, single={config.num_single_layers}, refiner="
            f"{config.num_refiner_layers}, heads={config.num_attention_heads}x"
            f"{config.attention_head_dim}, in_channels={config.in_channels}, "
            f"guidance_embeds={config.guidance_embeds})")


def abstract_hunyuan_state(config, dtype):
    """(graphdef, abstract state) of a model with `dtype` activations and weights."""
    from svg2_jax.models.hunyuan.model import HunyuanVideoTransformer3DModel

    model = nnx.eval_shape(lambda: HunyuanVideoTransformer3DModel(
        config, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0)))
    return nnx.split(model)


def count_reads(src: str | os.PathLike, layout: str, preset) -> int:
    """How many tensor reads (progress callbacks) converting `src` takes."""
    from svg2_jax.models.hunyuan.config import get_config

    with open_source(src) as source:
        return len(layout_view(source, layout, get_config(preset)).keys())


# ---------------------------------------------------------------------------------------
# orbax output


def convert_to_orbax(src: str | os.PathLike, layout: str, preset, out: str | os.PathLike, *,
                     dtype=jnp.bfloat16, overwrite: bool = False,
                     progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert a checkpoint (`layout` "diffusers" or "hunyuan") to an orbax checkpoint
    directory `out` loadable by `svg2_jax.models.hunyuan.load`.

    `out` gets `hunyuan_config.json` (the architecture, weight dtype, source, ignored keys)
    and `state/` (the orbax pytree of the NNX parameters), written to a temporary directory
    next to `out` and renamed into place only when complete.
    dtype: weight dtype (norm scales and the timestep / guidance MLPs stay float32).
    progress: called with each diffusers key read (`count_reads` of them).
    """
    from svg2_jax.models.hunyuan.config import get_config

    config = get_config(preset)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown source layout {layout!r}; expected one of {LAYOUTS}")
    run = common.ConversionRun.start(Path(out), overwrite)
    _, abstract = abstract_hunyuan_state(config, dtype)
    with open_source(src) as raw:
        source = layout_view(raw, layout, config)
        return run.write(source, make_plan(source, layout, config, abstract), config=config,
                         dtype=dtype, src=src, layout=layout, fmt=FORMAT,
                         config_file=CONFIG_FILE, progress=progress)


def read_orbax_meta(path: str | os.PathLike) -> dict | None:
    """The `hunyuan_config.json` of one of our orbax checkpoints, or None if `path` is not one."""
    return common.read_orbax_meta(path, CONFIG_FILE, FORMAT)


__all__ = ["CONFIG_FILE", "LAYOUTS", "OfficialLayoutSource", "TorchCheckpointSource",
           "abstract_hunyuan_state", "convert_to_orbax", "count_reads", "detect_layout",
           "expected_keys", "layout_view", "make_plan", "official_to_diffusers", "open_source",
           "read_orbax_meta"]
