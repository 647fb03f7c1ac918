"""svg2-generate's flags checked before any model work, every problem naming its flag:
values in range (`check_values`), flags the run would otherwise ignore
(`check_applicable`; the text conditioning's are `svg2_jax.cli.text.check_text_flags`,
the Wan experts' and images' `svg2_jax.cli.wan_flags`), --mesh and --distributed
(`check_devices`),
input paths that must exist (`input_problem`) and output paths that must be writable
(`check_paths`, returning where the run writes). `parse_dense_layers` reads
--dense-layers."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from svg2_jax.cli.outputs import check_output_file
from svg2_jax.config import REFERENCE_RULE, SVG2Config
from svg2_jax.sharding.distributed import parse_distributed
from svg2_jax.sharding.mesh import parse_mesh_spec

# flags that only an SVG2 run reads (argparse dest names)
SVG2_ONLY = ("qc", "kc", "selection", "error_tolerance", "error_pool", "compensation",
             "reference_svg2", "top_p", "min_kc_ratio", "target_density", "sparse_backend",
             "kmeans_iters_cold", "kmeans_iters_warm", "dense_fraction", "dense_layers",
             "kmeans_during_warmup", "share_cfg_cache")
# flags that only one selection rule reads (SVG2Config.selection)
RULE_ONLY = {"error": ("error_tolerance", "error_pool"), "svg2": ("top_p", "min_kc_ratio")}


def flag(dest: str, args=None) -> str:
    """The command-line spelling of an argparse dest ("top_p" -> "--top-p"); with args, of
    the flag given for it (--compensation and --no-compensation share one dest)."""
    if dest == "compensation":
        return "--compensation" if getattr(args, dest, None) else "--no-compensation"
    return "--" + {"share_cfg_cache": "separate_cfg_cache"}.get(dest, dest).replace("_", "-")


def given(args, dest: str) -> bool:
    return getattr(args, dest, None) is not None


def parse_dense_layers(text: str) -> tuple[int, ...]:
    """"0,3" -> (0, 3); "" -> () (no always-dense layer). ValueError naming the flag."""
    layers = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            layers.append(int(part))
        except ValueError:
            raise ValueError(f"--dense-layers takes comma-separated layer indices (e.g. 0,1; "
                             f"'' for none), got {text!r}") from None
    if any(i < 0 for i in layers):
        raise ValueError(f"--dense-layers indices must be >= 0, got {text!r}")
    return tuple(sorted(set(layers)))


def check_values(args) -> list[str]:
    """Each flag's value on its own: positive counts, finite numbers, fractions in range."""
    problems = []
    for dest in ("height", "width", "frames", "steps", "fps", "qc", "kc",
                 "kmeans_iters_cold", "kmeans_iters_warm"):
        value = getattr(args, dest)
        if value is not None and value < 1:
            problems.append(f"{flag(dest)} must be >= 1, got {value}")
    if not 0 <= args.seed < 2 ** 32:
        problems.append(f"--seed must be in [0, 2**32), got {args.seed}")
    ranges = {"top_p": (0.0, 1.0, "(0, 1]"), "target_density": (0.0, 1.0, "(0, 1]"),
              "min_kc_ratio": (None, 1.0, "[0, 1]"), "dense_fraction": (None, 1.0, "[0, 1]")}
    for dest, (low_open, high, text) in ranges.items():
        value = getattr(args, dest)
        if value is None:
            continue
        low_ok = value > low_open if low_open is not None else value >= 0.0
        if not (low_ok and value <= high):
            problems.append(f"{flag(dest)} must be in {text}, got {value}")
    for dest in ("guidance", "guidance_2", "shift"):
        value = getattr(args, dest)
        if value is not None and not math.isfinite(value):
            problems.append(f"{flag(dest)} must be finite, got {value}")
    tol = args.error_tolerance
    if tol is not None and not 0.0 <= tol < math.inf:
        problems.append(f"--error-tolerance must be a finite number >= 0, got {tol}")
    if args.shift is not None and args.shift <= 0:
        problems.append(f"--shift must be > 0, got {args.shift}")
    if args.dense_layers is not None:
        try:
            parse_dense_layers(args.dense_layers)
        except ValueError as e:
            problems.append(str(e))
    return problems


def check_applicable(args, family: str, cfg_pass: bool) -> list[str]:
    """Flags this run would ignore or contradict. family: "wan" or "hunyuan"; cfg_pass:
    whether the run has an unconditional pass (Wan with guidance != 1)."""
    problems = []
    if args.attention == "dense":
        problems += [f"{flag(d, args)} applies to --attention svg2 only" for d in SVG2_ONLY
                     if given(args, d)]
    else:
        problems += _selection_problems(args)
    if family == "hunyuan":
        if given(args, "share_cfg_cache"):
            problems.append("--separate-cfg-cache: HunyuanVideo has no unconditional pass")
        return problems  # its negative flags: check_text_flags
    if not cfg_pass:
        problems += [f"{flag(d)} is unused: --guidance 1 runs no unconditional pass"
                     for d in ("negative_prompt", "negative_embeddings", "share_cfg_cache")
                     if given(args, d)]
    return problems


