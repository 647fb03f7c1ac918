"""The Wan2.1 / Wan2.2 VAE (svg2_jax.models.wan_vae) against diffusers' AutoencoderKLWan:
parity through our converter (fp32, CPU), chunked == whole-clip, the feature-cache walk,
latent normalisation, the converter's checks and the pipeline's decode."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_helpers import (TOL, check_preset_shapes, check_round_trip, check_strict_errors,
                         random_torch_vae, rel_err, save_and_convert, torch)

from convert.cli import main as cli_main
from convert.wan_vae import convert_to_orbax
from svg2_jax.models import wan_vae
from svg2_jax.models.wan_vae import (PRESETS, AutoencoderKLWan, WanVAEConfig, load,
                                     wan_vae_decode, wan_vae_encode)
from svg2_jax.models.wan_vae.load import FAMILY
from svg2_jax.models.wan_vae.model import walk_chunks
from svg2_jax.pipelines import wan as wan_pipeline

diffusers = pytest.importorskip("diffusers")

# Four levels as released (spatial-only first level, then two temporal ones), tiny widths.
TINY = {
    "wan2.1": WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                           latents_mean=(0.5, -0.25, 0.1, 0.0),
                           latents_std=(2.0, 1.5, 0.5, 1.0)),
    "wan2.2": WanVAEConfig(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=(1, 2, 2, 2),
                           num_res_blocks=1, is_residual=True, in_channels=12, out_channels=12,
                           patch_size=2, scale_factor_spatial=16,
                           latents_mean=(0.5, -0.25, 0.1, 0.0),
                           latents_std=(2.0, 1.5, 0.5, 1.0)),
}
FRAMES = 9  # 1 + 4 x 2: the first frame alone, then two chunks of 4 (3 latent frames)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> dict: the torch model, its diffusers and orbax directories, our model (from
    the orbax), the input video and diffusers' posterior and decode of its mean."""
    cache = {}

    def get(kind):
        if kind not in cache:
            config = TINY[kind]
            model = random_torch_vae(diffusers.AutoencoderKLWan, config)
            root = tmp_path_factory.mktemp(kind)
            diffusers_dir, orbax_dir = save_and_convert(model, root, convert_to_orbax, config)
            s = config.spatial_compression
            g = torch.Generator().manual_seed(1)
            video = torch.rand(1, 3, FRAMES, 2 * s, 3 * s, generator=g) * 2 - 1
            with torch.no_grad():
                posterior = model.encode(video).latent_dist
                decoded = model.decode(posterior.mean).sample
            cache[kind] = dict(model=model, diffusers_dir=diffusers_dir, orbax_dir=orbax_dir,
                               ours=load(orbax_dir, config), video=video.numpy(),
                               mean=posterior.mean.numpy(), logvar=posterior.logvar.numpy(),
                               decoded=decoded.numpy())
        return cache[kind]

    return get


@pytest.mark.parametrize("kind", list(TINY))
def test_parity_in_diffusers_chunk_order(saved, kind):
    """Encode (first frame, then chunks of 4) and decode (one latent frame at a time) match
    diffusers; shapes round-trip video -> latents -> video."""
    d, config = saved(kind), TINY[kind]
    s = config.spatial_compression
    posterior = wan_vae_encode(d["ours"], jnp.asarray(d["video"]))
    assert posterior.mean.shape == (1, config.z_dim, 3, 2, 3) == d["mean"].shape
    assert rel_err(posterior.mean, d["mean"]) <= TOL
    assert rel_err(posterior.logvar, d["logvar"]) <= TOL
    out = wan_vae_decode(d["ours"], jnp.asarray(d["mean"]))
    assert out.shape == (1, 3, FRAMES, 2 * s, 3 * s) == d["decoded"].shape
    assert out.dtype == jnp.float32
    assert rel_err(out, d["decoded"]) <= TOL


