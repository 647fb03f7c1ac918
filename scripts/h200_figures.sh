#!/usr/bin/env bash
# The recipe for every H200 figure of docs/performance.md: one command per benchmark, each
# under its own `timeout`, all output in one log, every figure in a JSON, a short table last.
#
# On the GPU machine, from the repository root, with the carried wheels (.whl/) first:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# (pip there has no index: the image has jax with CUDA, torch and triton; .whl/ brings
# diffusers, einops, flash-kmeans, flax, orbax-checkpoint and safetensors, without their
# dependencies, which the image must hold: flax.nnx imports msgpack, optax, rich,
# treescope and yaml, diffusers huggingface_hub, regex, requests and PIL. The package is
# not installed (no `pip install -e .`): PYTHONPATH=$PWD finds it, and nothing here
# imports its text front end, so its base dependencies tokenizers and ftfy are not needed.
# The header of the log names any of these imports that fail.)
#   bash scripts/h200_figures.sh PART [PART ...]
# PART (run in this order whatever the order given; estimates on an H200 from the compile
# and run times of earlier runs, process start and compilation included). The figures
# issue #18 asks for again, with raw data:
#   check       the GPU tests of the sparse kernel and the fused k-means (pytest -m gpu,
#               4 processes with pytest-xdist)                                           ~1 min
#   overhead-720p  SVG2's warm overhead around the kernel beside the flash-kmeans peer,
#               Wan 14B 720p, without the O(S^2) backend=jax reference row (bench_overhead) ~2 min
#   overhead-480p  the same at Wan 1.3B 480p, with the reference row                     ~1.3 min
#   kernel      the kernel under SVG2's top-p budgets (floor 100 key clusters), heaviest
#               CTAs first vs cluster order, beside a fixed budget (bench_kernel)        ~2 min
#   model-480p  Wan 1.3B forward: ours vs diffusers eager vs torch.compile (bench_model) ~2.5 min
#   model-720p  Wan 14B forward: ours vs diffusers eager, 2 reps (bench_model)            ~2 min
#   hunyuan     HunyuanVideo 720p per layer and per step, dense vs SVG2 on the kernel
#               (bench_hunyuan)                                                          ~2.5 min
#   overhead    overhead-720p and overhead-480p
#   model       model-480p and model-720p
#   all         the seven above (~14 min of estimates: with the default budget the last
#               parts are skipped; three commands fit: "check overhead kernel",
#               "model" and "hunyuan")
# The rest of docs/performance.md (not in `all`; one command each):
#   kernel-density  the kernel's efficiency at densities 0.05-0.5, heaviest first and in
#               cluster order (its first table; the plot: bench_kernel --plot-from)     ~5 min
#   e2e-720p    Wan 14B 720p single forwards, dense vs SVG2, 50-step projection (bench_e2e) ~4 min
#   e2e-480p    Wan 1.3B 480p whole 50-step loops, dense vs SVG2 (bench_e2e)              ~4.5 min
# Every benchmark gets the smaller of its own limit and what is left of BUDGET_S
# (default 555 s from the start), and is skipped, saying so, when less than its minimum
# is left: a command ends inside 600 seconds even when the estimates are short, and what
# did not fit is named in the table (run those parts in another command).
#
# Output under $OUT (none in folders; 7 files for `all`, at most 10 if every part ran in
# one command): h200_figures.log (every command's output, in order) and one JSON per
# benchmark, named by what it holds.
# TINY=1: the same recipe on tiny shapes with the benchmarks' CPU paths (--tiny,
# --dry-run): checks the recipe on any machine, measures nothing. PYTHON (default
# python3) names the interpreter.
set -o pipefail
shopt -s nullglob
export PYTHONUNBUFFERED=1
# Compiled programs are kept across processes (the kernel benchmark compiles the same
# kernel for several selections); each model is compiled once, so its compile time stays
# a cold one.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_compilation_cache}"