def _selection_problems(args) -> list[str]:
    """The selection flags against the rule the run uses (--reference-svg2: "svg2",
    else --selection, else SVG2Config's)."""
    problems = []
    if args.reference_svg2:
        rule = REFERENCE_RULE["selection"]
        if given(args, "selection") and args.selection != rule:
            problems.append(f"--reference-svg2 is --selection {rule} without compensation; "
                            f"it takes no --selection {args.selection}")
        if args.compensation:
            problems.append(f"--reference-svg2 is --selection {rule} without compensation; "
                            "it takes no --compensation (--selection svg2 --compensation "
                            "compensates the reference's selection)")
    else:
        rule = args.selection if given(args, "selection") else SVG2Config().selection
    for other, dests in RULE_ONLY.items():
        if other != rule:
            why = "--reference-svg2" if args.reference_svg2 else f"--selection {rule}"
            problems += [f"{flag(d)} applies to --selection {other} only; this run has {why}"
                         for d in dests if given(args, d)]
    for budget in ("top_p", "error_tolerance"):
        if given(args, "target_density") and given(args, budget):
            problems.append(f"{flag(budget)} and --target-density exclude each other (a "
                            "fixed density budget replaces the rule's adaptive criterion)")
    return problems


def check_devices(args, family: str, cfg_pass: bool, shared_cfg_cache: bool) -> list[str]:
    """--mesh and --distributed: their syntax and what the run needs of them (the device
    count is checked once the processes have joined: `generate._mesh`). cfg_pass: the run
    has an unconditional pass; shared_cfg_cache: its two passes share SVG2's centroids."""
    problems = []
    if given(args, "distributed"):
        try:
            parse_distributed(args.distributed)
        except ValueError as e:
            problems.append(str(e))
        if not given(args, "mesh"):
            problems.append("--distributed needs --mesh: the processes run one program on "
                            "one mesh over all their devices (e.g. --mesh sp=8,cfg=2)")
    if not given(args, "mesh"):
        return problems
    try:
        spec = parse_mesh_spec(args.mesh)
    except ValueError as e:
        return problems + [f"--mesh: {e}"]
    if spec.cfg == 2 and not cfg_pass:
        problems.append(f"--mesh {args.mesh}: cfg=2 (CFG parallel) needs an unconditional "
                        "pass, and " + ("HunyuanVideo has none (embedded guidance)"
                                        if family == "hunyuan" else
                                        "--guidance 1 runs none"))
    elif spec.cfg == 2 and args.attention == "svg2" and shared_cfg_cache:
        problems.append(f"--mesh {args.mesh}: cfg=2 runs the two CFG passes at once on "
                        "separate devices, each with its own SVG2 centroids: add "
                        "--separate-cfg-cache")
    if spec.balance is not None and args.attention == "dense":
        problems.append(f"--mesh {args.mesh}: balance (density-balanced heads) applies to "
                        "--attention svg2 only")
    if args.attention == "svg2" and getattr(args, "error_pool", None) == "layer" and spec.sp != 1:
        problems.append(f"--mesh {args.mesh}: --error-pool layer pools a layer's heads in one "
                        "call, and sp splits them over devices (head-parallel attention): "
                        "use --error-pool head")
    return problems


@dataclasses.dataclass(frozen=True)
class OutputPaths:
    """Where the run writes: the mp4, the JSON report, and the latents (without --vae,
    or when the VAE decode fails)."""

    mp4: Path
    report: Path
    latents: Path


def input_problem(name: str, path, kind: str | None = None) -> str | None:
    """What is wrong with the input `path` given to flag `name`, or None. kind: "file",
    "dir", or None for either (a checkpoint may be a file or a folder)."""
    if not os.path.exists(path):
        return f"{name} {str(path)!r} not found"
    if kind == "file" and not os.path.isfile(path):
        return f"{name} {str(path)!r} is a directory; a file is expected"
    if kind == "dir" and not os.path.isdir(path):
        return f"{name} {str(path)!r} is a file; a folder is expected"
    return None


def check_paths(args) -> tuple[list[str], OutputPaths | None]:
    """Inputs that must exist (checkpoints, text files, VAE; the text encoders' and
    tokenizers' are `check_text_flags`', the images' and the image encoder's
    `svg2_jax.cli.wan_flags`') and outputs that must be writable files of the
    right kind -> (problems, OutputPaths or None when an output is unusable)."""
    inputs = {"checkpoint": None, "checkpoint_2": None, "text_embeddings": "file",
              "negative_embeddings": "file", "vae": None}
    problems = []
    for dest, kind in inputs.items():
        problem = given(args, dest) and input_problem(flag(dest), getattr(args, dest), kind)
        if problem:
            problems.append(problem)
    try:
        mp4 = check_output_file(args.out, "--out", ".mp4")
        report = (check_output_file(args.report, "--report", ".json") if args.report
                  else check_output_file(mp4.with_suffix(".json"), "--out (its .json report)",
                                         ".json"))
        latents = check_output_file(mp4.with_suffix(".latents.npy"),
                                    "--out (its .latents.npy)", ".npy")
    except ValueError as e:
        return problems + [str(e)], None
    return problems, OutputPaths(mp4, report, latents)