# Wan2.2 (its residual blocks' shortcuts on top of the causal convs and time resamples that
# Wan2.1 has too) for the whole-clip forms
def test_whole_clip_decode_equals_chunked(saved):
    d = saved("wan2.2")
    z = jnp.asarray(d["mean"])
    whole = wan_vae_decode(d["ours"], z, chunk_frames=None)
    assert rel_err(whole, wan_vae_decode(d["ours"], z)) <= 1e-5


def test_whole_clip_encode_equals_chunked(saved):
    d = saved("wan2.2")
    video = jnp.asarray(d["video"])
    whole = wan_vae_encode(d["ours"], video, chunk_frames=None)
    chunked = wan_vae_encode(d["ours"], video)
    assert rel_err(whole.mean, chunked.mean) <= 1e-5
    assert rel_err(whole.logvar, chunked.logvar) <= 1e-5


class _RunningSum(nnx.Module):
    """A causal stand-in with a carried state: y_t = sum of x up to t (cache: the total so
    far; None: zero), doubled on a clip's first chunk to tell the first chunk apart."""

    def __call__(self, x, cache):
        first = cache is None
        y = jnp.cumsum(x, axis=1) + (0 if first else cache)
        return (2 * y if first else y), y[:, -1:]


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7, 20])
def test_walk_chunks_carries_the_cache_in_diffusers_order(chunk):
    """First frame alone, full chunks through the scan, a shorter last chunk after it."""
    x = jnp.asarray(np.random.default_rng(0).integers(-9, 9, size=(2, 8, 3)), jnp.float32)
    want = np.cumsum(np.asarray(x), axis=1)
    want[:, :(8 if chunk is None else 1)] *= 2
    np.testing.assert_array_equal(walk_chunks(_RunningSum(), x, chunk), want)  # exact ints


