import numpy as np
import pytest
import jax
import jax.numpy as jnp

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from svg2_jax.sampling import FlowMatchEuler, FlowUniPC


def _run_pair(ours, theirs, num_steps, seed, **set_kwargs):
    rng = np.random.default_rng(seed)
    theirs.set_timesteps(num_steps, **set_kwargs)
    timesteps, sigmas = ours.schedule(len(theirs.timesteps))
    np.testing.assert_allclose(sigmas, theirs.sigmas.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(timesteps, theirs.timesteps.numpy(), rtol=1e-6)
    sample = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    state = ours.init(jnp.asarray(sample))
    step = jax.jit(ours.step)
    x_ours, x_theirs = jnp.asarray(sample), torch.from_numpy(sample.copy())
    for i, t in enumerate(theirs.timesteps):
        out = rng.normal(size=sample.shape).astype(np.float32)
        x_theirs = theirs.step(torch.from_numpy(out), t, x_theirs, return_dict=False)[0]
        x_ours, state = step(state, jnp.asarray(sigmas), i, jnp.asarray(out), x_ours)
        np.testing.assert_allclose(np.asarray(x_ours), x_theirs.numpy(), rtol=2e-5, atol=2e-5,
                                   err_msg=f"step {i}")


@pytest.mark.parametrize("shift,steps", [(1.0, 10), (5.0, 50), (3.0, 7)])
def test_flow_match_euler_matches_diffusers(shift, steps):
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    _run_pair(FlowMatchEuler(shift=shift), theirs, steps, int(shift * 10) + steps)


@pytest.mark.parametrize("shift,steps", [(7.0, 50), (1.0, 5)])
def test_flow_match_euler_with_hunyuan_pipeline_sigmas(shift, steps):
    """HunyuanVideoPipeline passes sigmas = linspace(1, 0, steps + 1)[:-1]."""
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    _run_pair(FlowMatchEuler(shift=shift, pipeline_sigmas=True), theirs, None, steps,
              sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])


@pytest.mark.parametrize("shift,steps,order", [(5.0, 50, 2), (3.0, 12, 2), (1.0, 6, 1),
                                               (5.0, 9, 3)])
def test_flow_unipc_matches_diffusers(shift, steps, order):
    theirs = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
        num_train_timesteps=1000, solver_order=order)
    _run_pair(FlowUniPC(flow_shift=shift, solver_order=order), theirs, steps, steps + order)


def test_scheduler_table():
    from svg2_jax.sampling.schedulers import SCHEDULERS, Scheduler
    assert SCHEDULERS == {"euler": FlowMatchEuler, "unipc": FlowUniPC}
    for cls in SCHEDULERS.values():
        assert isinstance(cls(), Scheduler)
