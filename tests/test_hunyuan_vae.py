"""The HunyuanVideo VAE (svg2_jax.models.hunyuan_vae) against diffusers'
AutoencoderKLHunyuanVideo: parity through our converter (fp32, CPU) untiled and in tiles,
the tiling logic against diffusers' own methods, latent scaling, the converter's checks and
the pipeline's decode."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_helpers import (TOL, check_preset_shapes, check_round_trip, check_strict_errors,
                         random_torch_vae, rel_err, same_params, save_and_convert, torch)

from convert.hunyuan_vae import convert_to_orbax
from svg2_jax.models import hunyuan_vae
from svg2_jax.models.hunyuan_vae import (PRESETS, HunyuanVAETiling, HunyuanVideoVAEConfig,
                                         hunyuan_vae_decode, hunyuan_vae_encode, load)
from svg2_jax.models.hunyuan_vae.load import FAMILY
from svg2_jax.models.hunyuan_vae.model import frame_causal_attention
from svg2_jax.models.hunyuan_vae.tiling import decode_tiled, encode_tiled
from svg2_jax.pipelines import hunyuan as hunyuan_pipeline

diffusers = pytest.importorskip("diffusers")

# Three levels: two resample 2x in space and time (4x / 4x), the last none, as in the
# release's four levels (8x / 4x); tiny widths.
TINY = HunyuanVideoVAEConfig(
    latent_channels=4, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
    down_block_types=("HunyuanVideoDownBlock3D",) * 3,
    up_block_types=("HunyuanVideoUpBlock3D",) * 3, spatial_compression_ratio=4)
S, R = 4, 4  # its spatial and temporal compression


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The torch model, its diffusers and orbax directories, and ours (from the orbax)."""
    model = random_torch_vae(diffusers.AutoencoderKLHunyuanVideo, TINY)
    diffusers_dir, orbax_dir = save_and_convert(model, tmp_path_factory.mktemp("hunyuan_vae"),
                                                convert_to_orbax, TINY)
    return dict(model=model, diffusers_dir=diffusers_dir, orbax_dir=orbax_dir,
                ours=load(orbax_dir, TINY))


def _torch(model, tiling: HunyuanVAETiling):
    """`model` with diffusers' tiling attributes set as `tiling` says."""
    for field in dataclasses.fields(tiling):
        setattr(model, field.name, getattr(tiling, field.name))
    return model


def _rand(*shape, seed=1):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_parity_untiled(saved):
    """Encode and decode in one pass each (clip and frames below every tile), shapes
    round-tripping video -> latents -> video."""
    video = _rand(1, 3, 9, 16, 24)
    with torch.no_grad():
        posterior = saved["model"].encode(video).latent_dist
        decoded = saved["model"].decode(posterior.mean).sample
    ours = hunyuan_vae_encode(saved["ours"], jnp.asarray(video.numpy()))
    assert ours.mean.shape == (1, 4, 3, 4, 6) == tuple(posterior.mean.shape)
    assert rel_err(ours.mean, posterior.mean.numpy()) <= TOL
    assert rel_err(ours.logvar, posterior.logvar.numpy()) <= TOL
    out = hunyuan_vae_decode(saved["ours"], jnp.asarray(posterior.mean.numpy()))
    assert out.shape == (1, 3, 9, 16, 24) == tuple(decoded.shape)
    assert rel_err(out, decoded.numpy()) <= TOL


def test_parity_spatial_tiles_decode(saved):
    """diffusers' enable_tiling() with small tiles: three overlapping row tiles (4, 4 and 2
    latent rows), blended and stitched."""
    tiling = HunyuanVAETiling(use_tiling=True, tile_sample_min_height=16,
                              tile_sample_min_width=16, tile_sample_stride_height=8,
                              tile_sample_stride_width=8)
    z = _rand(1, 4, 3, 6, 2, seed=2) * 2
    with torch.no_grad():
        want = _torch(saved["model"], tiling).decode(z).sample.numpy()
    out = hunyuan_vae_decode(saved["ours"], jnp.asarray(z.numpy()), tiling)
    assert out.shape == want.shape == (1, 3, 9, 24, 8)
    assert rel_err(out, want) <= TOL


def test_parity_temporal_tiles_encode(saved):
    """diffusers' framewise encoding with small tiles: a 13-frame clip as frames [0, 13)
    and [8, 13), blended over one latent frame."""
    tiling = HunyuanVAETiling(tile_sample_min_num_frames=12, tile_sample_stride_num_frames=8)
    video = _rand(1, 3, 13, 8, 8, seed=3)
    with torch.no_grad():
        want = _torch(saved["model"], tiling).encode(video).latent_dist
    ours = hunyuan_vae_encode(saved["ours"], jnp.asarray(video.numpy()), tiling)
    assert ours.mean.shape == tuple(want.mean.shape) == (1, 4, 4, 2, 2)
    assert rel_err(ours.mean, want.mean.numpy()) <= TOL
    assert rel_err(ours.logvar, want.logvar.numpy()) <= TOL


