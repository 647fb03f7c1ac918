"""`svg2-convert`: Wan2.1 or HunyuanVideo checkpoints (diffusers or official layout) -> orbax.

    svg2-convert --from diffusers /ckpt/Wan2.1-T2V-1.3B-Diffusers/transformer \\
        --model wan2.1-t2v-1.3b --out /ckpt/wan13b-orbax
    svg2-convert --from wan /ckpt/Wan2.1-T2V-14B --model wan2.1-t2v-14b --out /ckpt/wan14b
    svg2-convert --from hunyuan /ckpt/HunyuanVideo/transformers/mp_rank_00_model_states.pt \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax
    svg2-convert --from diffusers /ckpt/HunyuanVideo-diffusers/transformer \\
        --model hunyuan-video-t2v-720p --out /ckpt/hunyuan-orbax

SRC is a .safetensors file, an .index.json, or a directory holding them, or a torch state
dict file (.pt, .pth, .bin, .ckpt; the official HunyuanVideo release is one). --model is a
preset name or a diffusers config.json; it picks the model family (HunyuanVideo or Wan). Load the result with
`svg2_jax.models.wan.load(OUT, PRESET)` / `svg2_jax.models.hunyuan.load(OUT, PRESET)` (which
also read SRC directly, without this step).
"""

from __future__ import annotations

import argparse
import logging
import sys

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


def _family(layout: str, model: str):
    """The converter module of the model family --model names, checked against --from."""
    from convert import hunyuan, wan
    from svg2_jax.models.hunyuan.config import is_hunyuan_config

    family = hunyuan if is_hunyuan_config(model) else wan
    if layout not in family.LAYOUTS:
        raise ValueError(f"--from {layout} is not a layout of {family.FAMILY.name} checkpoints "
                         f"(--model {model!r}); use one of {family.LAYOUTS}")
    return family


def main(argv=None) -> int:
    from convert import hunyuan, wan
    from svg2_jax.models.hunyuan.config import PRESETS as HUNYUAN_PRESETS
    from svg2_jax.models.wan.config import PRESETS

    p = argparse.ArgumentParser(prog="svg2-convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="layout", required=True,
                   choices=tuple(dict.fromkeys(wan.LAYOUTS + hunyuan.LAYOUTS)),
                   help="key layout of SRC: diffusers, wan (official Wan2.1 release) or "
                        "hunyuan (official HunyuanVideo release)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("--model", required=True,
                   help=f"preset ({', '.join(sorted(PRESETS) + sorted(HUNYUAN_PRESETS))}) "
                        "or a diffusers config.json")
    p.add_argument("--out", required=True, help="orbax checkpoint directory to create")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                   help="weight dtype (norms, modulation tables, timestep MLP stay float32)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print tensor counts, skipped keys, time and peak memory")
    args = p.parse_args(argv)
    _notes_to_stderr()

    try:
        family = _family(args.layout, args.model)
        total = family.count_reads(args.src, args.layout, args.model)
        counter = _Counter(total, enabled=not args.quiet)
        try:
            report = family.convert_to_orbax(args.src, args.layout, args.model, args.out,
                                             dtype=DTYPES[args.dtype],
                                             overwrite=args.overwrite, progress=counter)
        finally:
            counter.close()
    except (ValueError, OSError) as e:
        print(f"svg2-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({report.tensors} tensors, {report.bytes_written / 2**30:.2f} GiB, "
          f"{args.dtype})")
    if report.ignored:
        print(f"skipped {len(report.ignored)} keys diffusers also ignores: {report.ignored}")
    if args.verbose:
        print(f"time {report.seconds:.1f} s; peak RSS {report.peak_rss_mb:.0f} MiB "
              f"(+{report.peak_rss_increase_mb:.0f} MiB during the conversion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
