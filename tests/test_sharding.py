"""svg2_jax.sharding: partition rules, head balancing, the head-group contract of SVG2 (in
this process, one device), and the multi-device checks of `sharding_checks.py` (each in a
subprocess with 8 forced host devices: forwards and the sampler loop on meshes against
one device, sharded loading, svg2-generate --mesh, two processes through
jax.distributed, the scaling benchmark's --tiny runs)."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from svg2_jax import SVG2Config, svg2_attention
from svg2_jax import kmeans as km
from svg2_jax.head_group import HeadGroup
from svg2_jax.sharding.balance import (balance_report, balanced_order, device_loads,
                                       identity_order, imbalance)
from svg2_jax.sharding.distributed import parse_distributed
from svg2_jax.sharding.rules import EMBED, HEADS, LAYERS, MLP, logical_names, partition_spec

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
# Host devices for the subprocesses; less LLVM optimisation: these runs are compile-bound
# (every comparison is between two programs compiled alike).
QUICK_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
MESH = AbstractMesh((2, 4), ("cfg", "sp"))
RULES = ((EMBED, ("cfg", "sp")), (HEADS, ("sp",)))


def cpu_env(devices, *paths):
    """The environment of a subprocess on `devices` forced CPU host devices (also on a
    machine with accelerators) importing this checkout (and `paths`)."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([REPO, *paths]),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {QUICK_XLA}")


def run_on_devices(*argv, devices=8, timeout=900):
    """python -m sharding_checks ARGV with `devices` forced host devices; fails the test
    with the output when it fails."""
    env = cpu_env(devices, TESTS)
    result = subprocess.run([sys.executable, "-m", "sharding_checks", *map(str, argv)],
                            cwd=TESTS, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


# ---- rules -------------------------------------------------------------------------------

def test_partition_spec_splits_where_it_divides_and_uses_a_mesh_axis_once():
    spec = lambda names, shape: partition_spec(names, shape, MESH, RULES)
    assert spec((LAYERS, EMBED, HEADS), (40, 5120, 5120)) == P(None, ("cfg", "sp"))
    assert spec((HEADS, EMBED), (5120, 5120)) == P("sp", "cfg")  # sp taken by the heads
    assert spec((LAYERS, EMBED, MLP), (2, 12, 7)) == P(None, "sp")  # 12 % 8: cfg dropped
    assert spec((EMBED,), (6,)) == P()                             # 6 % 4 and 6 % 8
    assert spec(None, (5120,)) == P()
    assert spec((MLP, EMBED), (3, 8)) == P(None, ("cfg", "sp"))


@pytest.mark.parametrize("family", ["wan", "hunyuan"])
def test_every_linear_weight_carries_logical_names(family):
    if family == "wan":
        from svg2_jax.models.wan import WanTransformer3DModel as cls
        from svg2_jax.pipelines.wan import TINY_CONFIG
    else:
        from svg2_jax.models.hunyuan import HunyuanVideoTransformer3DModel as cls
        from svg2_jax.pipelines.hunyuan import TINY_CONFIG
    state = nnx.split(nnx.eval_shape(lambda: cls(TINY_CONFIG, rngs=nnx.Rngs(0))))[1]
    stacked = ("blocks", "transformer_blocks", "single_transformer_blocks", "refiner_blocks")
    for path, v in nnx.to_flat_state(state):
        names = logical_names(v)
        if path[-1] == "kernel":  # every Linear, stacked ones with the layer axis first
            assert names is not None and len(names) == len(v.shape), path
            assert EMBED in names or path[-2] in ("linear_1",), (path, names)
            assert (names[0] == LAYERS) == any(s in map(str, path) for s in stacked), path


# ---- balance -----------------------------------------------------------------------------

def lpt_reference(work, devices):
    """Longest processing time first with a slot limit, in plain Python."""
    per = len(work) // devices
    slots = [[] for _ in range(devices)]
    for h in sorted(range(len(work)), key=lambda i: (-work[i], i)):
        d = min((d for d in range(devices) if len(slots[d]) < per),
                key=lambda d: (sum(work[x] for x in slots[d]), d))
        slots[d].append(h)
    return [h for s in slots for h in s]


@pytest.mark.parametrize("heads,devices", [(8, 4), (24, 8), (40, 16)])
def test_balanced_order_is_lpt_with_a_slot_limit(heads, devices):
    rng = np.random.default_rng(heads)
    hp = -(-heads // devices) * devices
    work = np.concatenate([rng.uniform(0.02, 0.6, heads), np.zeros(hp - heads)])
    order = np.asarray(jax.jit(balanced_order, static_argnums=1)(jnp.asarray(work, jnp.float32),
                                                                devices))
    assert order.tolist() == lpt_reference(work.astype(np.float32).tolist(), devices)
    contiguous = np.arange(hp)
    before = imbalance(work[None], contiguous[None], devices)
    after = imbalance(work[None], order[None], devices)
    assert after <= before and after < 1.25
    loads = device_loads(work[None], order[None], devices)
    np.testing.assert_allclose(loads.sum(), work.sum(), rtol=1e-6)


def test_balance_report_replays_the_loop():
    rng = np.random.default_rng(0)
    density = rng.uniform(0.05, 1.0, (3, 2, 4, 1, 6)).astype(np.float32)  # steps, passes, L, B, H
    report = balance_report(density, 4)
    assert [r["step"] for r in report] == [0, 1, 2]
    assert report[0]["balanced"] == report[0]["contiguous"]  # step 0 runs contiguous
    work = np.pad(density.mean(axis=(1, 3)), ((0, 0), (0, 0), (0, 2)))
    order = jax.vmap(lambda w: balanced_order(w, 4))(jnp.asarray(work[0]))
    assert report[1]["balanced"] == pytest.approx(imbalance(work[1], np.asarray(order), 4))
    assert report[1]["contiguous"] == pytest.approx(
        imbalance(work[1], np.asarray(identity_order(4, 6, 4)), 4))


def test_balance_report_keeps_one_assignment_per_expert():
    rng = np.random.default_rng(1)
    density = rng.uniform(0.05, 1.0, (4, 1, 2, 1, 6)).astype(np.float32)
    density[1, 0, 1, 0, 2] = np.nan  # a non-finite head counts as dense
    one, two = balance_report(density, 4), balance_report(density, 4, expert=[0, 0, 1, 1])
    assert all(np.isfinite([r["balanced"] for r in one]))
    assert two[:2] == one[:2]
    assert two[2]["balanced"] == two[2]["contiguous"]  # expert 1's first step: contiguous
    work = np.pad(np.nan_to_num(density, nan=1.0).mean(axis=(1, 3)), ((0, 0), (0, 0), (0, 2)))
    order = jax.vmap(lambda w: balanced_order(w, 4))(jnp.asarray(work[2]))
    assert two[3]["balanced"] == pytest.approx(imbalance(work[3], np.asarray(order), 4))


# ---- head groups: a call over some heads computes what the call over all heads does -------

def test_random_init_of_some_rows_equals_those_rows_of_all():
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 40, 4))
    key = jax.random.PRNGKey(3)
    every = km.random_init(key, x, 5)
    rows = jnp.array([4, 1, 5])
    some = km.random_init(key, x[rows], 5, rows=rows, num_rows=6)
    np.testing.assert_array_equal(some, every[rows])