usage="usage: bash scripts/h200_figures.sh PART ... (check overhead-720p overhead-480p kernel model-480p model-720p hunyuan overhead model all kernel-density e2e-720p e2e-480p)"
: "${OUT:?set OUT to the folder for the log and the JSON files}"
(( $# > 0 )) || { echo "$usage" >&2; exit 2; }
PY="${PYTHON:-python3}"
TINY="${TINY:-0}"
BUDGET_S="${BUDGET_S:-555}"
ORDER=(check overhead-720p overhead-480p kernel model-480p model-720p hunyuan)  # `all`
declare -A WANT=()
for part in "$@"; do
  case "$part" in
    all) for p in "${ORDER[@]}"; do WANT[$p]=1; done ;;
    overhead) WANT[overhead-720p]=1; WANT[overhead-480p]=1 ;;
    model) WANT[model-480p]=1; WANT[model-720p]=1 ;;
    check|overhead-720p|overhead-480p|kernel|model-480p|model-720p|hunyuan) WANT[$part]=1 ;;
    kernel-density|e2e-720p|e2e-480p) WANT[$part]=1 ;;
    *) echo "unknown part '$part'; $usage" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT" || exit 1
LOG="$OUT/h200_figures.log"
START=$SECONDS
ROWS=()
FAILED=0

# step NAME MAX_S MIN_S COMMAND...: runs COMMAND under timeout, output to the screen and
# the log, one row of the final table.
step() {
  local name=$1 max=$2 min=$3
  shift 3
  local left=$(( BUDGET_S - (SECONDS - START) ))
  local limit=$(( left < max ? left : max ))
  if (( limit < min )); then
    echo "== $name: SKIPPED, ${left} s of the budget left, it needs ${min} s" | tee -a "$LOG"
    FAILED=1
    ROWS+=("$(printf '| %-14s | %-26s | %5s |' "$name" "skipped: ${left} s left" -)")
    return 0
  fi
  echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
  local t0=$SECONDS rc status
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=$?
  if (( rc == 0 )); then status=ok
  elif (( rc == 124 || rc == 137 )); then status="timed out at ${limit} s"; FAILED=1
  else status="failed ($rc)"; FAILED=1
  fi
  ROWS+=("$(printf '| %-14s | %-26s | %5d |' "$name" "$status" $(( SECONDS - t0 )))")
}

{
  echo "== h200_figures.sh $* (TINY=$TINY, budget ${BUDGET_S} s) $(date -u +%FT%TZ)"
  echo "JAX compilation cache: $JAX_COMPILATION_CACHE_DIR (a compile_s of a repeated program may be a cache hit)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  timeout 60 "$PY" - <<'EOF'
import importlib.metadata as md
names = ("jax", "jaxlib", "flax", "orbax-checkpoint", "torch", "triton", "diffusers",
         "transformers", "flash-kmeans", "einops", "safetensors")
def version(n):
    try:
        return md.version(n)
    except md.PackageNotFoundError:
        return "missing"
print("packages:", ", ".join(f"{n} {version(n)}" for n in names))
# What the benchmarks import beyond jax and torch: the carried wheels are installed
# without their dependencies, so a module the image lacks is named here, not minutes
# later inside a benchmark (flax.nnx: the model benchmarks; diffusers: their torch rows;
# flash_kmeans: the overhead benchmark's peer).
import importlib
for m in ("einops", "safetensors", "flax.nnx", "diffusers", "flash_kmeans"):
    try:
        importlib.import_module(m)
    except Exception as e:
        print(f"import {m}: FAILS ({type(e).__name__}: {e})")
EOF
} 2>&1 | tee -a "$LOG"

if [[ -n "${WANT[check]}" ]]; then
  # Compiling the kernels is most of the time: with pytest-xdist (in the image), 4 worker
  # processes compile in parallel and share the GPU (no preallocation: the tests are small).
  parallel=()
  "$PY" -c 'import xdist' 2>/dev/null && parallel=(-n 4)
  step check 180 60 env XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -m pytest -q -m gpu \
    tests/test_sparse_kernel.py tests/test_pallas_kmeans.py -x -p no:cacheprovider "${parallel[@]}"
fi

# One file per resolution, each part under its own limit, so a slow 480p run cannot cost
# the 720p figures (2026-12-02: one part for both ran out at 150 s inside 480p).
if [[ -n "${WANT[overhead-720p]}" ]]; then
  # 720p took ~120 s of that part with the pure-JAX backend's O(S^2) reference row (~1.5 s
  # a call, 3 calls plus its compilation); that row shows only that the reference path
  # fits in memory, which 480p shows too, so it is left out here.
  if (( TINY )); then args=(--tiny --reps 2); else args=(--shapes 75600x40 --impls pallas --reps 10); fi
  step overhead-720p 180 100 "$PY" -m scripts.bench_overhead "${args[@]}" --no-jax-reference \
    --json "$OUT/overhead_vs_dense_720p.json"