def test_input_checks():
    vae = nnx.eval_shape(lambda: AutoencoderKLWan(TINY["wan2.1"], rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="8 frames, not 1 \\+ 4k"):
        vae.encode(jnp.zeros((1, 3, 8, 8, 8)))
    with pytest.raises(ValueError, match="H=12 is not a positive multiple of 8"):
        vae.encode(jnp.zeros((1, 3, 5, 12, 8)))
    with pytest.raises(ValueError, match="chunk_frames=2 must be a positive multiple of"):
        vae.encode(jnp.zeros((1, 3, 5, 8, 8)), chunk_frames=2)
    with pytest.raises(ValueError, match="5 channels, the model takes 4"):
        vae.decode(jnp.zeros((1, 5, 2, 1, 1)))
    with pytest.raises(ValueError, match="must be \\[B, C, F, H, W\\]"):
        vae.decode(jnp.zeros((5, 2, 1, 1)))


def test_latent_normalisation_is_the_pipelines():
    """WanImageToVideoPipeline.prepare_latents and WanPipeline.__call__, written out in torch."""
    config = TINY["wan2.1"]
    z = torch.randn(2, config.z_dim, 3, 2, 2)
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
    normed = wan_vae.normalize(jnp.asarray(z.numpy()), config)
    # to the last bit but where torch's broadcast division multiplies by the reciprocal
    np.testing.assert_allclose(normed, ((z - mean) * inv_std).numpy(), rtol=2e-7, atol=0)
    np.testing.assert_allclose(wan_vae.denormalize(jnp.asarray(z.numpy()), config),
                               (z / inv_std + mean).numpy(), rtol=2e-7, atol=0)


def test_pipeline_decode_matches_the_diffusers_path(saved):
    """`decode_with_jax_vae` (orbax checkpoint, its own config) gives the frames of
    `decode_with_diffusers_vae` (diffusers' AutoencoderKLWan) from the same DiT latents."""
    d, config = saved("wan2.1"), TINY["wan2.1"]
    latents = np.asarray(wan_vae.normalize(jnp.asarray(d["mean"]), config))
    ours = wan_pipeline.decode_with_jax_vae(latents, d["orbax_dir"])
    theirs = wan_pipeline.decode_with_diffusers_vae(latents, str(d["diffusers_dir"]))
    assert ours.shape == theirs.shape == (1, FRAMES, 16, 24, 3) and ours.dtype == np.uint8
    # float32 rounding may move a value across a rounding boundary, nothing more
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    assert np.mean(ours != theirs) < 1e-3


def test_converter_round_trip_and_strict_errors(saved, tmp_path):
    d, config = saved("wan2.1"), TINY["wan2.1"]
    check_round_trip(FAMILY, load, d["model"], d["diffusers_dir"], d["orbax_dir"], d["ours"],
                     config)
    check_strict_errors(FAMILY, convert_to_orbax, load, d["model"], config, tmp_path,
                        drop="decoder.up_blocks.1.upsamplers.0.time_conv.bias",
                        resize="encoder.down_blocks.3.resample.1.weight")
    with pytest.raises(ValueError, match="z_dim: checkpoint 4, requested 16"):
        load(d["orbax_dir"], PRESETS["wan2.1-vae"])
    with pytest.raises(ValueError, match="z_dim: checkpoint 4, requested 48"):
        load(d["diffusers_dir"], "wan2.2-vae")
    with pytest.raises(ValueError, match="unknown Wan VAE preset 'wan2.3-vae'"):
        load(d["diffusers_dir"], "wan2.3-vae")


def test_cli_picks_the_vae_family_and_float32(saved, tmp_path, capsys):
    d = saved("wan2.2")
    config_json = d["diffusers_dir"] / "config.json"
    assert cli_main(["--from", "diffusers", str(d["diffusers_dir"]), "--model",
                     str(config_json), "--out", str(tmp_path / "orbax"), "--quiet"]) == 0
    assert "float32" in capsys.readouterr().out
    meta = json.loads((tmp_path / "orbax" / FAMILY.config_file).read_text())
    assert meta["param_dtype"] == "float32" and meta["format"] == FAMILY.format
    rc = cli_main(["--from", "diffusers", str(d["diffusers_dir"]), "--model", "wan2.2-vae",
                   "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Wan VAE" in err and "shape mismatches" in err
    rc = cli_main(["--from", "wan", str(d["diffusers_dir"]), "--model", "wan2.1-vae",
                   "--out", str(tmp_path / "bad")])
    assert rc == 1 and "not a layout of Wan VAE checkpoints" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orbax"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_match_diffusers(preset):
    """Our keys and shapes equal diffusers' model of the preset (the released checkpoints'
    architecture): Wan2.1's VAE has 127M parameters."""
    n = check_preset_shapes(FAMILY, diffusers.AutoencoderKLWan, PRESETS[preset])
    if preset == "wan2.1-vae":
        assert 126e6 < n < 128e6


def test_config_json_and_family_detection(tmp_path):
    # a released Wan2.2 config.json carries `clip_output`, which diffusers 0.42.1 ignores
    released = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.35.0.dev0",
                "clip_output": False, **PRESETS["wan2.2-vae"].to_diffusers()}
    assert WanVAEConfig.from_diffusers(released) == PRESETS["wan2.2-vae"]
    with pytest.raises(ValueError, match="unknown config keys \\['tile_size'\\]"):
        WanVAEConfig.from_diffusers({**released, "tile_size": 4})
    with pytest.raises(ValueError, match="attn_scales must be empty"):
        WanVAEConfig(attn_scales=(1.0,))
    with pytest.raises(ValueError, match="temperal_downsample needs 3 entries"):
        WanVAEConfig(temperal_downsample=(True,))
    with pytest.raises(ValueError, match="need z_dim=48 entries"):
        WanVAEConfig(z_dim=48)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(released))
    assert wan_vae.get_config(str(path)) == PRESETS["wan2.2-vae"]
    assert FAMILY.accepts(str(path)) and FAMILY.accepts("wan2.1-vae")
    assert not FAMILY.accepts("wan2.1-t2v-1.3b")
    path.write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    assert not FAMILY.accepts(str(path))
    assert PRESETS["wan2.2-vae"].spatial_compression == 16
    assert PRESETS["wan2.1-vae"].spatial_compression == 8
