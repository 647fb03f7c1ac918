"""What the Wan and HunyuanVideo VAE tests share: tiny random diffusers VAEs saved and
converted through our converter, and the converter checks every family gets."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from shared_fixtures import torch_layout
from test_wan_helpers import rel_err, same_params, torch  # noqa: F401  (re-exported)

from svg2_jax.checkpoints import abstract_state, expected_keys

TOL = 1e-4  # fp32 parity with the PyTorch original


def random_torch_vae(cls, config, seed: int = 0):
    """A diffusers VAE of `config` (fp32, eval) with every parameter perturbed, norm scales
    and biases included, so no parameter keeps its structured initial value."""
    torch.manual_seed(seed)
    model = cls(**config.to_diffusers()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_and_convert(model, root, convert_to_orbax, config):
    """model.save_pretrained(root / "vae") (safetensors), then our converter to root / "orbax".
    Returns (diffusers directory, orbax directory)."""
    diffusers_dir, orbax_dir = root / "vae", root / "orbax"
    model.save_pretrained(diffusers_dir, safe_serialization=True)
    report = convert_to_orbax(diffusers_dir, "diffusers", config, orbax_dir)
    assert report.tensors == len(model.state_dict()) and report.ignored == []
    return diffusers_dir, orbax_dir


def save_numpy(sd: dict, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


def check_strict_errors(family, convert_to_orbax, load, model, config, tmp_path, *,
                        drop: str, resize: str):
    """As for the DiTs: a missing, an unexpected and a mis-shaped tensor are all listed in
    one ValueError, by the converter (which leaves nothing behind) and by the direct load."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    bad = dict(sd)
    del bad[drop]
    bad["encoder.extra.weight"] = np.zeros((3,), np.float32)
    want = bad[resize].shape
    bad[resize] = np.zeros((want[0] + 1, *want[1:]), np.float32)
    src = save_numpy(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError) as err:
        convert_to_orbax(src, "diffusers", config, tmp_path / "out")
    msg = str(err.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg and family.name in msg
    assert drop in msg and "encoder.extra.weight" in msg
    assert f"{resize}: checkpoint {(want[0] + 1, *want[1:])}, model expects {want}" in msg
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors"]
    with pytest.raises(ValueError, match="1 missing, 1 unexpected, 1 shape mismatches"):
        load(src, config)
    with pytest.raises(ValueError, match="unknown source layout"):
        convert_to_orbax(src, "wan", config, tmp_path / "out")
    other = save_numpy({"blocks.0.weight": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=f"not the diffusers {family.name} layout"):
        load(other, config)


def check_round_trip(family, load, model, diffusers_dir, orbax_dir, ours, config):
    """`ours` (loaded from the orbax checkpoint with `config`) holds exactly the diffusers
    tensors (conv kernels moved back to torch's layout); the direct diffusers load equals
    it; the stored config is `config`, and `preset=None` reads it from either checkpoint."""
    assert same_params(ours, load(orbax_dir)) and same_params(ours, load(diffusers_dir))
    meta = json.loads((orbax_dir / family.config_file).read_text())
    assert family.config_cls.from_diffusers(meta["config"]) == config
    flat = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx_flat(ours)}
    _, abstract = abstract_state(family, config, jnp.float32)
    back = torch_layout(flat, expected_keys(family.keys, config, abstract))
    sd = model.state_dict()
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def nnx_flat(model):
    from flax import nnx

    return nnx.to_flat_state(nnx.state(model))


def check_preset_shapes(family, cls, preset_config):
    """Our expected keys and torch-layout shapes for a preset equal diffusers' model's
    (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        theirs = cls(**preset_config.to_diffusers())
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    _, abstract = abstract_state(family, preset_config, jnp.float32)
    got = {k: t.source_shape for k, t in expected_keys(family.keys, preset_config,
                                                        abstract).items()}
    assert got == want
    return sum(int(np.prod(s)) for s in want.values())
