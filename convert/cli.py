"""`svg2-convert`: model checkpoints -> orbax: the Wan2.1 / Wan2.2 and HunyuanVideo
transformers (diffusers or official layout; a Wan2.2 A14B directory's two experts at once,
written to OUT/transformer and OUT/transformer_2), their text encoders and Wan2.1 I2V's CLIP
vision tower (transformers layout) and their VAEs (diffusers layout).

    svg2-convert --from diffusers /ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer \\
        --model wan2.1-t2v-1.3b --out /ckpt/wan13b-orbax
    svg2-convert --from wan /ckpt/Wan2.1-T2V-14B --model wan2.1-t2v-14b --out /ckpt/wan14b
    svg2-convert --from wan /ckpt/Wan2.2-T2V-A14B --model wan2.2-t2v-a14b --out /ckpt/wan22-t2v
    svg2-convert --from diffusers /ckpt/Wan2.2-I2V-A14B-Diffusers --model wan2.2-i2v-a14b \\
        --out /ckpt/wan22-i2v
    svg2-convert --from diffusers /ckpt/Wan2.2-TI2V-5B-Diffusers/transformer \\
        --model wan2.2-ti2v-5b --out /ckpt/wan22-ti2v
    svg2-convert --from hunyuan /ckpt/HunyuanVideo/transformers/mp_rank_00_model_states.pt \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax
    svg2-convert --from diffusers /ckpt/HunyuanVideo-diffusers/transformer \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax
    svg2-convert --from transformers /ckpt/Wan2.1-T2V-1.3B-Diffusers/text_encoder \\
        --model umt5-xxl --out /ckpt/umt5-orbax
    svg2-convert --from transformers /ckpt/HunyuanVideo-diffusers/text_encoder \\
        --model hunyuan-video-llama --out /ckpt/llama-orbax
    svg2-convert --from transformers /ckpt/HunyuanVideo-diffusers/text_encoder_2 \\
        --model clip-vit-l-text --out /ckpt/clip-orbax
    svg2-convert --from transformers /ckpt/Wan2.1-I2V-14B-480P-Diffusers/image_encoder \\
        --model clip-vit-h-14-vision --out /ckpt/clip-vision-orbax
    svg2-convert --from diffusers /ckpt/Wan2.1-T2V-1.3B-Diffusers/vae --model wan2.1-vae \\
        --out /ckpt/wan21-vae-orbax
    svg2-convert --from diffusers /ckpt/Wan2.2-TI2V-5B-Diffusers/vae --model wan2.2-vae \\
        --out /ckpt/wan22-vae-orbax
    svg2-convert --from diffusers /ckpt/HunyuanVideo-diffusers/vae --model hunyuan-video-vae \\
        --out /ckpt/hunyuan-vae-orbax

SRC is a .safetensors file, an .index.json, or a directory holding them, or a torch state
dict file (.pt, .pth, .bin, .ckpt; the official HunyuanVideo release is one). --model is a
preset name or a config.json (diffusers' for the transformers, transformers' for the text
encoders: e.g. SRC/config.json); it picks the model family (`families()`). Load the result
with the family's `load(OUT, PRESET)` (`svg2_jax.models.wan`, `.hunyuan`, `.umt5`,
`.llama`, `.clip_text`, `.clip_vision`, `.wan_vae`, `.hunyuan_vae`), which also reads SRC directly, without
this step.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
from typing import Callable

import jax.numpy as jnp

from svg2_jax.checkpoints import ModelFamily

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


class _StderrNotes(logging.Handler):
    """The conversion's notes (what killed runs left and what became of it) on stderr, as
    `svg2-convert: ...` lines (sys.stderr looked up at each note)."""

    def emit(self, record):
        print(f"svg2-convert: {record.getMessage()}", file=sys.stderr)


def _notes_to_stderr():
    from convert.output_dir import log

    if not any(isinstance(h, _StderrNotes) for h in log.handlers):
        log.addHandler(_StderrNotes())
        log.propagate = False


@dataclasses.dataclass(frozen=True)
class Kind:
    """One model family svg2-convert writes. family: its `ModelFamily`; presets: its preset
    names; names(model) -> whether --model (a preset name or a config.json) is this family's;
    dtype: its default weight dtype."""

    family: ModelFamily
    presets: tuple[str, ...]
    names: Callable[[str], bool]
    dtype: str = "bfloat16"


def families() -> tuple[Kind, ...]:
    """The families, tried in this order: the first whose `names` accepts --model converts.
    Wan comes last and takes every other --model (an unknown name fails as a Wan preset).
    VAEs default to float32 weights, as diffusers' pipelines run them, and so does the CLIP
    vision tower (`clip_vision.load`'s default: one image per video)."""
    from svg2_jax.models import (clip_text, clip_vision, hunyuan, hunyuan_vae, llama, umt5, wan,
                                 wan_vae)
    from svg2_jax.models.clip_text.load import FAMILY as CLIP_TEXT
    from svg2_jax.models.clip_vision.load import FAMILY as CLIP_VISION
    from svg2_jax.models.common.text_encoder import names_config
    from svg2_jax.models.hunyuan.config import is_hunyuan_config
    from svg2_jax.models.hunyuan.load import FAMILY as HUNYUAN
    from svg2_jax.models.llama.load import FAMILY as LLAMA
    from svg2_jax.models.umt5.load import FAMILY as UMT5
    from svg2_jax.models.wan.load import FAMILY as WAN
    from svg2_jax.models.hunyuan_vae.load import FAMILY as HUNYUAN_VAE
    from svg2_jax.models.wan_vae.load import FAMILY as WAN_VAE

    def text(family, presets, dtype="bfloat16"):
        return Kind(family, tuple(presets), functools.partial(
            names_config, cls=family.config_cls, presets=presets), dtype)

    def vae(family, presets):
        return Kind(family, tuple(presets), family.accepts, "float32")

    return (vae(WAN_VAE, wan_vae.PRESETS), vae(HUNYUAN_VAE, hunyuan_vae.PRESETS),
            Kind(HUNYUAN, tuple(hunyuan.PRESETS), is_hunyuan_config),
            text(UMT5, umt5.PRESETS), text(LLAMA, llama.PRESETS),
            text(CLIP_TEXT, clip_text.PRESETS), text(CLIP_VISION, clip_vision.PRESETS, "float32"),
            Kind(WAN, tuple(wan.PRESETS), lambda model: True))


def _kind(layout: str, model: str) -> Kind:
    """The model family --model names, checked against --from."""
    kind = next(kind for kind in families() if kind.names(model))
    if layout not in kind.family.layouts:
        raise ValueError(f"--from {layout} is not a layout of {kind.family.name} checkpoints "
                         f"(--model {model!r}); use one of {kind.family.layouts}")
    return kind


def main(argv=None) -> int:
    from convert import common, wan

    kinds = families()
    p = argparse.ArgumentParser(prog="svg2-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="layout", required=True,
                   choices=tuple(dict.fromkeys(x for k in kinds for x in k.family.layouts)),
                   help="key layout of SRC: diffusers, wan (official Wan2.1 / Wan2.2 "
                        "release), hunyuan (official HunyuanVideo release) or transformers "
                        "(the text encoders, the CLIP vision tower)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--model", required=True,
                   help=f"preset ({', '.join(n for k in kinds for n in sorted(k.presets))}) "
                        "or a config.json")
    p.add_argument("--out", required=True, help="orbax checkpoint directory to create")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weight dtype (default bfloat16, float32 for the VAEs and the CLIP "
                        "vision tower; the parameters "
                        "each model keeps in float32 stay float32: norms, modulation tables, "
                        "timestep MLP, umT5's wo)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print tensor counts, skipped keys, time and peak memory")
    args = p.parse_args(argv)
    _notes_to_stderr()

    try:
        kind = _kind(args.layout, args.model)
        family, dtype = kind.family, args.dtype or kind.dtype
        experts = family is wan.FAMILY and wan.holds_experts(args.src)
        total = (wan.count_expert_reads(args.src, args.layout, args.model) if experts else
                 common.count_reads(family, args.src, args.layout, args.model))
        counter = _Counter(total, enabled=not args.quiet)
        try:
            if experts:
                reports = wan.convert_experts(args.src, args.layout, args.model, args.out,
                                              dtype=DTYPES[dtype], overwrite=args.overwrite,
                                              progress=counter)
            else:
                reports = [common.convert_to_orbax(family, args.src, args.layout, args.model,
                                                   args.out, dtype=DTYPES[dtype],
                                                   overwrite=args.overwrite, progress=counter)]
        finally:
            counter.close()
    except (ValueError, OSError) as e:
        print(f"svg2-convert: error: {e}", file=sys.stderr)
        return 1
    report = common.ConversionReport(
        reports[0].layout, sum(r.tensors for r in reports), sum((r.ignored for r in reports), []),
        sum(r.bytes_written for r in reports), sum(r.seconds for r in reports),
        max(r.peak_rss_mb for r in reports), max(r.peak_rss_increase_mb for r in reports))
    what = " (transformer/ and transformer_2/: both experts)" if experts else ""
    print(f"wrote {args.out}{what} ({report.tensors} tensors, "
          f"{report.bytes_written / 2**30:.2f} GiB, {dtype})")
    if report.ignored:
        print(f"skipped {len(report.ignored)} keys diffusers / transformers also ignore: "
              f"{report.ignored}")
    if args.verbose:
        print(f"time {report.seconds:.1f} s; peak RSS {report.peak_rss_mb:.0f} MiB "
              f"(+{report.peak_rss_increase_mb:.0f} MiB during the conversion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
