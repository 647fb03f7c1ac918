"""The device mesh and the plan that runs a model and its sampler on it.

Axes: `cfg` (1, or 2 for CFG parallel: the conditional and unconditional passes on two
device groups) x `sp` (sequence parallel outside attention, head parallel inside it).
The sequence axis is the inner one, so on a multi-host machine the all-to-all heavy axis
stays within a host when it fits there; weights are split over both (`rules`).

    plan = MeshPlan(make_mesh(sp=4, cfg=2))          # or parse_mesh("sp=4,cfg=2")
    model = wan.load(path, preset, mesh=plan.mesh)   # every weight onto its shard
    sampler = WanSampler(model, scheduler, config, mesh=plan)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from svg2_jax.sharding.activations import TokenSharding, token_sharding
from svg2_jax.sharding.rules import Rules, default_rules, param_shardings
from svg2_jax.sharding.ulysses import UlyssesAttention, concat_batch, split_batch

CFG, SEQ = "cfg", "sp"
AXES = (CFG, SEQ)


def make_mesh(sp: int, cfg: int = 1, devices=None) -> Mesh:
    """A (cfg, sp) mesh over the first cfg x sp of `devices` (default: every device of
    every process, `jax.devices()`; multi-host: after `jax.distributed.initialize`)."""
    devices = jax.devices() if devices is None else list(devices)
    if cfg not in (1, 2):
        raise ValueError(f"the cfg axis has 1 device group (no CFG parallel) or 2 (the "
                         f"conditional and unconditional passes apart), got cfg={cfg}")
    if sp < 1 or sp * cfg > len(devices):
        raise ValueError(f"a mesh of cfg={cfg} x sp={sp} needs {cfg * sp} devices, "
                         f"{len(devices)} available")
    return Mesh(np.asarray(devices[:cfg * sp], dtype=object).reshape(cfg, sp), AXES)


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """What a mesh spec ("sp=4,cfg=2[,balance=0]", the --mesh flag) asks for: sp (None:
    every device left after cfg), cfg (1 or 2), balance (None: not given, i.e. on)."""

    sp: int | None = None
    cfg: int = 1
    balance: bool | None = None


def parse_mesh_spec(spec: str) -> MeshSpec:
    """"sp=4,cfg=2[,balance=0]" -> MeshSpec; ValueError saying what is wrong (no device
    is looked at: the spec's own sense only)."""
    expected = "expected comma-separated sp=N (N >= 1), cfg=1|2, balance=0|1"
    fields: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = (x.strip() for x in part.partition("="))
        if name not in ("sp", "cfg", "balance") or not value.isdigit():
            raise ValueError(f"bad mesh spec {spec!r}: {expected}, got {part!r}")
        if name in fields:
            raise ValueError(f"bad mesh spec {spec!r}: {name} given twice")
        fields[name] = int(value)
    if not fields:
        raise ValueError(f"bad mesh spec {spec!r}: {expected}")
    if fields.get("sp", 1) < 1 or fields.get("cfg", 1) not in (1, 2) or fields.get(
            "balance", 0) not in (0, 1):
        raise ValueError(f"bad mesh spec {spec!r}: {expected}")
    balance = fields.get("balance")
    return MeshSpec(sp=fields.get("sp"), cfg=fields.get("cfg", 1),
                    balance=None if balance is None else bool(balance))


def parse_mesh(spec: str, devices=None) -> "MeshPlan":
    """"sp=4,cfg=2[,balance=0]" -> MeshPlan (the --mesh flag, `parse_mesh_spec`) over
    `devices` (default `jax.devices()`). sp defaults to every device left after cfg;
    balance (density-balanced heads) defaults to on."""
    want = parse_mesh_spec(spec)
    count = len(jax.devices() if devices is None else devices)
    sp = want.sp if want.sp is not None else max(count // want.cfg, 1)
    return MeshPlan(make_mesh(sp, want.cfg, devices), balance=want.balance is not False)


def attention_state(model, batch: int, plan: "MeshPlan | None" = None, abstract: bool = False):
    """`model.init_attention_state(batch)`: on `plan`'s mesh made on its devices (each
    device its own heads); abstract=True: only its `jax.ShapeDtypeStruct`s (with their
    shardings on a mesh), for `.lower()` without memory."""
    make = lambda: model.init_attention_state(batch)
    if plan is not None:
        return plan.init_state(model.attention, make, abstract)
    return jax.eval_shape(make) if abstract else make()


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """How a model and its sampler run on `mesh` (axes `cfg`, `sp`): weights by `rules`
    (None: `default_rules`, every weight split over all devices along the model width),
    head-parallel attention, and with balance=True heads reassigned every step by the
    previous step's measured density."""

    mesh: Mesh
    rules: Rules | None = None
    balance: bool = True

    def __post_init__(self):
        if tuple(self.mesh.axis_names) != AXES:
            raise ValueError(f"MeshPlan: the mesh axes must be {AXES} (make_mesh), got "
                             f"{tuple(self.mesh.axis_names)}")

    @property
    def sp(self) -> int:
        return self.mesh.shape[SEQ]

    @property
    def cfg_parallel(self) -> bool:
        return self.mesh.shape[CFG] == 2

    def describe(self) -> dict:
        return dict(devices=self.mesh.size, cfg=self.mesh.shape[CFG], sp=self.sp,
                    balance=self.balance, processes=jax.process_count())

    # -- parameters ----------------------------------------------------------------------
    def param_shardings(self, state: nnx.State) -> dict:
        """{flat path: NamedSharding} of a model state (`rules.param_shardings`)."""
        return param_shardings(state, self.mesh, self.rules)

    def shard_state(self, state: nnx.State) -> nnx.State:
        """The state with every parameter on its shards (from wherever it is now); an
        abstract state (`jax.ShapeDtypeStruct`s) gets the shardings attached instead."""
        shardings = self.param_shardings(state)

        def place(path, v):
            where, value = shardings[tuple(str(p) for p in path)], v.get_value()
            if isinstance(value, jax.ShapeDtypeStruct):
                return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=where)
            return jax.device_put(value, where)
        return nnx.from_flat_state([(path, v.replace(place(path, v)))
                                    for path, v in nnx.to_flat_state(state)])

    def init_model(self, make):
        """The model `make()` builds (random weights), built inside one jit whose outputs
        are the parameters' shards: each device computes only its own slices, no device
        ever holds a whole parameter it does not keep."""
        graphdef, abstract = nnx.split(nnx.eval_shape(make))
        shardings = nnx.to_pure_dict(self.shard_state(abstract))
        shardings = jax.tree.map(lambda x: x.sharding, shardings)
        pure = jax.jit(lambda: nnx.to_pure_dict(nnx.split(make())[1]),
                       out_shardings=shardings)()
        nnx.replace_by_pure_dict(abstract, pure)
        return nnx.merge(graphdef, abstract)

    def prepare(self, model):
        """`model` (changed in place and returned) ready for this mesh: its attention
        head parallel (`attention`), its parameters on their shards."""
        model.attention = self.attention(model.attention)
        nnx.update(model, self.shard_state(nnx.state(model)))
        return model

    def attention(self, inner) -> UlyssesAttention:
        """`inner` head parallel on this mesh (an already wrapped one is re-targeted)."""
        if isinstance(inner, UlyssesAttention):
            inner = inner.inner
        return UlyssesAttention(inner, self.mesh, SEQ, CFG, self.balance)

    # -- the sampler (svg2_jax.sampling.make_sampler(..., sharding=plan)) ----------------
    def check_sampler(self, attention, config):
        """Raises when the sampler `config` cannot run on this mesh."""
        if not isinstance(attention, UlyssesAttention) or attention.mesh != self.mesh:
            raise ValueError("the sampler's attention is not head parallel on this mesh: "
                             "prepare the model with MeshPlan.prepare (or pass mesh= to the "
                             "pipeline's sampler)")
        if self.cfg_parallel and not config.cfg:
            raise ValueError("the mesh has cfg=2 (CFG parallel) but the sampler runs no "
                             "unconditional pass (guidance_scale=1, e.g. HunyuanVideo's "
                             "embedded guidance): use a mesh with cfg=1")
        stateful = jax.eval_shape(lambda: attention.inner.init_state(1, 1, 1, 8)) is not None
        if self.cfg_parallel and config.share_cfg_cache and stateful:
            raise ValueError("CFG parallel runs the two passes at once on separate devices, "
                             "each with its own centroid cache: set SamplerConfig("
                             "share_cfg_cache=False) (svg2-generate: --separate-cfg-cache)")

    def model_fn(self, model_fn):
        """model_fn traced with sequence-parallel activations (`activations`)."""
        rule = TokenSharding(self.mesh, CFG, SEQ)

        def sharded(*args, **kwargs):
            with token_sharding(rule):
                return model_fn(*args, **kwargs)
        return sharded

    def init_state(self, attention: UlyssesAttention, make, abstract: bool = False):
        """The attention state `make()` builds, made on its devices (each device its own
        heads), or with abstract=True its `jax.ShapeDtypeStruct`s with their shardings
        (for `.lower()` without memory)."""
        shape = jax.eval_shape(make)
        if shape is None:
            return None
        shardings = attention.state_shardings(shape)
        if abstract:
            return jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                      sharding=where),
                                shape, shardings)
        return jax.jit(make, out_shardings=shardings)()

    def constrain_state(self, attention: UlyssesAttention, state):
        """The stacked attention state pinned to its shardings (heads over `sp`)."""
        if state is None:
            return None
        return jax.lax.with_sharding_constraint(state, attention.state_shardings(state))

    def replicated(self, tree):
        """`tree` pinned whole on every device of the mesh."""
        return jax.lax.with_sharding_constraint(tree, NamedSharding(self.mesh, PartitionSpec()))

    def pair_state(self, attention, state):
        """CFG parallel: one state for the [conditional; unconditional] batch."""
        return None if state is None else concat_batch(attention, state, state)

    def unpair_state(self, attention, state):
        return (None, None) if state is None else split_batch(attention, state)

    def batch_sharding(self, batch: int) -> NamedSharding:
        """The [conditional; unconditional] batch over the cfg axis (when it divides)."""
        split = self.cfg_parallel and batch % 2 == 0
        return NamedSharding(self.mesh, PartitionSpec(CFG if split else None))
