"""The headline figures of benchmark JSON files, as one short markdown table.

Reads the files `bench_overhead`, `bench_kernel`, `bench_model`, `bench_hunyuan` and
`bench_e2e` write (each recognised by its content, not its name) and prints, per file,
the figures docs/performance.md quotes: overhead rows as % of dense (ours beside
flash-kmeans), the kernel's efficiency per selection and CTA order, JAX / torch forward
ratios, HunyuanVideo per-layer and per-step speed-ups, Wan end-to-end times. Errors and
skipped rows are printed as such. The full figures stay in the files.

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
            elif key == "flash_kmeans_skipped" or key.endswith("_error"):
                lines.append(f"| {name} | {key}: {value} | | |")
    return lines


def kernel(data) -> list[str]:
    lines = ["| shape | selection | CTA order | density | kernel ms | dense ms | efficiency "
             "| non-finite |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        if "kernel_ms" not in r or "ablation" in r:
            continue
        order = "heaviest first" if r.get("heavy_first") else "cluster order"
        # files of earlier runs lack the selection fields: fixed budgets then
        target = r.get("target", r.get("target_density"))
        lines.append(f"| {r['shape']} | {r.get('selection', 'density')} {target} (floor "
                     f"{r.get('min_clusters', 0)}) | {order} | {r['density']:.3f} | "
                     f"{r['kernel_ms']:.3f} | {r['dense_ms']:.2f} | {r['efficiency']:.3f} | "
                     f"{r.get('nonfinite', '-')} |")
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


def e2e(data) -> list[str]:
    lines = ["| part | what | seconds | x dense |", "|---|---|---|---|"]
    for r in data["rows"]:
        if "projected_svg2_s" in r:
            lines += [f"| {r['part']} | dense forward | {r['t_dense_s']:.2f} | |",
                      f"| {r['part']} | SVG2 forward warm, density {r['svg2_density_mean']:.3f}"
                      f" | {r['t_warm_s']:.2f} | {r['sparse_step_speedup']:.2f} |",
                      f"| {r['part']} | SVG2 forward cold | {r['t_cold_s']:.2f} | |",
                      f"| {r['part']} | projected {r['steps']} steps, dense / SVG2 | "
                      f"{r['projected_dense_s']:.0f} / {r['projected_svg2_s']:.0f} | "
                      f"{r['projected_speedup']:.2f} |"]
        else:
            lines.append(f"| {r['part']} | {r['steps']}-step loop, dense | {r['dense_s']:.2f} | |")
            for run in ("svg2_shared", "svg2_separate"):
                lines.append(f"| {r['part']} | {run}, density "
                             f"{r[f'{run}_density_sparse_steps']:.3f} | {r[f'{run}_s']:.2f} | "
                             f"{r[f'{run}_speedup']:.2f} |")
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
    if any("mode" in r for r in data.get("rows", ())):
        return e2e(data)
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