# Stand-ins for one encoder / decoder pass, cheap and written twice (torch, jax), whose
# output depends on the whole tile (through its mean), so overlapping tiles differ and the
# blending shows.
def _fake_decode_torch(z):
    x = torch.cat([z[:, :, :1], z[:, :, 1:].repeat_interleave(R, 2)], 2)
    x = x.repeat_interleave(S, 3).repeat_interleave(S, 4)
    return x[:, :3] * 0.5 + z[:, :3].mean((2, 3, 4), keepdim=True)


def _fake_decode_jax(z):
    x = jnp.concatenate([z[:, :, :1], jnp.repeat(z[:, :, 1:], R, 2)], 2)
    x = jnp.repeat(jnp.repeat(x, S, 3), S, 4)
    return x[:, :3] * 0.5 + z[:, :3].mean((2, 3, 4), keepdims=True)


def _fake_encode_torch(x):
    b, c, t, h, w = x[:, :, ::R].shape
    pooled = x[:, :, ::R].reshape(b, c, t, h // S, S, w // S, S).mean((4, 6))
    return torch.cat([pooled, pooled * pooled], 1) + x.mean((1, 2, 3, 4), keepdim=True)


def _fake_encode_jax(x):
    b, c, t, h, w = x[:, :, ::R].shape
    pooled = x[:, :, ::R].reshape(b, c, t, h // S, S, w // S, S).mean((4, 6))
    return jnp.concatenate([pooled, pooled * pooled], 1) + x.mean((1, 2, 3, 4), keepdims=True)


class _Pass(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


SMALL = dict(tile_sample_min_height=16, tile_sample_min_width=24, tile_sample_min_num_frames=8,
             tile_sample_stride_height=12, tile_sample_stride_width=16,
             tile_sample_stride_num_frames=4)


@pytest.mark.parametrize("tiling", [
    HunyuanVAETiling(use_tiling=True, **SMALL),                      # time and space
    HunyuanVAETiling(use_tiling=True, use_framewise_encoding=False,  # space only
                     use_framewise_decoding=False, **SMALL),
    HunyuanVAETiling(**SMALL),                                       # time only
], ids=["time+space", "space", "time"])
def test_tiling_matches_diffusers_methods(tiling):
    """Our tile walk, blending and cropping equal diffusers' `_encode` / `_decode` (tiled,
    temporal-tiled) on the same stand-in passes, over sizes that leave ragged edge tiles."""
    vae = diffusers.AutoencoderKLHunyuanVideo(**TINY.to_diffusers())
    vae.encoder, vae.decoder = _Pass(_fake_encode_torch), _Pass(_fake_decode_torch)
    vae.quant_conv = vae.post_quant_conv = torch.nn.Identity()
    _torch(vae, tiling)
    video, z = _rand(1, 3, 9, 24, 32, seed=4), _rand(2, 4, 3, 6, 8, seed=5)
    with torch.no_grad():
        want_moments = vae._encode(video).numpy()
        want_video = vae._decode(z).sample.numpy()
    moments = encode_tiled(jax.jit(_fake_encode_jax), jnp.asarray(video.numpy()), tiling, S, R)
    out = decode_tiled(jax.jit(_fake_decode_jax), jnp.asarray(z.numpy()), tiling, S, R)
    assert moments.shape == want_moments.shape and out.shape == want_video.shape
    np.testing.assert_allclose(moments, want_moments, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, want_video, rtol=1e-5, atol=1e-6)


def test_attention_in_query_blocks_is_the_same():
    """Blocks of queries (the last one padded) give what one pass over all queries gives."""
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 30, 8)), jnp.float32) for _ in range(3))
    frame = jnp.repeat(jnp.arange(5), 6)
    whole = frame_causal_attention(q, k, v, frame)
    np.testing.assert_allclose(frame_causal_attention(q, k, v, frame, query_block=7), whole,
                               rtol=1e-6, atol=1e-6)
    # and it is diffusers' mask: a token of frame 0 sees frame 0 only
    np.testing.assert_allclose(whole[:, :6], frame_causal_attention(
        q[:, :6], k[:, :6], v[:, :6], frame[:6]), rtol=1e-6, atol=1e-6)


