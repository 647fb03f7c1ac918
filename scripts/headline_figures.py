"""The headline figures of benchmark JSON files, as one short markdown table.

Reads the files `bench_overhead`, `bench_kernel`, `bench_model` and `bench_hunyuan`
write (each recognised by its content, not its name) and prints, per file, the figures
docs/performance.md quotes: overhead rows as % of dense (ours beside flash-kmeans), the
kernel's efficiency per selection and CTA order, JAX / torch forward ratios, HunyuanVideo
per-layer and per-step speed-ups. Errors and skipped rows are printed as such. The full
figures stay in the files.

Usage: python -m scripts.headline_figures FILE.json [FILE.json ...]
"""

from __future__ import annotations

import json
import os
import sys


def _ms(r) -> str:
    return f"{r['median_ms']:.2f}" if "median_ms" in r else "-"


def _opt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def overhead(data) -> list[str]:
    lines = ["| shape | row | ms | % of dense |", "|---|---|---|---|"]
    for name, shape in data["shapes"].items():
        for label, r in shape["rows"].items():
            if label.startswith(("dense", "k-means warm", "**warm overhead", "  around",
                                 "svg2_attention warm call, backend=pallas")):
                lines.append(f"| {name} | {label.strip()} | {_ms(r)} | "
                             f"{r['percent_of_dense']:.1f}% |")
        for key, value in shape.items():
            if key.startswith("k_label_agreement"):
                lines.append(f"| {name} | {key} | {value:.4f} | |")
            elif key == "flash_kmeans_skipped":
                lines.append(f"| {name} | flash-kmeans skipped: {value} | | |")
    return lines


def kernel(data) -> list[str]:
    lines = ["| shape | selection | CTA order | density | kernel ms | dense ms | efficiency "
             "| non-finite |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if "kernel_ms" not in r or "ablation" in r:
            continue
        order = "heaviest first" if r.get("heavy_first") else "cluster order"
        lines.append(f"| {r['shape']} | {r['selection']} {r['target']} (floor "
                     f"{r['min_clusters']}) | {order} | {r['density']:.3f} | "
                     f"{r['kernel_ms']:.3f} | {r['dense_ms']:.2f} | {r['efficiency']:.3f} | "
                     f"{r['nonfinite']} |")
    return lines


def model(data) -> list[str]:
    lines = ["| case | framework | median ms | compile s | JAX / it |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        if "median_ms" not in r:
            lines.append(f"| {r['case']} | {r['framework']} | "
                         f"{r.get('skipped') or r.get('error')} | | |")
            continue
        ratio = data["jax_over"].get(r["framework"], {}).get(r["case"])
        lines.append(f"| {r['case']} | {r['framework']} | {r['median_ms']:.1f} | "
                     f"{r['compile_s']:.1f} | {_opt(ratio)} |")
    return lines


def hunyuan(data) -> list[str]:
    lines = ["| part | case | median ms | density | x dense |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        if "median_ms" not in r:
            lines.append(f"| {r['part']} | {r.get('error')} | | | |")
            continue
        lines.append(f"| {r['part']} | {r['case']} | {r['median_ms']:.2f} | "
                     f"{r['density']:.3f} | {_opt(r.get('speedup_vs_dense'))} |")
    return lines


def headline(data) -> list[str]:
    """The table of one benchmark's JSON, by what it holds."""
    if "shapes" in data:
        return overhead(data)
    if "jax_over" in data:
        return model(data)
    if "all_attention_layers_s" in data:
        return hunyuan(data)
    if any("kernel_ms" in r for r in data.get("rows", ())):
        return kernel(data)
    return ["(not a benchmark file this script knows)"]


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("no benchmark files")
    for path in paths:
        print(f"\n{os.path.basename(path)}")
        try:
            with open(path) as f:
                lines = headline(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as e:
            lines = [f"(unreadable: {type(e).__name__}: {e})"]
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