def test_svg2_on_permuted_head_subsets_equals_the_call_over_all_heads():
    """Each half of the heads, in any order, with its HeadGroup: the outputs, caches and
    density of the one call over all heads, cold and warm (no early stop here: across
    devices the stopping rule's maximum is a pmax, checked on meshes below)."""
    cfg = SVG2Config(num_q_clusters=4, num_k_clusters=8, top_p=0.7, kmeans_iters_cold=6,
                     kmeans_tol=0.0, backend="jax", kmeans_impl="xla")
    q, k, v = (jax.random.normal(kk, (2, 64, 6, 8)) for kk in
               jax.random.split(jax.random.PRNGKey(1), 3))
    key = jax.random.PRNGKey(5)
    out, cache, stats = svg2_attention(q, k, v, None, cfg, key)
    warm_out, warm_cache, _ = svg2_attention(q, k, v, cache, cfg)
    for ids in (jnp.array([5, 0, 3]), jnp.array([2, 4, 1])):
        sub = lambda x: x[:, :, ids]
        group = HeadGroup(ids, total=6)
        o, c, s = svg2_attention(sub(q), sub(k), sub(v), None, cfg, key, head_group=group)
        np.testing.assert_allclose(o, sub(out), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.q_centroids, cache.q_centroids[:, ids], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(s.density, stats.density[:, ids], rtol=1e-6)
        o, c, _ = svg2_attention(sub(q), sub(k), sub(v), c, cfg, head_group=group)
        np.testing.assert_allclose(o, sub(warm_out), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.k_centroids, warm_cache.k_centroids[:, ids], rtol=1e-5,
                                   atol=1e-6)


def test_kmeans_stops_on_the_given_maximum_of_the_shift():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 50, 4))
    init = km.random_init(jax.random.PRNGKey(1), x, 4)
    alone = km.kmeans(x, init, 30, tol=1e-3)
    assert int(alone.iterations) < 30  # converges early by itself
    held_back = km.kmeans(x, init, 30, tol=1e-3, shift_max=lambda s: s + 1.0)
    assert int(held_back.iterations) == 30  # another device's problems still move


# ---- parsing -----------------------------------------------------------------------------

