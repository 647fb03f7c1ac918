"""Test helpers both model families use (Wan and HunyuanVideo parity / converter tests,
torch-free runs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCH_MODULES = ("torch", "transformers", "diffusers")


def run_torch_free(code: str, timeout: int = 300) -> str:
    """Runs `code` in a fresh interpreter (this checkout first on its path) and asserts it
    exits 0 having imported none of TORCH_MODULES; returns its stdout."""
    code += (f"\nimport sys\nleaked = [m for m in {TORCH_MODULES!r} if m in sys.modules]\n"
             "assert not leaked, f'imported {leaked}'\nprint('torch-free: ok')\n")
    # posix_spawn (no cwd, no close_fds), not fork: JAX warns about forking this process
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=timeout, close_fds=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and "torch-free: ok" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-4000:])
    return result.stdout


@pytest.fixture
def no_model_work(monkeypatch):
    """Fails the test if svg2-generate gets as far as building or loading its DiT."""
    from svg2_jax.cli import generate

    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before the problem was found")

    monkeypatch.setattr(generate, "_model", forbidden)


def make_saved_fixture(tiny: dict, torch_model, torch_forward, inputs):
    """A module-scoped fixture `saved(kind)` -> (diffusers model, its saved directory,
    reference output on `inputs(config)`), built once per kind from the `tiny` configs."""

    @pytest.fixture(scope="module")
    def saved(tmp_path_factory):
        cache = {}

        def get(kind):
            if kind not in cache:
                config = tiny[kind]
                model = torch_model(config)
                path = tmp_path_factory.mktemp(kind) / "transformer"
                model.save_pretrained(path, safe_serialization=True)
                cache[kind] = (model, path, torch_forward(model, inputs(config)))
            return cache[kind]

        return get

    return saved


def torch_layout(ours: dict, targets: dict) -> dict:
    """Our flat parameters ("a.b.c" -> array) -> diffusers keys in torch layout, inverting
    the converter's plan (`targets`: diffusers key -> Target, from `expected_keys`)."""
    out = {}
    for key, target in targets.items():
        value = ours[".".join(target.path)]
        if target.layer is not None:
            value = value[target.layer]
        if target.transform == "transpose":
            value = value.T
        elif target.transform == "conv":
            value = value.T.reshape(target.source_shape)
        elif target.transform == "conv_kernel":  # [*window, I, O] -> [O, I, *window]
            value = value.transpose(value.ndim - 1, value.ndim - 2, *range(value.ndim - 2))
        out[key] = value
    return out