fi

if [[ -n "${WANT[overhead-480p]}" ]]; then
  if (( TINY )); then args=(--tiny --reps 2); else args=(--shapes 32760x12 --impls pallas --reps 10); fi
  step overhead-480p 120 60 "$PY" -m scripts.bench_overhead "${args[@]}" \
    --json "$OUT/overhead_vs_dense_480p.json"
fi

if [[ -n "${WANT[kernel]}" ]]; then
  # SVG2's own rule: top-p 0.9 with its floor of 10% of the key clusters (100 of 1000),
  # each with heaviest-first and cluster CTA order; the fixed budget 0.13 (floor too) beside.
  if (( TINY )); then args=(--dry-run --reps 1 --kmeans-iters 3 --min-clusters 2)
  else args=(--shapes 75600x40,32760x12 --reps 5 --kmeans-iters 10 --min-clusters 100); fi
  step kernel 170 60 "$PY" -m scripts.bench_kernel "${args[@]}" --densities 0.13 --top-ps 0.9 \
    --json "$OUT/kernel_top_p_heavy_first_vs_cluster_order.json"
fi

if [[ -n "${WANT[model-480p]}" ]]; then
  if (( TINY )); then args=(--tiny --reps 2 --warmup 1 --compile-backend eager)
  else args=(--cases 1.3b-480p --reps 5 --warmup 2); fi
  step model-480p 200 90 "$PY" -m scripts.bench_model "${args[@]}" --frameworks jax,torch,torch-compile \
    --worker-timeout 150 --json "$OUT/wan_forward_jax_vs_torch_1.3b_480p.json"
fi

if [[ -n "${WANT[model-720p]}" ]]; then
  # a 14B 720p forward takes 10-20 s: 2 timed after 1 untimed
  if (( TINY )); then args=(--tiny --reps 2 --warmup 1); else args=(--cases 14b-720p --reps 2 --warmup 1); fi
  step model-720p 160 100 "$PY" -m scripts.bench_model "${args[@]}" --frameworks jax,torch \
    --worker-timeout 100 --json "$OUT/wan_forward_jax_vs_torch_14b_720p.json"
fi

if [[ -n "${WANT[hunyuan]}" ]]; then
  # a 720p forward is ~20 s dense: one timed call each (after ahead-of-time compilation)
  if (( TINY )); then args=(--tiny --reps 2 --warmup 1); else args=(--reps 3 --warmup 1); fi
  step hunyuan 200 90 "$PY" -m scripts.bench_hunyuan "${args[@]}" --model-reps 1 --model-warmup 0 \
    --json "$OUT/hunyuan_720p_attention_and_forward.json"
fi

if [[ -n "${WANT[kernel-density]}" ]]; then
  # docs/performance.md's efficiency table: the fixed budgets, no floor, both CTA orders
  if (( TINY )); then args=(--dry-run --densities 0.1,0.3 --reps 1 --kmeans-iters 3)
  else args=(--reps 5 --kmeans-iters 20); fi
  step kernel-density 420 120 "$PY" -m scripts.bench_kernel "${args[@]}" --top-ps "" \
    --tunings 192:32:2,192:32:2:inorder --json "$OUT/kernel_kv192_efficiency_vs_density.json"
fi

if [[ -n "${WANT[e2e-720p]}" ]]; then
  if (( TINY )); then args=(--tiny --steps 5); else args=(); fi
  step e2e-720p 420 150 "$PY" -m scripts.bench_e2e "${args[@]}" --parts 14b-720p \
    --json "$OUT/e2e_wan14b_720p_projected.json"
fi

if [[ -n "${WANT[e2e-480p]}" ]]; then
  if (( TINY )); then args=(--tiny --steps 5); else args=(); fi
  step e2e-480p 420 150 "$PY" -m scripts.bench_e2e "${args[@]}" --parts 1.3b-480p \
    --json "$OUT/e2e_wan1.3b_480p_loop.json"
fi

{
  echo
  echo "== headline figures"
  timeout 20 "$PY" -m scripts.headline_figures "$OUT"/*.json
  echo
  echo "== steps (total $(( SECONDS - START )) s of ${BUDGET_S} s)"
  echo "| step           | status (commands: in the log) |     s |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
} 2>&1 | tee -a "$LOG"
exit "$FAILED"
