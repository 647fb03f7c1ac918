"""Reading checkpoints, for every model family: tensor sources (`TensorSource`: safetensors,
torch state dict files), key maps (ours <-> diffusers <-> official; ours <-> transformers
for the text encoders), the validated `Plan`,
streaming into device arrays, our orbax directories, and the generic `load_model`.

Each family supplies a `ModelFamily` (svg2_jax/models/<family>/load.py) with its key
tables (svg2_jax/models/<family>/keys.py). Writing checkpoints is `convert/`'s job.
"""

from svg2_jax.checkpoints.family import ModelFamily, abstract_state
from svg2_jax.checkpoints.keymap import (KeyMap, RenamedSource, Target, detect_layout,
                                         expected_keys, layout_view)
from svg2_jax.checkpoints.load import checkpoint_config, load_model
from svg2_jax.checkpoints.orbax_io import STATE_DIR, read_orbax_meta, restore_orbax
from svg2_jax.checkpoints.plan import Plan, count_reads, make_plan
from svg2_jax.checkpoints.safetensors_source import SafetensorsSource
from svg2_jax.checkpoints.sources import SOURCES, open_source
from svg2_jax.checkpoints.stream import iter_leaves, nest, to_device_flat, to_device_tree
from svg2_jax.checkpoints.tensor_source import Rows, TensorSource
from svg2_jax.checkpoints.torch_source import TorchCheckpointSource

__all__ = ["KeyMap", "ModelFamily", "Plan", "RenamedSource", "Rows", "SOURCES", "STATE_DIR",
           "SafetensorsSource", "Target", "TensorSource", "TorchCheckpointSource",
           "abstract_state", "checkpoint_config", "count_reads", "detect_layout",
           "expected_keys", "iter_leaves", "layout_view", "load_model", "make_plan", "nest",
           "open_source", "read_orbax_meta", "restore_orbax", "to_device_flat",
           "to_device_tree"]
