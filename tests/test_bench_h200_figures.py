"""scripts/h200_figures.sh (the recipe of the H200 figures) on the CPU with a stand-in
interpreter that records its arguments: which benchmark each part runs, with what, where
the files go, the budget's skips and the exit codes. (The benchmarks' own CPU paths are
tested in the other test_bench_* files.)"""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "h200_figures.sh")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _run(tmp_path, *parts, **env):
    tmp_path.mkdir(parents=True, exist_ok=True)
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    run_env = dict(os.environ, OUT=str(out), PYTHON=str(fake), BUDGET_S="1000", TINY="0")
    run_env.update(env)
    proc = subprocess.run(["bash", SCRIPT, *parts], cwd=REPO, env=run_env,
                          capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    # "-": the version listing; "-c import xdist": whether pytest can run in parallel
    return proc, [line for line in lines if line not in ("-", "-c import xdist")], out


def test_syntax():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_all_runs_every_benchmark_in_order_into_out(tmp_path):
    proc, calls, out = _run(tmp_path, "all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = [c.split()[1] for c in calls]
    assert modules == ["pytest", "scripts.bench_overhead", "scripts.bench_overhead",
                       "scripts.bench_kernel",
                       "scripts.bench_model", "scripts.bench_model", "scripts.bench_hunyuan",
                       "scripts.headline_figures"]
    assert calls[0].startswith("-m pytest -q -m gpu tests/test_sparse_kernel.py "
                               "tests/test_pallas_kmeans.py -x")
    assert calls[0].endswith("-n 4")  # the stand-in imports anything, xdist too
    jsons = [c.split("--json ")[1].split()[0] for c in calls if "--json" in c]
    assert len(jsons) == 6 and all(os.path.dirname(j) == str(out) for j in jsons)
    # one file per resolution; the O(S^2) reference row only at 480p
    assert "--shapes 75600x40 --impls pallas" in calls[1] and "--no-jax-reference" in calls[1]
    assert jsons[0].endswith("overhead_vs_dense_720p.json")
    assert "--shapes 32760x12 --impls pallas" in calls[2] and "--no-jax" not in calls[2]
    assert jsons[1].endswith("overhead_vs_dense_480p.json")
    assert "--top-ps 0.9" in calls[3] and "--min-clusters 100" in calls[3]
    assert "--cases 1.3b-480p" in calls[4] and "jax,torch,torch-compile" in calls[4]
    assert "--cases 14b-720p --reps 2 --warmup 1" in calls[5]
    assert (out / "h200_figures.log").exists()
    table = proc.stdout[proc.stdout.index("== steps"):]
    assert table.count("| ok ") == 7
    # at most 8 files come back from the machine, none in a folder
    assert len(jsons) + 1 <= 8


def test_tiny_uses_the_cpu_paths(tmp_path):
    proc, calls, _ = _run(tmp_path, "overhead", "kernel", "model", "hunyuan", TINY="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bench = [c for c in calls if "scripts.bench_" in c]
    assert len(bench) == 6
    assert "--dry-run" in bench[2]
    assert all("--tiny" in c for i, c in enumerate(bench) if i != 2)
    assert "--compile-backend eager" in bench[3]


def test_the_other_sections_parts(tmp_path):
    proc, calls, out = _run(tmp_path, "e2e-480p", "kernel-density", "e2e-720p")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kernel, e720, e480 = calls[:3]
    assert kernel.startswith("-m scripts.bench_kernel --reps 5 --kmeans-iters 20 --top-ps  ")
    assert "--tunings 192:32:2,192:32:2:inorder" in kernel
    assert "--parts 14b-720p" in e720 and "--parts 1.3b-480p" in e480
    proc, calls, _ = _run(tmp_path / "tiny", "kernel-density", "e2e-720p", TINY="1")
    assert "--dry-run" in calls[0] and "--tiny --steps 5" in calls[1]


def test_headline_figures_reads_every_kept_benchmark_file(capsys):
    """The summary table reads the raw data kept in docs/bench, older files too."""
    from scripts import headline_figures
    bench = os.path.join(REPO, "docs", "bench")
    paths = sorted(os.path.join(bench, f) for f in os.listdir(bench) if f.endswith(".json"))
    assert headline_figures.main(paths) == 0
    printed = capsys.readouterr().out
    assert "unreadable" not in printed
    assert "| 75600x40 | density 0.13 (floor 0) | heaviest first | 0.131 | 33.967 |" in printed
    assert "| 1.3b-480p | svg2_shared, density 0.146 | 36.31 | 1.42 |" in printed


def test_parts_run_in_order_and_the_budget_skips(tmp_path):
    proc, calls, _ = _run(tmp_path, "hunyuan", "check")
    assert proc.returncode == 0
    assert [c.split()[1] for c in calls][:2] == ["pytest", "scripts.bench_hunyuan"]
    proc, calls, _ = _run(tmp_path / "b", "overhead", "model", BUDGET_S="30")
    assert proc.returncode == 1  # something did not run: the caller must see it
    assert [c.split()[1] for c in calls] == ["scripts.headline_figures"]
    # overhead-720p, overhead-480p, model-480p, model-720p
    assert proc.stdout.count("skipped: ") == 4


def test_one_overhead_resolution(tmp_path):
    proc, calls, out = _run(tmp_path, "overhead-480p")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c.split()[1] for c in calls] == ["scripts.bench_overhead", "scripts.headline_figures"]
    assert f"--json {out}/overhead_vs_dense_480p.json" in calls[0]


def test_bad_calls(tmp_path):
    proc, _, _ = _run(tmp_path, "kernels")
    assert proc.returncode == 2 and "unknown part 'kernels'" in proc.stderr
    proc, _, _ = _run(tmp_path)
    assert proc.returncode == 2
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", SCRIPT, "check"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "OUT" in proc.stderr
