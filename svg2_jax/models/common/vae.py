"""What both video VAEs share: the posterior (diffusers' `DiagonalGaussianDistribution`),
the [B, C, F, H, W] <-> channels-last moves at their public edges, and input checks."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from svg2_jax.models.common.inputs import shape


class DiagonalGaussian(NamedTuple):
    """The encoder's posterior: mean and log-variance, each [B, z, F, H, W]; logvar clamped
    to [-30, 20] as diffusers' `DiagonalGaussianDistribution` does."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """moments: [B, 2z, F, H, W], the mean's channels first (diffusers' chunk(2, dim=1))."""
        mean, logvar = jnp.split(moments, 2, axis=1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def mode(self) -> jax.Array:
        """The mean (diffusers' `mode()`, the pipelines' `sample_mode="argmax"`)."""
        return self.mean

    def sample(self, key: jax.Array) -> jax.Array:
        """mean + std * N(0, 1) with `key` (not torch's generator stream)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)


def channels_last(x: jax.Array) -> jax.Array:
    """[B, C, F, H, W] -> [B, F, H, W, C] (the layout the VAEs compute in)."""
    return jnp.moveaxis(x, 1, -1)


def channels_first(x: jax.Array) -> jax.Array:
    """[B, F, H, W, C] -> [B, C, F, H, W] (diffusers' layout, at the public edges)."""
    return jnp.moveaxis(x, -1, 1)


def check_video(model: str, name: str, x, channels: int, spatial: int, temporal: int):
    """x: [B, C, F, H, W] with C = channels, F = 1 + temporal * k, H and W multiples of
    `spatial`; a ValueError naming what is wrong otherwise."""
    if getattr(x, "ndim", None) != 5:
        raise ValueError(f"{model}: {name} must be [B, C, F, H, W], got shape {shape(x)}")
    _, c, f, h, w = x.shape
    problems = []
    if c != channels:
        problems.append(f"{c} channels, the model takes {channels}")
    if (f - 1) % temporal:
        problems.append(f"{f} frames, not 1 + {temporal}k")
    problems += [f"{n}={v} is not a positive multiple of {spatial}"
                 for n, v in (("H", h), ("W", w)) if v < spatial or v % spatial]
    if problems:
        raise ValueError(f"{model}: {name} {tuple(x.shape)} has " + "; ".join(problems))