def test_tiling_defaults_are_diffusers():
    vae = diffusers.AutoencoderKLHunyuanVideo(**TINY.to_diffusers())
    ours = HunyuanVAETiling()
    for field in dataclasses.fields(ours):
        assert getattr(vae, field.name) == getattr(ours, field.name), field.name
    vae.enable_tiling()
    assert _torch(vae, HunyuanVAETiling(use_tiling=True)).use_tiling


def test_tiling_settings_are_checked():
    with pytest.raises(ValueError, match="tile_sample_stride_height \\(300\\) must not exceed"):
        HunyuanVAETiling(tile_sample_stride_height=300)
    with pytest.raises(ValueError, match="tile_sample_min_num_frames must be a positive int"):
        HunyuanVAETiling(tile_sample_min_num_frames=0)
    with pytest.raises(ValueError, match="below the compression"):
        HunyuanVAETiling(tile_sample_min_num_frames=3, tile_sample_stride_num_frames=2
                         ).check_ratios(8, 4)


def test_latent_scaling_is_the_pipelines():
    """HunyuanVideoImageToVideoPipeline.prepare_latents and HunyuanVideoPipeline.__call__."""
    z = torch.randn(2, 16, 3, 2, 2)
    config = PRESETS["hunyuan-video-vae"]
    sf = config.scaling_factor
    np.testing.assert_array_equal(hunyuan_vae.scale(jnp.asarray(z.numpy()), config),
                                  (z * sf).numpy())
    # to the last bit but where torch divides by a scalar as a multiply by its reciprocal
    np.testing.assert_allclose(hunyuan_vae.unscale(jnp.asarray(z.numpy()), config),
                               (z / sf).numpy(), rtol=2e-7, atol=0)


def test_pipeline_decode_matches_the_diffusers_path(saved):
    """`decode_with_jax_vae` (orbax checkpoint, its own config) gives the frames of
    `decode_with_diffusers_vae` (diffusers' AutoencoderKLHunyuanVideo)."""
    latents = np.asarray(_rand(1, 4, 3, 4, 6, seed=6)) * TINY.scaling_factor
    ours = hunyuan_pipeline.decode_with_jax_vae(latents, saved["orbax_dir"])
    theirs = hunyuan_pipeline.decode_with_diffusers_vae(latents, str(saved["diffusers_dir"]))
    assert ours.shape == theirs.shape == (1, 9, 16, 24, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    assert np.mean(ours != theirs) < 1e-3


def test_converter_round_trip_and_strict_errors(saved, tmp_path):
    check_round_trip(FAMILY, load, saved["model"], saved["diffusers_dir"], saved["orbax_dir"],
                     saved["ours"], TINY)
    check_strict_errors(FAMILY, convert_to_orbax, load, saved["model"], TINY, tmp_path,
                        drop="decoder.mid_block.attentions.0.to_out.0.weight",
                        resize="encoder.down_blocks.1.downsamplers.0.conv.conv.weight")
    with pytest.raises(ValueError, match="latent_channels: checkpoint 4, requested 16"):
        load(saved["diffusers_dir"], "hunyuan-video-vae")
    # the official release's VAE file: a torch state dict with diffusers' keys
    official = tmp_path / "pytorch_model.pt"
    torch.save({"state_dict": saved["model"].state_dict()}, official)
    with pytest.raises(ValueError, match="carries no HunyuanVideo VAE config"):
        load(official)
    assert same_params(load(official, TINY), saved["ours"])


def test_presets_match_diffusers():
    n = check_preset_shapes(FAMILY, diffusers.AutoencoderKLHunyuanVideo,
                            PRESETS["hunyuan-video-vae"])
    assert 240e6 < n < 250e6  # the HunyuanVideo VAE: 246M parameters


def test_config_checks_and_family_detection(tmp_path):
    with pytest.raises(ValueError, match="temporal_compression_ratio must be 4"):
        HunyuanVideoVAEConfig(temporal_compression_ratio=8)
    with pytest.raises(ValueError, match="divisible by norm_num_groups=32"):
        HunyuanVideoVAEConfig(block_out_channels=(16, 32, 64, 64))
    with pytest.raises(ValueError, match="down_block_types must be 3 x"):
        HunyuanVideoVAEConfig(block_out_channels=(32, 64, 64))
    assert PRESETS["hunyuan-video-vae"].spatial_compression == 8
    assert PRESETS["hunyuan-video-vae"].temporal_compression == 4
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "AutoencoderKLHunyuanVideo",
                                **TINY.to_diffusers()}))
    assert hunyuan_vae.get_config(str(path)) == TINY
    assert FAMILY.accepts(str(path)) and FAMILY.accepts("hunyuan-video-vae")
    assert not FAMILY.accepts("hunyuan-video-t2v-720p") and not FAMILY.accepts("wan2.1-vae")
