"""Multi-device checks, each run by tests/test_sharding.py in its own process with 8 forced
host devices (the test process has one: jax fixes the device count at its first import).
Every check raises AssertionError on a mismatch. Run one by hand with:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -c \\
        "import sharding_checks as c; c.wan_forward()"       # from tests/
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from svg2_jax import SVG2Config
from svg2_jax.layer_attention import DenseAttention, SVG2Attention
from svg2_jax.sharding.mesh import MeshPlan, make_mesh
from svg2_jax.sharding.rules import bytes_per_device

# masked_dense: the quickest sparse backend to compile (what is checked here is everything
# around it: clustering, selection, heads on devices)
SVG2 = SVG2Config(num_q_clusters=4, num_k_clusters=8, top_p=0.6, kmeans_iters_cold=6,
                  backend="masked_dense", kmeans_impl="xla")
# layer 0 dense, the others SVG2: one forward covers both paths
ATTENTION = SVG2Attention(SVG2, dense_layers=(0,))
# (sp, cfg) per family: each family on 2, 4 and 8 devices, with and without CFG parallel;
# together every one of the six (a family's forward compiles once per mesh: the lean half)
MESHES = {"wan": ((2, 1), (2, 2), (8, 1)),   # 8: 6 heads padded to 8 slots, 30 tokens to 32
          "hunyuan": ((1, 2), (4, 1), (4, 2))}


def close(a, b, what, rel=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= rel, f"{what}: relative error {err:.2e} > {rel}"


def wan_model(attention=ATTENTION):
    from svg2_jax.models.wan import WanConfig, WanTransformer3DModel

    config = WanConfig(num_attention_heads=6, attention_head_dim=8, in_channels=4,
                       out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)
    return lambda: WanTransformer3DModel(config, attention=attention, dtype=jnp.float32,
                                         param_dtype=jnp.float32, rngs=nnx.Rngs(0))


def hunyuan_model(attention=ATTENTION):
    from svg2_jax.models.hunyuan import HunyuanVideoConfig, HunyuanVideoTransformer3DModel

    config = HunyuanVideoConfig(in_channels=4, out_channels=4, num_attention_heads=6,
                                attention_head_dim=8, num_layers=1, num_single_layers=1,
                                num_refiner_layers=1, text_embed_dim=24,
                                pooled_projection_dim=20, rope_axes_dim=(2, 2, 4))
    return lambda: HunyuanVideoTransformer3DModel(config, attention=attention,
                                                  dtype=jnp.float32, param_dtype=jnp.float32,
                                                  rngs=nnx.Rngs(0))


def _normal(seed, shape):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def wan_inputs(seed):
    """One sample: latents [1, 4, 2, 6, 10] (30 tokens: not a multiple of 4 or 8, so the
    exchange pads them), t, text."""
    return (_normal(seed, (1, 4, 2, 6, 10)), jnp.full((1,), 700.0), _normal(seed + 1, (1, 5, 16)))


def hunyuan_inputs(seed):
    """One sample: 32 video + 8 text tokens, 5 of them real."""
    return (_normal(seed, (1, 4, 2, 8, 8)), jnp.full((1,), 700.0), _normal(seed + 1, (1, 8, 24)),
            (jnp.arange(8)[None] < 5).astype(jnp.int32), _normal(seed + 2, (1, 20)),
            jnp.full((1,), 6000.0))


def _forward(family):
    """forward(graphdef, params, *inputs, state) of the family."""
    from svg2_jax.models.hunyuan import hunyuan_forward
    from svg2_jax.models.wan import wan_forward
    f = wan_forward if family == "wan" else hunyuan_forward
    return lambda gd, p, *a, state: f(gd, p, *a, state)


def check_param_sharding(plan: MeshPlan, params):
    """Every parameter holds exactly its shard on each device; the block weights are
    split over every device."""
    want = {}
    for path, v in nnx.to_flat_state(params):
        x = v.get_value()
        per = int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for d in x.sharding.device_set:
            want[d] = want.get(d, 0) + per
    have = bytes_per_device(params)
    assert have == want and len(have) == plan.mesh.size, (have, want)
    total = sum(v.get_value().nbytes for _, v in nnx.to_flat_state(params))
    n = plan.mesh.size
    assert max(have.values()) < total / n + 0.35 * total, (have, total)  # norms stay whole
    for path, v in nnx.to_flat_state(params):
        if path[-2:] in (("to_q", "kernel"), ("proj_in", "kernel")) and "blocks" in path[0]:
            x = v.get_value()
            assert x.sharding.shard_shape(x.shape)[1] == x.shape[1] // n, (path, x.sharding)


def sharded_forward_equals(family: str):
    """Forward, cold then warm (the cold call's state), on the family's MESHES against
    the single-device forward; with CFG parallel the batch [a; b] is split over the two
    cfg groups and each half must equal its own single-device call."""
    make = wan_model() if family == "wan" else hunyuan_model()
    inputs = wan_inputs if family == "wan" else hunyuan_inputs
    fwd = _forward(family)
    model = make()
    graphdef, params = nnx.split(model)
    heads = model.config.num_attention_heads
    single = jax.jit(functools.partial(fwd, graphdef))

    def reference(x):
        cold = single(params, *x, state=model.init_attention_state(1))
        warm = single(params, *x, state=cold[1])
        return cold, warm

    refs = [reference(inputs(s)) for s in (0, 10)]
    for sp, cfg in MESHES[family]:
        plan = MeshPlan(make_mesh(sp, cfg), balance=False)
        if sp * cfg == 8:
            made = nnx.state(plan.init_model(make))  # made on the devices, on their shards
            check_param_sharding(plan, made)
            for (path, a), (_, b) in zip(nnx.to_flat_state(made), nnx.to_flat_state(params)):
                close(a.get_value(), b.get_value(), f"init_model {path}", rel=1e-6)
        sharded = plan.prepare(nnx.merge(graphdef, params))  # the reference's weights
        gd, sp_params = nnx.split(sharded)
        check_param_sharding(plan, sp_params)
        batch = (inputs(0) if cfg == 1 else
                 jax.tree.map(lambda a, b: jnp.concatenate([a, b]), inputs(0), inputs(10)))
        run = jax.jit(plan.model_fn(functools.partial(fwd, gd)))
        state = plan.init_state(sharded.attention,
                                lambda: sharded.init_attention_state(cfg))
        for call in ("cold", "warm"):
            out, state, density = run(sp_params, *batch, state=state)
            for half, ref in enumerate(refs[:cfg]):
                want = ref[0] if call == "cold" else ref[1]
                rows = slice(half, half + 1)
                what = f"{family} sp={sp} cfg={cfg} {call} sample {half}"
                close(out[rows], want[0], what + " output")
                close(density[:, rows], want[2], what + " density", rel=1e-6)
                # the slots hold the heads in order (balance off): centroids per head
                close(state.inner.cache.k_centroids[:, rows, :heads],
                      want[1].cache.k_centroids, what + " centroids")
        print(f"{family} sp={sp} cfg={cfg}: equal", flush=True)


def wan_forward():
    sharded_forward_equals("wan")


def hunyuan_forward():
    sharded_forward_equals("hunyuan")


def sampler():
    """The compiled loop on meshes equals the single-device loop, with one model and with
    two experts; density-balanced heads move heads (the final order is not the contiguous
    one) without changing results."""
    from svg2_jax.pipelines.hunyuan import HunyuanSampler
    from svg2_jax.pipelines.wan import WanSampler
    from svg2_jax.sampling import FlowMatchEuler, SamplerConfig
    from svg2_jax.sharding.balance import identity_order

    config = SamplerConfig(num_steps=4, guidance_scale=3.0, dense_fraction=0.25,
                           share_cfg_cache=False, progress=False)
    latents, _, context = wan_inputs(0)
    uncond = _normal(7, context.shape)
    runs = {}
    for attention, meshes in ((ATTENTION, ((4, 2, True), (8, 1, False))),
                              (DenseAttention(), ((2, 2, False),))):
        graphdef, params = nnx.split(wan_model(attention)())
        make = lambda: nnx.merge(graphdef, params)
        ref = WanSampler(make(), FlowMatchEuler(shift=3.0), config)(latents, context, uncond)
        for sp, cfg, balance in meshes:
            plan = MeshPlan(make_mesh(sp, cfg), balance=balance)
            res = WanSampler(make(), FlowMatchEuler(shift=3.0), config, mesh=plan)(
                latents, context, uncond)
            what = f"wan loop sp={sp} cfg={cfg} balance={balance} {type(attention).__name__}"
            close(res.latents, ref.latents, what + " latents")
            close(res.density, ref.density, what + " density", rel=1e-6)
            runs[(sp, cfg, balance, type(attention).__name__)] = res
            print(what + ": equal", flush=True)
    for state in runs[(4, 2, True, "SVG2Attention")].attn_state:  # cond, uncond
        order = np.asarray(state.order)
        assert (order != np.asarray(identity_order(2, 6, 4))).any(), order
        assert sorted(order[1]) == list(range(8)), order  # a permutation of the 8 slots

    # two experts (Wan2.2 A14B's switch at the boundary timestep): each keeps its own
    # heads' placement, balanced by its own steps
    graphdef, params = nnx.split(wan_model()())
    experts = lambda: (nnx.merge(graphdef, params),
                       nnx.merge(graphdef, jax.tree.map(lambda x: 1.1 * x, params)))
    two = dataclasses.replace(config, guidance_scale_2=2.0, boundary_timestep=800.0)
    ref = WanSampler(experts(), FlowMatchEuler(shift=3.0), two)(latents, context, uncond)
    assert np.asarray(ref.expert).tolist() == [0, 0, 1, 1]
    res = WanSampler(experts(), FlowMatchEuler(shift=3.0), two, mesh=MeshPlan(make_mesh(4, 2)))(
        latents, context, uncond)
    close(res.latents, ref.latents, "wan loop two experts sp=4 cfg=2 latents")
    close(res.density, ref.density, "wan loop two experts sp=4 cfg=2 density", rel=1e-6)
    orders = [np.asarray(expert[0].order) for expert in res.attn_state]  # cond state each
    assert (orders[0] != orders[1]).any(), orders  # placed by their own densities
    print("wan loop two experts sp=4 cfg=2: equal", flush=True)

    graphdef, params = nnx.split(hunyuan_model()())
    config = dataclasses.replace(config, guidance_scale=1.0)
    lat, _, text, mask, pooled, _ = hunyuan_inputs(0)
    ref = HunyuanSampler(nnx.merge(graphdef, params), FlowMatchEuler(shift=7.0), config)(
        lat, (text, mask, pooled))
    plan = MeshPlan(make_mesh(4, 1))
    res = HunyuanSampler(nnx.merge(graphdef, params), FlowMatchEuler(shift=7.0), config,
                         mesh=plan)(
        lat, (text, mask, pooled))
    close(res.latents, ref.latents, "hunyuan loop sp=4 latents")
    close(res.density, ref.density, "hunyuan loop sp=4 density", rel=1e-6)
    print("hunyuan loop sp=4: equal", flush=True)


class _Recording(np.ndarray):
    """A numpy array that records the index of every read of it."""

    def __getitem__(self, index):
        self.reads.append(index)
        return np.asarray(super().__getitem__(index))


def load():
    """`load(mesh=)` puts every parameter straight onto its shards (each device is sent
    only its slice), from a diffusers safetensors file and from an orbax directory,
    with the values of the single-device load."""
    import tempfile
    from pathlib import Path

    from safetensors.numpy import save_file

    from convert.wan import convert_to_orbax
    from shared_fixtures import torch_layout
    from svg2_jax.checkpoints import abstract_state, expected_keys
    from svg2_jax.checkpoints.stream import place
    from svg2_jax.models.wan import load as wan_load
    from svg2_jax.models.wan.load import FAMILY

    plan = MeshPlan(make_mesh(4, 2))
    where = jax.sharding.NamedSharding(plan.mesh, jax.sharding.PartitionSpec(None, ("cfg", "sp")))
    host = np.arange(3 * 16, dtype=np.float32).reshape(3, 16).view(_Recording)
    host.reads = []
    placed = place(host, where)
    np.testing.assert_array_equal(placed, np.arange(48).reshape(3, 16))
    assert len(host.reads) == 8 and all(host[i].shape == (3, 2) for i in host.reads[:8])

    model = wan_model()()
    config = model.config
    ours = {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model))}
    _, abstract = abstract_state(FAMILY, config, jnp.float32)
    sd = torch_layout(ours, expected_keys(FAMILY.keys, config, abstract))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(src))
        convert_to_orbax(src, "diffusers", config, Path(tmp) / "orbax", dtype=jnp.float32)
        for path in (src, Path(tmp) / "orbax"):
            loaded = wan_load(path, config, dtype=jnp.float32, mesh=plan)
            shardings = plan.param_shardings(nnx.state(loaded))
            for p, v in nnx.to_flat_state(nnx.state(loaded)):
                x, key = v.get_value(), tuple(map(str, p))
                assert x.sharding == shardings[key], (path, key, x.sharding)
                np.testing.assert_array_equal(np.asarray(x), ours[".".join(key)])
            check_param_sharding(plan, nnx.state(loaded))
            print(f"load {path.name}: sharded and equal", flush=True)


def cli():
    """svg2-generate --mesh sp=4,cfg=2 writes the latents of the single-device run."""
    import json
    import tempfile

    from svg2_jax.cli.generate import main

    with tempfile.TemporaryDirectory() as tmp:
        common = ["--steps", "3", "--separate-cfg-cache", "--no-progress", "--dtype", "float32"]
        main(common + ["--out", f"{tmp}/one.mp4"])
        main(common + ["--out", f"{tmp}/mesh.mp4", "--mesh", "sp=4,cfg=2"])
        close(np.load(f"{tmp}/mesh.latents.npy"), np.load(f"{tmp}/one.latents.npy"),
              "svg2-generate --mesh latents")
        with open(f"{tmp}/mesh.json") as f:
            report = json.load(f)
        mesh = report["mesh"]
        assert (mesh["devices"], mesh["cfg"], mesh["sp"], mesh["balance"]) == (8, 2, 4, True)
        assert len(mesh["head_imbalance_per_step"]) == 3
        with open(f"{tmp}/one.json") as f:
            assert json.load(f)["mesh"] is None


def distributed_worker(process_id: int, port: int):
    """One of two processes (2 host devices each): a tiny forward sharded over the 4
    devices of both (each process holding only its own shards) equals the single-device
    forward of this process."""
    from svg2_jax.models.wan import wan_forward
    from svg2_jax.sharding import distributed

    # short timeouts: a peer that never comes (or dies) ends this process too
    distributed.initialize(f"localhost:{port},2,{process_id}", initialization_timeout=90,
                           heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)
    assert jax.process_count() == 2 and jax.device_count() == 4
    assert jax.local_device_count() == 2
    make = wan_model()
    with jax.default_device(jax.local_devices()[0]):  # this process's own device
        x = wan_inputs(0)
        model = make()
        graphdef, params = nnx.split(model)
        want = jax.jit(functools.partial(wan_forward, graphdef))(
            params, *x, model.init_attention_state(1))
    x = tuple(np.asarray(a) for a in x)  # host values: the same on every process
    plan = MeshPlan(make_mesh(4, 1))
    assert {d.process_index for d in plan.mesh.devices.flat} == {0, 1}
    sharded = plan.prepare(plan.init_model(make))
    gd, sp_params = nnx.split(sharded)
    split = [v.get_value() for _, v in nnx.to_flat_state(sp_params)
             if not v.get_value().is_fully_addressable]
    assert split, "no parameter is spread over both processes"
    state = plan.init_state(sharded.attention, lambda: sharded.init_attention_state(1))
    out, _, density = jax.jit(plan.model_fn(functools.partial(wan_forward, gd)))(
        sp_params, *x, state)
    assert not out.is_fully_addressable  # the output's shards are on both processes
    out, density = distributed.fetch((out, density))
    close(out, want[0], f"process {process_id}: output")
    close(density, want[2], f"process {process_id}: density", rel=1e-6)
    print(f"process {process_id}: equal ({len(split)} parameters split over both "
          f"processes)", flush=True)


if __name__ == "__main__":
    globals()[sys.argv[1]](*map(int, sys.argv[2:]))
