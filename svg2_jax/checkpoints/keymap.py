"""Key maps, family-independent: our parameter paths -> diffusers keys (`expected_keys`,
driven by a family's `KeyMap`), and official-release keys -> diffusers keys
(`RenamedSource`, driven by the family's rename function). The tables themselves live
beside each model (`svg2_jax/models/<family>/keys.py`).

Our module names are diffusers' except `to_out.0` -> `to_out`, a feed-forward's
`net.0.proj` / `net.2` -> `proj_in` / `proj_out`, and a family's own `module_renames`;
torch Linear `weight` [out, in] -> `kernel` [in, out]; norm `weight` -> `scale`; the Conv3d
patch embedding weight [D, C, p_t, p_h, p_w] -> kernel [C*p_t*p_h*p_w, D] (a Linear on
patches); any other convolution's weight [O, I, *window] -> a channels-last kernel
[*window, I, O] (`nnx.Conv`'s layout); `<container>.{i}.*` of a stacked container -> index
i of its stacked parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from flax import nnx

from svg2_jax.checkpoints.tensor_source import KeyedSource, Rows, TensorSource, locate

DIFFUSERS = "diffusers"
# official checkpoints saved from a wrapping module carry this prefix on every key
OFFICIAL_PREFIX = "model.diffusion_model."
# a feed-forward's projections under diffusers' names (`FeedForward.net`)
_FEED_FORWARD_NAMES = {"proj_in": "net.0.proj", "proj_out": "net.2"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyMap:
    """How one model family's parameters are named in its checkpoints.

    diffusers_markers: key prefixes only diffusers' layout has (layout detection).
    stacked: our stacked block containers (path prefix) -> the config field with their count.
    feed_forwards: module names whose `proj_in` / `proj_out` are diffusers' `net.0.proj` /
      `net.2`.
    patch_embedding: module path of the Conv3d patch embedding (a Linear here).
    module_renames: (our module name, diffusers' dotted name) for modules named otherwise
      (e.g. the conv of diffusers' `nn.Sequential(upsample, conv)` -> `resample.1`).
    ignored: substrings of diffusers keys that diffusers (or transformers, for the text
      encoders) itself skips on load.
    official_layout: the official release's layout name (`--from`), None when the family
      is read in its canonical layout only (the rest of the official_* fields then unused).
    official_roots: its top-level module prefixes (other keys are not renamed: a diffusers
      key would pass through the renames unchanged).
    official_markers: key prefixes only the official layout has (layout detection).
    official_to_diffusers(key, shape, config) -> [(diffusers key, dim-0 rows or None)]:
      the diffusers tensors one official tensor holds (several when it is fused).
    canonical_layout: the name of the layout whose keys `expected_keys` produces ("diffusers";
      "transformers" for the text encoders, whose module names are transformers').
    aliases: (alias key, canonical key) pairs of tied tensors: the alias is read in place of
      an absent canonical key, and skipped (reported as ignored) when both are present.
    key_prefixes: prefixes other saves of the canonical layout put before every key (CLIP's
      `text_model.`, which transformers 5 removes on load): removed on read.
    A family with one layout leaves the official_* fields at their defaults.
    """

    diffusers_markers: tuple[str, ...]
    stacked: tuple[tuple[tuple[str, ...], str], ...] = ()
    feed_forwards: tuple[str, ...] = ()
    patch_embedding: tuple[str, ...] = ()
    module_renames: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    official_layout: str | None = None
    official_roots: tuple[str, ...] = ()
    official_markers: tuple[str, ...] = ()
    official_to_diffusers: Callable[[str, tuple[int, ...], Any],
                                    list[tuple[str, Rows | None]]] | None = None
    canonical_layout: str = DIFFUSERS
    aliases: tuple[tuple[str, str], ...] = ()
    key_prefixes: tuple[str, ...] = ()

    @property
    def layouts(self) -> tuple[str, ...]:
        if self.official_layout is None:
            return (self.canonical_layout,)
        return (self.canonical_layout, self.official_layout)


def replace_in_order(key: str, table: tuple[tuple[str, str], ...]) -> str:
    """`key` with each (old, new) of `table` str.replace'd in turn (diffusers' rename dicts
    are applied this way, so their order matters)."""
    for old, new in table:
        key = key.replace(old, new)
    return key


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one source tensor goes. path: our parameter path; layer: index on the
    stacked layer axis (None: unstacked); transform: "copy", "transpose" (Linear), "conv"
    (Conv3d patch embedding as a Linear) or "conv_kernel" (a convolution: torch
    [O, I, *window] -> [*window, I, O]); source_shape: the tensor shape the source must have."""

    path: tuple[str, ...]
    layer: int | None
    transform: str
    source_shape: tuple[int, ...]


def to_ours(tensor: np.ndarray, target: Target) -> np.ndarray:
    """A source tensor in our parameter layout (`target.transform`)."""
    if target.transform == "transpose":
        return tensor.T
    if target.transform == "conv":
        return tensor.reshape(tensor.shape[0], -1).T
    if target.transform == "conv_kernel":
        return tensor.transpose(*range(2, tensor.ndim), 1, 0)
    return tensor


def diffusers_name(keys: KeyMap, path: tuple[str, ...]) -> tuple[str, str]:
    """Our parameter path (a stacked container's block index omitted) -> (diffusers dotted
    name, transform)."""
    *modules, leaf = path
    parts = []
    renames = dict(keys.module_renames)
    for i, p in enumerate(modules):
        if p in renames:
            parts.append(renames[p])
        elif p == "to_out":
            parts.append("to_out.0")
        elif p in _FEED_FORWARD_NAMES and i and modules[i - 1] in keys.feed_forwards:
            parts.append(_FEED_FORWARD_NAMES[p])
        else:
            parts.append(p)
    name = ".".join(parts)
    if leaf == "kernel":
        return f"{name}.weight", "conv" if tuple(modules) == keys.patch_embedding else "transpose"
    if leaf in ("scale", "embedding"):  # norm scales and nnx.Embed tables: torch's `weight`
        return f"{name}.weight", "copy"
    return (f"{name}.{leaf}" if name else leaf), "copy"


def _stacked(keys: KeyMap, path: tuple[str, ...], config) -> tuple[int, int | None]:
    """(prefix length, layer count) when `path` lies in a stacked block container."""
    for prefix, field in keys.stacked:
        if path[:len(prefix)] == prefix:
            return len(prefix), getattr(config, field)
    return 0, None


def expected_keys(keys: KeyMap, config, abstract_state) -> dict[str, Target]:
    """Every diffusers key our state needs -> its Target (shapes in torch layout)."""
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        path = tuple(str(p) for p in path)
        shape = tuple(var.shape)
        n, layers = _stacked(keys, path, config)
        if n:
            shape = shape[1:]
        name, transform = diffusers_name(keys, path)
        if transform == "transpose" and len(shape) > 2:
            transform = "conv_kernel"  # a convolution: only Linear kernels are 2-D
            src_shape = (shape[-1], shape[-2], *shape[:-2])
        elif transform == "transpose":
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


def compose_rows(outer: Rows, inner: Rows) -> Rows:
    """Rows `inner` of the concatenation of source rows `outer`, as source rows."""
    out = []
    for a, b in inner:
        offset = 0
        for start, stop in outer:
            lo, hi = max(a, offset), min(b, offset + stop - start)
            if lo < hi:
                out.append((start + lo - offset, start + hi - offset))
            offset += stop - start
    return tuple(out)


class RenamedSource(KeyedSource):
    """An official-layout source seen under diffusers' keys (a `TensorSource`): a fused
    tensor appears as its pieces, each read as its rows only when asked for.

    foreign: source keys outside the official top-level modules; duplicates: keys that map
    to a diffusers key another key already gave. `make_plan` reports both as unexpected.
    """

    def __init__(self, inner: TensorSource, rename: Callable[[str, tuple[int, ...]], list],
                 roots: tuple[str, ...]):
        self.inner, self.path = inner, inner.path
        self.ignored = list(inner.ignored)
        self._parts: dict[str, tuple[str, Rows | None]] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self.foreign, self.duplicates = [], []
        for key in inner.keys():
            if not key.removeprefix(OFFICIAL_PREFIX).startswith(roots):
                self.foreign.append(key)
                continue
            shape = inner.shape(key)
            for name, rows in rename(key, shape):
                if name in self._parts:
                    self.duplicates.append(f"{key} (maps to {name}, already given by "
                                           f"{self._parts[name][0]})")
                    continue
                self._parts[name] = (key, rows)
                self._shape[name] = shape if rows is None else (
                    sum(b - a for a, b in rows), *shape[1:])

    def origin(self, key: str) -> str:
        """The official key a diffusers key is read from."""
        return self._parts[key][0]

    def locate(self, key: str) -> str:
        return f"{locate(self.inner, self.origin(key))} (official key {self.origin(key)!r})"

    def read(self, key: str, rows: Rows | None = None) -> np.ndarray:
        source_key, own = self._parts[key]
        if own is not None and rows is not None:
            rows = compose_rows(own, rows)
        return self.inner.read(source_key, rows if rows is not None else own)

    def close(self):
        super().close()
        self.inner.close()


def strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    """`key` without the first of `prefixes` it starts with."""
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def check_layout(keys: KeyMap, layout: str):
    if layout not in keys.layouts:
        raise ValueError(f"unknown source layout {layout!r}; expected one of {keys.layouts}")


def layout_view(keys: KeyMap, source: TensorSource, layout: str, config) -> TensorSource:
    """The source as diffusers-named tensors: itself for "diffusers" (the family's canonical
    layout; a `RenamedSource` dropping `keys.key_prefixes` if its keys carry them), a
    `RenamedSource` over it for the official layout."""
    check_layout(keys, layout)
    if layout == keys.canonical_layout:
        if not any(k.startswith(keys.key_prefixes) for k in source.keys()):
            return source
        return RenamedSource(source, lambda key, shape: [(strip_prefix(key, keys.key_prefixes),
                                                          None)], ("",))
    return RenamedSource(source, lambda key, shape: keys.official_to_diffusers(key, shape, config),
                         keys.official_roots)


def detect_layout(keys: KeyMap, source_keys) -> str | None:
    """"diffusers" (the canonical layout), the official layout's name, or None when the keys
    look like neither."""
    source_keys = list(source_keys)
    if any(k.startswith(keys.diffusers_markers) for k in source_keys):
        return keys.canonical_layout
    if keys.official_layout is not None and any(
            k.removeprefix(OFFICIAL_PREFIX).startswith(keys.official_markers) for k in source_keys):
        return keys.official_layout
    return None
