"""Flow-matching samplers whose whole denoising loop is one jax.jit."""

from svg2_jax.sampling.schedulers import FlowMatchEuler, FlowUniPC, UniPCState

__all__ = ["FlowMatchEuler", "FlowUniPC", "UniPCState"]

from svg2_jax.sampling.loop import (SampleResult, SamplerConfig, check_finite, describe_nonfinite,
                                    make_sampler, nonfinite_report)

__all__ += ["SampleResult", "SamplerConfig", "check_finite", "describe_nonfinite",
            "make_sampler", "nonfinite_report"]
