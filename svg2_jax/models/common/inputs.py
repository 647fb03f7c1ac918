"""Input checks both DiTs run before tracing: a bad shape is a ValueError naming the model,
the input and what it must be, not an XLA shape error deep inside a block."""

from __future__ import annotations


def shape(x):
    """x.shape, or None for something that is not an array (named in the messages)."""
    return getattr(x, "shape", None)


def check_latents(model: str, hidden_states, in_channels: int,
                  patch: tuple[int, int, int]) -> tuple[int, tuple[int, int, int]]:
    """hidden_states: [B, C, F, H, W] with C = in_channels and F, H, W divisible by the
    patch (p_t, p_h, p_w). Returns (B, post-patch grid (F', H', W'), none empty)."""
    if getattr(hidden_states, "ndim", None) != 5:
        raise ValueError(f"{model}: hidden_states must be [B, C, F, H, W], got shape "
                         f"{shape(hidden_states)}")
    b, c, f, h, w = hidden_states.shape
    if c != in_channels:
        raise ValueError(f"{model}: hidden_states has {c} channels, the model takes "
                         f"in_channels={in_channels}")
    bad = [f"{name}={n} is not divisible by the patch size {p}"
           for name, n, p in zip("FHW", (f, h, w), patch) if n % p]
    if bad:
        raise ValueError(f"{model}: latents do not patchify: " + "; ".join(bad))
    grid = (f // patch[0], h // patch[1], w // patch[2])
    if min(grid) < 1:
        raise ValueError(f"{model}: latents {hidden_states.shape} give an empty post-patch "
                         f"grid {grid}")
    return b, grid


def check_timestep(model: str, timestep, batch: int, tokens: int | None = None):
    """timestep: [B], or [B, S] per token when the model takes that (`tokens` = S)."""
    have = tuple(getattr(timestep, "shape", ()))
    if have == (batch,) or (tokens is not None and have == (batch, tokens)):
        return
    want = f"[B]=[{batch}]" + ("" if tokens is None else f" or [B, S]=[{batch}, {tokens}]")
    raise ValueError(f"{model}: timestep must be {want}, got shape {shape(timestep)}")


def check_sequence(model: str, name: str, x, batch: int, width_name: str, width: int):
    """x: [B, L, width] with at least one token."""
    if (getattr(x, "ndim", None) != 3 or x.shape[0] != batch or x.shape[1] < 1
            or x.shape[2] != width):
        raise ValueError(f"{model}: {name} must be [B={batch}, L>=1, {width_name}={width}], "
                         f"got {shape(x)}")
