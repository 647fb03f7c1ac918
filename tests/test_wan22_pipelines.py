"""The Wan pipelines' denoising loops against diffusers 0.42.1 on tiny random models (fp32,
CPU): latents after N steps of our compiled loop vs `WanPipeline` /
`WanImageToVideoPipeline(output_type="latent")` from the same initial latents and prompt
embeddings, with the weights going through our converters from both layouts.

- Wan2.2 T2V-A14B (two experts switched at boundary_ratio, guidance per expert);
- Wan2.2 I2V-A14B (two experts, VAE-encoded first (and last) frame + mask channels);
- Wan2.1 I2V and FLF2V (one transformer, CLIP vision features);
- Wan2.2 TI2V-5B (per-token timesteps; text-to-video and image-to-video from one model,
  the Wan2.2 VAE).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.torch import save_file

from test_wan_helpers import diffusers, official_state_dict, rel_err, torch, torch_model
from test_wan_vae import TINY as TINY_VAE
from test_text_helpers import torch_encoder
from vae_helpers import random_torch_vae

from convert.wan import convert_to_orbax
from svg2_jax import SVG2Config
from svg2_jax.layer_attention import SVG2Attention
from svg2_jax.models import clip_vision, wan_vae
from svg2_jax.models.clip_vision.preprocess import CLIPImageProcessing
from svg2_jax.models.wan import WanConfig
from svg2_jax.pipelines import wan as pipe
from svg2_jax.pipelines.wan_i2v import image_condition
from svg2_jax.pipelines.wan_models import (FIRST_FRAME, FIRST_LAST, OPTIONAL_FIRST,
                                           WanModelSpec)
from svg2_jax.sampling import FlowMatchEuler, FlowUniPC

TOL = 1e-4
FRAMES = 9           # -> 3 latent frames
LATENT_HW = (4, 6)   # -> a 3 x 2 x 3 post-patch grid
TEXT = 512           # diffusers' I2V attention splits the image tokens off after 512 text tokens
Z = 4                # the tiny VAEs' z_dim

_T = dict(num_attention_heads=2, attention_head_dim=12, text_dim=32, freq_dim=16, ffn_dim=48,
          num_layers=2)
TINY = {
    "t2v-a14b": WanConfig(**_T, in_channels=Z, out_channels=Z),
    "i2v-a14b": WanConfig(**_T, in_channels=3 * Z, out_channels=Z),
    "i2v-2.1": WanConfig(**_T, in_channels=3 * Z, out_channels=Z, image_dim=32,
                         added_kv_proj_dim=24),
    "flf2v-2.1": WanConfig(**_T, in_channels=3 * Z, out_channels=Z, image_dim=32,
                           added_kv_proj_dim=24, pos_embed_seq_len=2 * 17),
    "ti2v-5b": WanConfig(**_T, in_channels=Z, out_channels=Z),
}
CLIP_PROCESSING = CLIPImageProcessing(shortest_edge=28, crop_size=(28, 28))


def _pixels(vae_config):
    s = vae_config.spatial_compression
    return LATENT_HW[0] * s, LATENT_HW[1] * s


def _image(height, width, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _text(seed, length=TEXT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, 32, generator=g)


def _latents(seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, Z, 3, *LATENT_HW, generator=g)


def _unipc(shift):
    return diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction",
                                             use_flow_sigmas=True, num_train_timesteps=1000,
                                             flow_shift=shift)


def _record_experts(*transformers):
    """Forward hooks appending the index of each transformer called (per model call)."""
    calls = []
    for i, t in enumerate(transformers):
        t.register_forward_hook(lambda m, a, kw, out, i=i: calls.append(i), with_kwargs=True)
    return calls


def _run(pipeline, steps, **kwargs):
    with torch.no_grad():
        out = pipeline(num_inference_steps=steps, num_frames=FRAMES, output_type="latent",
                       return_dict=False, **kwargs)[0]
    return out.numpy()


def _ours(models, scheduler, cfg, latents, text, negative, condition=None):
    sampler = pipe.WanSampler(models, scheduler, cfg)
    res = sampler(jnp.asarray(latents.numpy()), jnp.asarray(text.numpy()),
                  jnp.asarray(negative.numpy()), condition)
    return res


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    """kind -> (diffusers AutoencoderKLWan, our JAX VAE from its diffusers directory)."""
    out = {}
    for kind in ("wan2.1", "wan2.2"):
        model = random_torch_vae(diffusers.AutoencoderKLWan, TINY_VAE[kind])
        path = tmp_path_factory.mktemp(kind) / "vae"
        model.save_pretrained(path, safe_serialization=True)
        out[kind] = (model, wan_vae.load(path))
    return out


def _save_official(model, path):
    path.mkdir(parents=True)
    save_file(official_state_dict(model), str(path / "diffusion_pytorch_model.safetensors"))


def test_t2v_a14b_experts_switch_at_the_boundary(tmp_path):
    """transformer_2 from the official layout (low_noise_model/), transformer from the
    diffusers one, both found from the one directory; guidance 4 / 3 as released."""
    cfg = TINY["t2v-a14b"]
    high, low = torch_model(cfg, seed=0), torch_model(cfg, seed=1)
    high.save_pretrained(tmp_path / "high_noise_model", safe_serialization=True)
    _save_official(low, tmp_path / "low_noise_model")
    steps, shift, ratio = 6, 12.0, 0.875
    pipeline = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                     scheduler=_unipc(shift), transformer=high,
                                     transformer_2=low, boundary_ratio=ratio)
    calls = _record_experts(high, low)
    text, negative, latents = _text(0, 16), _text(1, 16), _latents()
    want = _run(pipeline, steps, prompt_embeds=text, negative_prompt_embeds=negative,
                latents=latents, guidance_scale=4.0, guidance_scale_2=3.0, height=32, width=48)

    spec = WanModelSpec("tiny-t2v-a14b", cfg, boundary_ratio=ratio, guidance=4.0,
                        guidance_2=3.0, steps=steps)
    models = pipe.load_experts(spec, tmp_path, dtype=jnp.float32)
    res = _ours(models, FlowUniPC(flow_shift=shift),
                pipe.sampler_config(spec, dense_fraction=0.0, progress=False),
                latents, text, negative)
    theirs = calls[::2]  # cond and uncond per step
    assert 0 < theirs.count(0) < steps  # the boundary falls inside the loop
    np.testing.assert_array_equal(np.asarray(res.expert), theirs)
    assert rel_err(res.latents, want) <= TOL

    # SVG2 on both experts: one stacked state each, filled by its own sparse steps
    svg2 = SVG2Attention(SVG2Config(num_q_clusters=4, num_k_clusters=6, top_p=0.5,
                                    kmeans_iters_cold=3))
    for m in models:
        m.attention = svg2
    res = _ours(models, FlowUniPC(flow_shift=shift),
                pipe.sampler_config(spec, dense_fraction=0.2, progress=False),
                latents, text, negative)
    assert len(res.attn_state) == 2  # (cond, uncond) per expert; CFG shares the cache
    for e in range(2):
        np.testing.assert_array_equal(np.asarray(res.attn_state[e][0].initialized),
                                      [False, True])  # layer 0 is always dense
    dens = np.asarray(res.density)  # [steps, 2, layers, B, heads]
    assert (dens[:1] == 1).all() and (dens[1:, :, 1] < 1).all()


@pytest.mark.parametrize("last", [False, True])
def test_i2v_a14b_image_condition(vaes, tmp_path, last):
    """Both experts official (high_noise_model/ + low_noise_model/); the first frame (and
    the last, as diffusers allows) VAE-encoded with the mask channels; Euler / UniPC."""
    cfg = TINY["i2v-a14b"]
    high, low = torch_model(cfg, seed=2), torch_model(cfg, seed=3)
    _save_official(high, tmp_path / "high_noise_model")
    _save_official(low, tmp_path / "low_noise_model")
    vae, jax_vae = vaes["wan2.1"]
    height, width = _pixels(TINY_VAE["wan2.1"])
    image, last_image = _image(height, width, 0), (_image(height, width, 1) if last else None)
    steps, ratio = 5, 0.9
    scheduler = (diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0) if last else _unipc(5.0))
    pipeline = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=high,
        transformer_2=low, boundary_ratio=ratio)
    calls = _record_experts(high, low)
    text, negative, latents = _text(2, 16), _text(3, 16), _latents()
    want = _run(pipeline, steps, image=image, last_image=last_image, prompt_embeds=text,
                negative_prompt_embeds=negative, latents=latents, guidance_scale=3.5,
                height=height, width=width)

    spec = WanModelSpec("tiny-i2v-a14b", cfg, boundary_ratio=ratio, image=FIRST_LAST,
                        guidance=3.5, guidance_2=3.5, steps=steps)
    models = pipe.load_experts(spec, tmp_path, dtype=jnp.float32)
    condition = image_condition(jax_vae, image, last_image, height=height, width=width,
                                num_frames=FRAMES, replace_first_frame=False)
    ours_scheduler = FlowMatchEuler(shift=5.0) if last else FlowUniPC(flow_shift=5.0)
    res = _ours(models, ours_scheduler, pipe.sampler_config(spec, dense_fraction=0.0,
                                                            progress=False),
                latents, text, negative, condition)
    np.testing.assert_array_equal(np.asarray(res.expert), calls[::2])
    assert set(calls) == {0, 1}
    assert rel_err(res.latents, want) <= TOL


@pytest.mark.parametrize("kind", ["i2v-2.1", "flf2v-2.1"])
def test_wan21_i2v_with_clip_features(vaes, tmp_path, kind):
    """One transformer (diffusers layout -> svg2-convert orbax), CLIP features of the
    image(s) from the JAX vision tower with CLIPImageProcessor's preprocessing (here a
    28-px tower), of an image bigger than the video (diffusers resizes it)."""
    cfg = TINY[kind]
    transformer = torch_model(cfg, seed=4)
    transformer.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    convert_to_orbax(tmp_path / "transformer", "diffusers", cfg, tmp_path / "orbax",
                     dtype=jnp.float32)
    encoder = torch_encoder("clip_vision")
    encoder.save_pretrained(tmp_path / "image_encoder")
    processor = __import__("transformers").CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    vae, jax_vae = vaes["wan2.1"]
    height, width = _pixels(TINY_VAE["wan2.1"])
    image = _image(height + 8, width + 16, 4)
    last_image = _image(height + 8, width + 16, 5) if cfg.pos_embed_seq_len else None
    steps = 4
    pipeline = diffusers.WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=_unipc(3.0),
        image_processor=processor, image_encoder=encoder, transformer=transformer)
    text, negative, latents = _text(6), _text(7), _latents()
    want = _run(pipeline, steps, image=image, last_image=last_image, prompt_embeds=text,
                negative_prompt_embeds=negative, latents=latents, guidance_scale=5.0,
                height=height, width=width)

    spec = WanModelSpec("tiny-" + kind, cfg, image=FIRST_LAST if last_image else FIRST_FRAME,
                        steps=steps)
    (model,) = pipe.load_experts(spec, tmp_path / "orbax", dtype=jnp.float32)
    condition = image_condition(jax_vae, image, last_image, height=height, width=width,
                                num_frames=FRAMES, replace_first_frame=False,
                                image_encoder=clip_vision.load(tmp_path / "image_encoder"),
                                processing=CLIP_PROCESSING)
    res = _ours(model, FlowUniPC(flow_shift=3.0),
                pipe.sampler_config(spec, dense_fraction=0.0, progress=False),
                latents, text, negative, condition)
    assert rel_err(res.latents, want) <= TOL


@pytest.mark.parametrize("with_image", [False, True])
def test_ti2v_5b_text_and_image_to_video(vaes, tmp_path, with_image):
    """expand_timesteps: WanPipeline for text, WanImageToVideoPipeline for an image (the
    first latent frame replaced, its tokens at timestep 0); the Wan2.2 VAE."""
    cfg = TINY["ti2v-5b"]
    transformer = torch_model(cfg, seed=6)
    _save_official(transformer, tmp_path / "official")
    vae, jax_vae = vaes["wan2.2"]
    height, width = _pixels(TINY_VAE["wan2.2"])
    steps = 4
    text, negative, latents = _text(8, 16), _text(9, 16), _latents()
    common = dict(prompt_embeds=text, negative_prompt_embeds=negative, latents=latents,
                  guidance_scale=5.0, height=height, width=width)
    if with_image:
        image = _image(height, width, 6)
        pipeline = diffusers.WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, vae=vae, scheduler=_unipc(5.0),
            transformer=transformer, expand_timesteps=True)
        want = _run(pipeline, steps, image=image, **common)
    else:
        pipeline = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                         scheduler=_unipc(5.0), transformer=transformer,
                                         expand_timesteps=True)
        want = _run(pipeline, steps, **common)

    spec = WanModelSpec("tiny-ti2v", cfg, expand_timesteps=True, vae="wan2.2-vae",
                        image=OPTIONAL_FIRST, steps=steps)
    (model,) = pipe.load_experts(spec, tmp_path / "official", dtype=jnp.float32)
    condition = (image_condition(jax_vae, image, height=height, width=width, num_frames=FRAMES,
                                 replace_first_frame=True) if with_image else None)
    res = _ours(model, FlowUniPC(flow_shift=5.0),
                pipe.sampler_config(spec, dense_fraction=0.0, progress=False),
                latents, text, negative, condition)
    assert rel_err(res.latents, want) <= TOL


def test_image_conditioning_without_torch(vaes, tmp_path):
    """The Wan2.1 I2V conditioning (JAX VAE + JAX CLIP tower, Pillow preprocessing) from
    checkpoints on disk, in a fresh interpreter, leaves torch unimported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    encoder = torch_encoder("clip_vision")
    encoder.save_pretrained(tmp_path / "image_encoder")
    vae_dir = tmp_path / "vae"
    vaes["wan2.1"][0].save_pretrained(vae_dir, safe_serialization=True)
    image = tmp_path / "first.png"
    _image(40, 60, 7).save(image)
    code = f"""
import sys
from svg2_jax.models import clip_vision, wan_vae
from svg2_jax.pipelines.video import load_image
from svg2_jax.pipelines.wan_i2v import image_condition, processing_beside
from svg2_jax.models.clip_vision.preprocess import CLIPImageProcessing
cond = image_condition(wan_vae.load({str(vae_dir)!r}), load_image({str(image)!r}),
                       height=32, width=48, num_frames=9, replace_first_frame=False,
                       image_encoder=clip_vision.load({str(tmp_path / 'image_encoder')!r}),
                       processing=CLIPImageProcessing(shortest_edge=28, crop_size=(28, 28)))
assert cond.latents.shape == (1, 8, 3, 4, 6) and cond.image_embeds.shape == (1, 17, 32)
assert 'torch' not in sys.modules, 'torch was imported'
print('ok')
"""
    root = Path(__file__).resolve().parents[1]
    # posix_spawn (no cwd, no close_fds), not fork: JAX warns about forking this process
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, close_fds=False,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("size", [(32, 48), (45, 70), (20, 24)])
def test_image_frame_is_the_video_processors(size):
    """image_frame == diffusers' VideoProcessor.preprocess(image, height, width): Lanczos
    to the video's size (or none at it), [-1, 1]."""
    from diffusers.video_processor import VideoProcessor

    from svg2_jax.pipelines.video import image_frame

    image = _image(*size, seed=sum(size))
    want = VideoProcessor(vae_scale_factor=8).preprocess(image, height=32, width=48)[0]
    np.testing.assert_array_equal(image_frame(image, 32, 48), want.numpy())
