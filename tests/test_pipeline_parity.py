"""The compiled sampler loop (dense attention, fp32, CPU) against diffusers' pipelines on
tiny random models converted with our converter: WanPipeline (UniPC flow solver, classifier-
free guidance) and HunyuanVideoPipeline (FlowMatchEuler with the pipeline's sigmas,
embedded guidance), from the same initial latents and text embeddings: the latents after a
few steps, and the video decoded by a tiny random VAE after our latent un-normalisation.
The compiled loop also runs with implicit host transfers disallowed and holds no host
callback."""

import jax
import jax.numpy as jnp
import numpy as np

from hlo_inspect import host_transfers
import test_hunyuan_helpers as hy
import test_wan_helpers as wan
from test_wan_helpers import diffusers, rel_err, torch

from convert import hunyuan as convert_hunyuan
from convert import wan as convert_wan
from svg2_jax.models.hunyuan import load as load_hunyuan
from svg2_jax.models.wan import load as load_wan
from svg2_jax.pipelines import hunyuan as hunyuan_pipeline
from svg2_jax.pipelines import wan as wan_pipeline
from svg2_jax.sampling import FlowMatchEuler, FlowUniPC, SamplerConfig, check_finite

TOL = 1e-4
STEPS = 4


def converted(torch_model, convert, load, config, tmp_path):
    """The diffusers model saved, converted to orbax (float32) and loaded as ours."""
    torch_model.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    convert.convert_to_orbax(tmp_path / "transformer", "diffusers", config,
                             tmp_path / "orbax", dtype=jnp.float32)
    return load(tmp_path / "orbax", config, dtype=jnp.float32)


def run_pipeline(pipe, **kwargs):
    """The pipeline's final latents and its decoded video ([B, T, 3, H, W] in [0, 1])."""
    final = {}

    def keep_latents(pipe, i, t, tensors):
        final["latents"] = tensors["latents"].clone()
        return {}

    with torch.no_grad():
        video = pipe(**kwargs, num_inference_steps=STEPS, output_type="pt",
                     callback_on_step_end=keep_latents,
                     callback_on_step_end_tensor_inputs=["latents"]).frames
    return final["latents"].numpy(), video.numpy()


def run_sampler(sampler, *inputs):
    """Our sampler called with every input on the device and implicit host transfers
    disallowed; its compiled loop holds no host callback."""
    inputs = jax.device_put(jax.tree.map(jnp.asarray, inputs))
    assert host_transfers(sampler.lower(*inputs).compile().as_text()) == []
    with jax.transfer_guard("disallow"):
        result = sampler(*inputs)
    return np.asarray(check_finite(result).latents)


def as_pipeline_video(decoded):
    """Our decoded video (torch [B, 3, T, H, W] in [-1, 1]) as the pipelines return it with
    output_type="pt": [B, T, 3, H, W] in [0, 1]."""
    return (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4).numpy()


def test_wan_sampler_equals_wan_pipeline(tmp_path):
    config = wan.TINY["t2v"]
    transformer = wan.torch_model(config, seed=11)
    torch.manual_seed(12)
    channels = config.out_channels
    vae = diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=channels, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        latents_mean=[0.3, -0.5, 0.1, 0.8][:channels],
        latents_std=[1.7, 0.6, 2.4, 1.1][:channels]).eval()
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
        flow_shift=3.0)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                 scheduler=scheduler, transformer=transformer)
    g = torch.Generator().manual_seed(0)
    f, h, w = wan.LATENT_FHW
    latents = torch.randn(2, config.in_channels, f, h, w, generator=g)
    cond = torch.randn(2, 16, config.text_dim, generator=g)
    uncond = torch.randn(2, 16, config.text_dim, generator=g)
    want, video = run_pipeline(pipe, prompt_embeds=cond, negative_prompt_embeds=uncond,
                               latents=latents.clone(), height=8 * h, width=8 * w,
                               num_frames=4 * (f - 1) + 1, guidance_scale=5.0)

    model = converted(transformer, convert_wan, load_wan, config, tmp_path)
    sampler = wan_pipeline.WanSampler(model, FlowUniPC(flow_shift=3.0), SamplerConfig(
        num_steps=STEPS, guidance_scale=5.0, dense_fraction=0.0, progress=False))
    got = run_sampler(sampler, latents.numpy(), cond.numpy(), uncond.numpy())
    assert rel_err(got, want) <= TOL
    assert rel_err(want, latents.numpy()) > 0.1  # the steps moved the latents
    decoded = as_pipeline_video(wan_pipeline.decode_latents(got, vae))
    assert decoded.shape == video.shape
    assert rel_err(decoded, video) <= TOL


def test_hunyuan_sampler_equals_hunyuan_video_pipeline(tmp_path):
    config = hy.TINY["t2v"]
    transformer = hy.torch_model(config, seed=13)
    torch.manual_seed(14)
    vae = diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=config.out_channels, block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.37).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = diffusers.HunyuanVideoPipeline(text_encoder=None, tokenizer=None,
                                          transformer=transformer, vae=vae,
                                          scheduler=scheduler, text_encoder_2=None,
                                          tokenizer_2=None)
    x = hy.inputs(config, batch=2, seed=3)  # text right-padded: 5 and 9 of 12 tokens real
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(x["hidden_states"].shape, generator=g)
    f, h, w = latents.shape[2:]
    want, video = run_pipeline(
        pipe, prompt_embeds=x["encoder_hidden_states"],
        prompt_attention_mask=x["encoder_attention_mask"],
        pooled_prompt_embeds=x["pooled_projections"], latents=latents.clone(),
        height=8 * h, width=8 * w, num_frames=4 * (f - 1) + 1, guidance_scale=4.5)

    model = converted(transformer, convert_hunyuan, load_hunyuan, config, tmp_path)
    sampler = hunyuan_pipeline.HunyuanSampler(
        model, FlowMatchEuler(shift=7.0, pipeline_sigmas=True),
        SamplerConfig(num_steps=STEPS, guidance_scale=1.0, dense_fraction=0.0,
                      progress=False), embedded_guidance=4.5)
    text = (x["encoder_hidden_states"].numpy(),
            x["encoder_attention_mask"].numpy().astype(np.int32),
            x["pooled_projections"].numpy())
    got = run_sampler(sampler, latents.numpy(), text)
    assert rel_err(got, want) <= TOL
    assert rel_err(want, latents.numpy()) > 0.1
    decoded = as_pipeline_video(hunyuan_pipeline.decode_latents(got, vae))
    assert decoded.shape == video.shape
    assert rel_err(decoded, video) <= TOL