def test_parse_distributed():
    assert parse_distributed("auto") == {}
    assert parse_distributed("10.0.0.1:1234,2,1") == dict(
        coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
    for bad in ("10.0.0.1,2,1", "h:1,2", "h:1,2,2"):
        with pytest.raises(ValueError, match="--distributed"):
            parse_distributed(bad)


def test_parse_mesh_errors():
    from svg2_jax.sharding.mesh import make_mesh, parse_mesh

    with pytest.raises(ValueError, match="bad mesh spec"):
        parse_mesh("sp=2,tp=2")
    with pytest.raises(ValueError, match="cfg=3"):
        make_mesh(1, 3)
    with pytest.raises(ValueError, match="needs 4 devices"):
        make_mesh(4, 1)  # this process has one device
    plan = parse_mesh("sp=1")
    assert plan.describe()["devices"] == 1 and plan.balance


# ---- on 8 (forced host) devices ---------------------------------------------------------

@pytest.mark.parametrize("check,equal", [
    ("wan_forward", 3),      # forwards on meshes (sharding_checks.MESHES) vs one device
    ("hunyuan_forward", 3),
    ("sampler", 5),          # compiled loops on meshes, balancing moving heads, two experts
    ("load", 2),             # load(mesh=) from safetensors and orbax: sharded and equal
])
def test_on_eight_devices_equals_one_device(check, equal):
    assert run_on_devices(check).count("equal") == equal


def test_generate_cli_on_a_mesh():
    run_on_devices("cli")


def free_localhost_port() -> int:
    try:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            return s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"no TCP port on localhost for jax.distributed's coordinator: {e}")


def run_processes(argvs, env, log_dir, deadline_s):
    """Runs one process per argv at once; returns (return codes, outputs, seconds, which
    were killed). As soon as one fails the others are killed (they would wait for it),
    and at the deadline all are: no process outlives the call."""
    logs = [open(log_dir / f"process{i}.log", "w+") for i in range(len(argvs))]
    procs = [subprocess.Popen(argv, cwd=TESTS, env=env, stdout=log, stderr=subprocess.STDOUT)
             for argv, log in zip(argvs, logs)]
    start = time.monotonic()
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.returncode not in (None, 0) for p in procs)
            if failed or time.monotonic() - start > deadline_s:
                break
            time.sleep(0.2)
    finally:
        killed = [p.poll() is None for p in procs]
        for p, kill in zip(procs, killed):
            if kill:
                p.kill()
            p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return [p.returncode for p in procs], outputs, time.monotonic() - start, killed


def test_two_processes_through_jax_distributed(tmp_path):
    """Two CPU processes with 2 host devices each join through jax.distributed.initialize
    (a coordinator on a free localhost port); a tiny Wan forward sharded over the 4
    devices of both (each process holds half the shards) equals, in each process, the
    single-device forward."""
    env = cpu_env(2, TESTS)
    for attempt in range(2):  # the free port may be taken before the coordinator binds it
        port = free_localhost_port()
        argvs = [[sys.executable, "-m", "sharding_checks", "distributed_worker", str(i),
                  str(port)] for i in range(2)]
        codes, outputs, seconds, killed = run_processes(argvs, env, tmp_path, deadline_s=180)
        if not any("address already in use" in out.lower() for out in outputs):
            break
    report = f"after {seconds:.0f} s:\n" + "\n".join(
        f"--- process {i} (exit {c}{', killed' if k else ''}) ---\n{out[-4000:]}"
        for i, (c, out, k) in enumerate(zip(codes, outputs, killed)))
    for i, (code, out) in enumerate(zip(codes, outputs)):
        assert code == 0 and f"process {i}: equal" in out, report


def test_bench_scaling_tiny(tmp_path):
    timing, memory = tmp_path / "timing.json", tmp_path / "memory.json"
    env = cpu_env(8)
    for extra, path in ((["--cases", "wan14b-720p", "--attention", "svg2", "--devices", "4",
                          "--reps", "2"], timing),
                        (["--memory", "--cases", "hunyuan-720p", "--devices", "1", "8",
                          "--attention", "dense"], memory)):
        result = subprocess.run([sys.executable, "-m", "scripts.bench_scaling", "--tiny",
                                 "--json", str(path), *extra], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    rows = json.loads(timing.read_text())["rows"]
    # 4 devices, CFG parallel off / on, balanced heads off / on
    assert [(r["cfg_parallel"], r["balance"]) for r in rows] == [
        (False, False), (False, True), (True, False), (True, True)]
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["step_ms"] > 0 and r["outputs"]["nonfinite"] == 0 and r["sp"] == (
            2 if r["cfg_parallel"] else 4)
        assert r["total_bytes"] > 0 and 0 < r["density_mean"] <= 1
        assert r["imbalance_balanced"] >= 1 and r["imbalance_contiguous"] >= 1
        assert 0 < r["all_to_all_share"]
        # 2 layers; the passes one after the other, or at once on the two cfg groups
        assert r["all_to_all_layers"] == (2 if r["cfg_parallel"] else 4)
        assert r["timing"]["median_ms"] == r["step_ms"]
    mem = json.loads(memory.read_text())["rows"]
    assert [(r["devices"], r["attention"]) for r in mem] == [(1, "dense"), (8, "dense")]
    assert mem[1]["params_bytes_per_device"] < mem[0]["params_bytes_per_device"] / 4
    assert mem[1]["argument_bytes"] < mem[0]["argument_bytes"] / 2
