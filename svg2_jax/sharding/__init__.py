"""Many devices and many hosts with `jax.sharding`: meshes, logical partition names and
their rules, sequence-parallel activations, head-parallel (Ulysses) attention with
density-balanced heads, CFG parallel, and multi-host start-up (module docstrings say
how each part works; `MeshPlan` ties them together).
"""

from svg2_jax.sharding.activations import TokenSharding, constrain_tokens, token_sharding
from svg2_jax.sharding.balance import balance_report, balanced_order, imbalance
from svg2_jax.sharding.mesh import AXES, CFG, SEQ, MeshPlan, make_mesh, parse_mesh
from svg2_jax.sharding.rules import (EMBED, HEADS, LAYERS, MLP, bytes_per_device,
                                     default_rules, param_shardings, partition_spec)
from svg2_jax.sharding.ulysses import UlyssesAttention, UlyssesState

__all__ = ["AXES", "CFG", "EMBED", "HEADS", "LAYERS", "MLP", "SEQ", "MeshPlan",
           "TokenSharding", "UlyssesAttention", "UlyssesState", "balance_report",
           "balanced_order", "bytes_per_device", "constrain_tokens", "default_rules",
           "imbalance", "make_mesh", "param_shardings", "parse_mesh", "partition_spec",
           "token_sharding"]
