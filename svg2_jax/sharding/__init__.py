"""Many devices and many hosts with `jax.sharding`: meshes, logical partition names and
their rules, sequence-parallel activations, head-parallel (Ulysses) attention with
density-balanced heads, CFG parallel, and multi-host start-up.
"""
