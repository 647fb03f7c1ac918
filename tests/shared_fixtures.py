"""Test helpers both model families use (Wan and HunyuanVideo parity / converter tests)."""

import pytest


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
