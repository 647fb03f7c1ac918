"""`svg2-convert`: Wan2.1 or HunyuanVideo checkpoints (diffusers or official layout), or their
VAEs (diffusers layout) -> orbax.

    svg2-convert --from diffusers /ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer \\
        --model wan2.1-t2v-1.3b --out /ckpt/wan13b-orbax
    svg2-convert --from wan /ckpt/Wan2.1-T2V-14B --model wan2.1-t2v-14b --out /ckpt/wan14b
    svg2-convert --from hunyuan /ckpt/HunyuanVideo/transformers/mp_rank_00_model_states.pt \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax
    svg2-convert --from diffusers /ckpt/HunyuanVideo-diffusers/transformer \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax
    svg2-convert --from diffusers /ckpt/Wan2.1-T2V-1.3B-Diffusers/vae --model wan2.1-vae \\
        --out /ckpt/wan21-vae-orbax
    svg2-convert --from diffusers /ckpt/Wan2.2-TI2V-5B-Diffusers/vae --model wan2.2-vae \\
        --out /ckpt/wan22-vae-orbax
    svg2-convert --from diffusers /ckpt/HunyuanVideo-diffusers/vae --model hunyuan-video-vae \\
        --out /ckpt/hunyuan-vae-orbax

SRC is a .safetensors file, an .index.json, or a directory holding them, or a torch state
dict file (.pt, .pth, .bin, .ckpt; the official HunyuanVideo release is one). --model is a
preset name or a diffusers config.json; it picks the model family (`kinds()`). Load the
result with the family's `load(OUT, PRESET)` (`svg2_jax.models.wan`, `.hunyuan`,
`.wan_vae`, `.hunyuan_vae`; each also reads SRC directly, without this step).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Callable, NamedTuple

import jax.numpy as jnp

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


class _Counter:
    """Progress: tqdm if installed, else a line every 5% of the tensors."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="tensor", desc="converting")
            except ImportError:
                pass

    def __call__(self, key: str):
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            print(f"converting: {self.done}/{self.total} tensors", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Kind(NamedTuple):
    """One model family `--model` can name. converter: its `convert.<family>` module
    (LAYOUTS, FAMILY, convert_to_orbax, count_reads); presets: its preset names;
    accepts(model): whether --model names it; dtype: its default weight dtype."""

    converter: ModuleType
    presets: tuple[str, ...]
    accepts: Callable[[str], bool]
    dtype: str


def kinds() -> tuple[Kind, ...]:
    """The families, tried in order: the first that accepts --model converts it (the Wan DiT,
    last, takes the rest). VAEs default to float32 weights, as diffusers' pipelines run them."""
    from convert import hunyuan, hunyuan_vae, wan, wan_vae
    from svg2_jax.models import hunyuan_vae as hunyuan_vae_model
    from svg2_jax.models import wan_vae as wan_vae_model
    from svg2_jax.models.hunyuan.config import PRESETS as HUNYUAN_PRESETS
    from svg2_jax.models.hunyuan.config import is_hunyuan_config
    from svg2_jax.models.wan.config import PRESETS as WAN_PRESETS

    return (Kind(wan_vae, tuple(wan_vae_model.PRESETS), wan_vae.FAMILY.accepts, "float32"),
            Kind(hunyuan_vae, tuple(hunyuan_vae_model.PRESETS), hunyuan_vae.FAMILY.accepts,
                 "float32"),
            Kind(hunyuan, tuple(HUNYUAN_PRESETS), is_hunyuan_config, "bfloat16"),
            Kind(wan, tuple(WAN_PRESETS), lambda model: True, "bfloat16"))


def _kind(layout: str, model: str) -> Kind:
    """The family --model names, checked against --from."""
    kind = next(k for k in kinds() if k.accepts(model))
    if layout not in kind.converter.LAYOUTS:
        raise ValueError(f"--from {layout} is not a layout of {kind.converter.FAMILY.name} "
                         f"checkpoints (--model {model!r}); use one of {kind.converter.LAYOUTS}")
    return kind


def main(argv=None) -> int:
    table = kinds()
    p = argparse.ArgumentParser(prog="svg2-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="layout", required=True,
                   choices=tuple(dict.fromkeys(x for k in table for x in k.converter.LAYOUTS)),
                   help="key layout of SRC: diffusers, wan (official Wan2.1 release) or "
                        "hunyuan (official HunyuanVideo release)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--model", required=True,
                   help=f"preset ({', '.join(sorted(p for k in table for p in k.presets))}) "
                        "or a diffusers config.json")
    p.add_argument("--out", required=True, help="orbax checkpoint directory to create")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weight dtype (default: bfloat16 for the transformers, whose norms, "
                        "modulation tables and timestep MLP stay float32; float32 for VAEs)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print tensor counts, skipped keys, time and peak memory")
    args = p.parse_args(argv)

    try:
        kind = _kind(args.layout, args.model)
        family, dtype = kind.converter, args.dtype or kind.dtype
        total = family.count_reads(args.src, args.layout, args.model)
        counter = _Counter(total, enabled=not args.quiet)
        try:
            report = family.convert_to_orbax(args.src, args.layout, args.model, args.out,
                                             dtype=DTYPES[dtype],
                                             overwrite=args.overwrite, progress=counter)
        finally:
            counter.close()
    except ValueError as e:
        print(f"svg2-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({report.tensors} tensors, {report.bytes_written / 2**30:.2f} GiB, "
          f"{dtype})")
    if report.ignored:
        print(f"skipped {len(report.ignored)} keys diffusers also ignores: {report.ignored}")
    if args.verbose:
        print(f"time {report.seconds:.1f} s; peak RSS {report.peak_rss_mb:.0f} MiB "
              f"(+{report.peak_rss_increase_mb:.0f} MiB during the conversion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
