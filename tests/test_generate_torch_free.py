"""svg2-generate without torch: the README's tiny run, and prompt-to-video runs of both
families from tiny text encoders and VAEs that the test saves with transformers /
diffusers and converts with svg2-convert (tokenizers trained here: nothing can be
downloaded), each in a fresh interpreter that must not import torch; what the mp4 and
the JSON hold; the wiring of the prompt into the sampler; the new flags' errors."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from shared_fixtures import no_model_work, run_torch_free  # noqa: F401  (a fixture)
from test_text_helpers import clip_tokenizer, llama_tokenizer, torch_encoder, umt5_tokenizer
from vae_helpers import random_torch_vae

from convert import cli as convert_cli
from svg2_jax.cli import generate, text
from svg2_jax.models.hunyuan_vae import HunyuanVideoVAEConfig
from svg2_jax.models.wan_vae import WanVAEConfig
from svg2_jax.pipelines import hunyuan as hunyuan_pipeline
from svg2_jax.pipelines import video
from svg2_jax.pipelines import wan as wan_pipeline

diffusers = pytest.importorskip("diffusers")
# reading an mp4 starts ffmpeg, which JAX warns about in a process that uses it
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

# the tiny DiTs' text widths: Wan text_dim; HunyuanVideo text_embed_dim, pooled_projection_dim
WAN_TEXT = wan_pipeline.TINY_CONFIG.text_dim
HY_TEXT = hunyuan_pipeline.TINY_CONFIG.text_embed_dim
HY_POOLED = hunyuan_pipeline.TINY_CONFIG.pooled_projection_dim
# VAEs with the tiny DiTs' 16 latent channels and the released compressions (4x time;
# Wan2.1 / HunyuanVideo 8x space, Wan2.2 16x through its 2x patchify), tiny widths
WAN21_VAE = WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1)
WAN22_VAE = WanVAEConfig(base_dim=8, decoder_base_dim=12, z_dim=16, dim_mult=(1, 1, 1, 1),
                         num_res_blocks=1, is_residual=True, in_channels=12, out_channels=12,
                         patch_size=2, scale_factor_spatial=16,
                         latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)
HUNYUAN_VAE = HunyuanVideoVAEConfig(block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                    norm_num_groups=4)


def svg2_convert(layout: str, src, out):
    """svg2-convert --from LAYOUT SRC --model SRC/config.json --out OUT (the family from the
    config.json)."""
    assert convert_cli.main(["--from", layout, str(src), "--model", str(src / "config.json"),
                             "--out", str(out), "--quiet"]) == 0
    return out


def save_vae(cls, config, directory):
    random_torch_vae(cls, config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def wan_ckpt(tmp_path_factory):
    """A Wan repo's text parts (tokenizer/, text_encoder/ from transformers, vae/ from
    diffusers) and svg2-convert's orbax umt5/ and wan-vae/ beside them."""
    root = tmp_path_factory.mktemp("wan_repo")
    umt5_tokenizer(root / "tokenizer")
    torch_encoder("umt5", d_model=WAN_TEXT).save_pretrained(root / "text_encoder")
    save_vae(diffusers.AutoencoderKLWan, WAN21_VAE, root / "vae")
    return dict(root=root, umt5=svg2_convert("transformers", root / "text_encoder",
                                             root / "umt5"),
                vae=svg2_convert("diffusers", root / "vae", root / "wan-vae"))


@pytest.fixture(scope="module")
def hunyuan_ckpt(tmp_path_factory):
    """A HunyuanVideo repo's text parts (tokenizer/ + text_encoder/: Llama; tokenizer_2/ +
    text_encoder_2/: CLIP, its tokenizer as transformers 4 saved it) and vae/, with the
    Llama and the VAE converted to orbax beside them."""
    root = tmp_path_factory.mktemp("hunyuan_repo")
    llama_tokenizer(root / "tokenizer")
    clip_tokenizer(root / "tokenizer_2", files="vocab+merges")
    torch_encoder("llama", hidden_size=HY_TEXT).save_pretrained(root / "text_encoder")
    torch_encoder("clip", seed=1, hidden_size=HY_POOLED,
                  max_position_embeddings=77).save_pretrained(root / "text_encoder_2")
    save_vae(diffusers.AutoencoderKLHunyuanVideo, HUNYUAN_VAE, root / "vae")
    return dict(root=root, llama=svg2_convert("transformers", root / "text_encoder",
                                              root / "llama"),
                vae=svg2_convert("diffusers", root / "vae", root / "hunyuan-vae"))


def check_outputs(mp4, *, decoded: bool) -> dict:
    """The mp4 holds what its JSON report says: a decode has the video's frames and size; a
    latent preview the latent frames, 8x the latent size."""
    report = json.loads(mp4.with_suffix(".json").read_text())
    frames = iio.imread(mp4, plugin="FFMPEG")
    v = report["video"]
    _, f, h, w = v["latent_shape"]
    want = (v["frames"], v["height"], v["width"]) if decoded else (f, 8 * h, 8 * w)
    assert frames.shape == (*want, 3)
    assert v["mp4_content"].startswith("decoded by the VAE" if decoded else "latent preview")
    assert frames.std() > 0
    return report


def test_wan_tiny_and_prompt_runs_import_no_torch(wan_ckpt, tmp_path):
    """The README's main job (svg2-generate --out out/tiny.mp4) and a Wan prompt run through
    the converted umT5 (its tokenizer found beside it) and VAE, in one fresh interpreter."""
    tiny, fox = tmp_path / "tiny.mp4", tmp_path / "fox.mp4"
    run_torch_free(f"""
from svg2_jax.cli.generate import main
main(["--out", {str(tiny)!r}, "--no-progress"])
main(["--out", {str(fox)!r}, "--prompt", "a red fox jumps over the dog",
      "--negative-prompt", "the lazy dog", "--text-encoder", {str(wan_ckpt['umt5'])!r},
      "--vae", {str(wan_ckpt['vae'])!r}, "--frames", "9", "--steps", "2", "--no-progress"])
""")
    report = check_outputs(tiny, decoded=False)
    assert report["model"].startswith("TINY RANDOM") and report["video"]["frames"] == 17
    assert report["text"] == {"source": "random states (tiny model)"}
    report = check_outputs(fox, decoded=True)
    assert report["video"]["frames"] == 9 and report["video"]["latent_shape"] == [16, 3, 16, 24]
    assert report["video"]["vae"] == str(wan_ckpt["vae"])
    assert report["text"] == {
        "source": "--prompt", "prompt": "a red fox jumps over the dog",
        "negative_prompt": "the lazy dog", "negative": None,
        "encoders": {"--text-encoder": str(wan_ckpt["umt5"])},
        "tokenizers": {"--tokenizer": str((wan_ckpt["root"] / "tokenizer").resolve())}}


def test_hunyuan_prompt_run_imports_no_torch(hunyuan_ckpt, tmp_path):
    """HunyuanVideo: Llama (converted) + CLIP (the transformers folder, its transformers 4
    tokenizer beside it) and the converted VAE, in a fresh interpreter."""
    out = tmp_path / "hy.mp4"
    root = hunyuan_ckpt["root"]
    run_torch_free(f"""
from svg2_jax.cli.generate import main
main(["--family", "hunyuan", "--out", {str(out)!r}, "--prompt", "a red fox in the snow",
      "--text-encoder", {str(hunyuan_ckpt['llama'])!r},
      "--text-encoder-2", {str(root / 'text_encoder_2')!r},
      "--vae", {str(hunyuan_ckpt['vae'])!r}, "--frames", "9", "--steps", "2",
      "--attention", "dense", "--no-progress"])
""")
    report = check_outputs(out, decoded=True)
    assert report["family"] == "hunyuan" and report["video"]["frames"] == 9
    assert report["text"]["tokenizers"] == {
        "--tokenizer": str((root / "tokenizer").resolve()),
        "--tokenizer-2": str((root / "tokenizer_2").resolve())}


def _args(**flags):
    """The parsed flags of a tiny run with `flags` (name=value) added."""
    argv = []
    for name, value in flags.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return generate.parse_args(argv)


def test_prompt_states_are_the_encoders(wan_ckpt, hunyuan_ckpt):
    """What the sampler gets from --prompt: the library's encodings of the prompt (and of
    the negative prompt) by the named encoders and tokenizers."""
    import jax.numpy as jnp

    from svg2_jax.models import clip_text, llama, umt5
    from svg2_jax.text import encode_hunyuan_prompt, encode_wan_prompt, load_tokenizer

    rng = np.random.default_rng(0)
    args = _args(prompt="a red fox", negative_prompt="blurry", text_encoder=wan_ckpt["umt5"])
    context, uncond = text.wan_conditioning(args, WAN_TEXT, True, rng, jnp.float32)
    # no --negative-prompt: "" encoded, as diffusers' WanPipeline does
    _, empty = text.wan_conditioning(_args(prompt="a red fox", text_encoder=wan_ckpt["umt5"]),
                                     WAN_TEXT, True, rng, jnp.float32)
    want = encode_wan_prompt(load_tokenizer(wan_ckpt["root"] / "tokenizer"),
                             umt5.load(wan_ckpt["umt5"], None, jnp.float32),
                             ["a red fox", "blurry", ""])
    np.testing.assert_allclose(np.concatenate([context, uncond, empty]), want, rtol=1e-5,
                               atol=1e-6)
    assert context.shape == (1, 512, WAN_TEXT) and not np.array_equal(context, uncond)

    root = hunyuan_ckpt["root"]
    args = _args(family="hunyuan", prompt="a red fox", text_encoder=hunyuan_ckpt["llama"],
                 text_encoder_2=root / "text_encoder_2")
    embeds, mask, pooled = text.hunyuan_conditioning(args, hunyuan_pipeline.TINY_CONFIG, True,
                                                     rng, jnp.float32)
    want = encode_hunyuan_prompt(
        load_tokenizer(root / "tokenizer"), llama.load(hunyuan_ckpt["llama"], None, jnp.float32),
        load_tokenizer(root / "tokenizer_2"),
        clip_text.load(root / "text_encoder_2", None, jnp.float32), ["a red fox"])
    np.testing.assert_allclose(embeds, want.prompt_embeds, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mask, np.asarray(want.prompt_attention_mask) == 1)
    np.testing.assert_allclose(pooled, want.pooled_prompt_embeds, rtol=1e-5, atol=1e-6)
    assert mask.dtype == bool and embeds.shape == (1, 256, HY_TEXT)


def test_wan22_vae_sets_the_latent_size(tmp_path):
    """A Wan2.2-shaped VAE (16x space) read from its diffusers folder: the latents are
    sized by its compression, the mp4 is the requested video."""
    vae = save_vae(diffusers.AutoencoderKLWan, WAN22_VAE, tmp_path / "vae")
    out = tmp_path / "w22.mp4"
    report = generate.main(["--out", str(out), "--vae", str(vae), "--frames", "5", "--steps",
                            "2", "--attention", "dense", "--no-progress"])
    assert report["video"]["latent_shape"] == [16, 2, 8, 12]
    assert report["video"]["video_tokens"] == 2 * 4 * 6
    check_outputs(out, decoded=True)
    with pytest.raises(SystemExit, match=r"height=136 must be a positive multiple of 32 "
                                         r"\(VAE 16x times patch 2\)"):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--vae", str(vae), "--height", "136"])


def test_latent_shape_takes_the_vae_compression():
    patch = (1, 2, 2)
    # Wan2.2 TI2V-5B's 704 x 1280, 121 frames: 16x in space
    assert video.latent_shape(48, patch, 704, 1280, 121, WAN22_VAE) == (48, 31, 44, 80)
    assert video.latent_shape(16, patch, 480, 832, 81) == (16, 21, 60, 104)
    assert video.sequence_length(16, patch, 480, 832, 81, HUNYUAN_VAE) == 21 * 30 * 52
    with pytest.raises(ValueError, match="frames=80 must be 1 \\+ 4k"):
        video.latent_shape(16, patch, 480, 832, 80, WAN21_VAE)


@pytest.fixture(scope="module")
def misfits(tmp_path_factory, wan_ckpt):
    """Parts that do not fit the tiny Wan: a narrower umT5 (tokenizer inside its folder), a
    4-channel VAE, an encoder folder with no tokenizer near it."""
    root = tmp_path_factory.mktemp("misfits")
    narrow = root / "narrow"
    torch_encoder("umt5").save_pretrained(narrow)
    umt5_tokenizer(narrow)
    lonely = root / "repo" / "text_encoder"
    torch_encoder("umt5", d_model=WAN_TEXT).save_pretrained(lonely)
    vae4 = save_vae(diffusers.AutoencoderKLWan,
                    WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                                 latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4),
                    root / "vae4")
    return dict(narrow=narrow, lonely=lonely, vae4=vae4)


def test_text_and_vae_flag_errors(wan_ckpt, hunyuan_ckpt, misfits, tmp_path, no_model_work):
    """Each stops the run before the DiT is built: the flags with the other flags' checks,
    the VAE's config with the model's shapes, the text encoders' output once encoded."""
    umt5, llama_dir = str(wan_ckpt["umt5"]), str(hunyuan_ckpt["llama"])
    emb = tmp_path / "e.npy"
    np.save(emb, np.zeros((4, WAN_TEXT), np.float32))
    hy = ["--family", "hunyuan"]
    cases = [
        (["--prompt", "a"], "--prompt needs --text-encoder: the umT5 text encoder"),
        (["--prompt", "a", "--text-encoder", umt5, "--text-embeddings", str(emb)],
         "--prompt and --text-embeddings exclude each other"),
        (["--prompt", "a", "--text-encoder", umt5, "--negative-prompt", "b",
          "--negative-embeddings", str(emb)], "--negative-prompt and --negative-embeddings"),
        (["--text-encoder", umt5], "--text-encoder is read only with --prompt"),
        (["--negative-prompt", "b", "--text-embeddings", str(emb)],
         "--negative-prompt needs --prompt, whose text encoder encodes it"),
        (["--prompt", "a", "--text-encoder", str(tmp_path / "absent")],
         "--text-encoder '.*absent' not found"),
        (["--prompt", "a", "--text-encoder", umt5, "--tokenizer", str(emb)],
         "--tokenizer '.*e.npy' is a file; a folder is expected"),
        (["--prompt", "a", "--text-encoder", str(misfits["lonely"])],
         "no tokenizer for --text-encoder .*; pass --tokenizer DIR"),
        (["--prompt", "a", "--text-encoder", umt5, "--text-encoder-2", umt5],
         "--text-encoder-2 is read only for hunyuan \\(this run is wan\\)"),
        (hy + ["--negative-prompt", "b"], "--negative-prompt is not supported for HunyuanVideo"),
        (hy + ["--prompt", "a", "--text-encoder", llama_dir],
         "--prompt needs --text-encoder-2: the CLIP text encoder"),
        (["--vae", str(tmp_path / "absent")], "--vae '.*absent' not found"),
        # listed together with the other flags' problems
        (["--text-encoder-2", umt5, "--vae", str(tmp_path / "absent")],
         "2 problems:\n  --text-encoder-2 is read only for hunyuan .*\n  --vae '.*' not found"),
        # the VAE's config, read before any weight
        (["--vae", str(hunyuan_ckpt["vae"])], "--vae .*carries no Wan VAE config"),
        (["--vae", str(misfits["vae4"])],
         "decodes 4-channel latents; the model makes 16: not this model's VAE"),
        (["--prompt", "a", "--text-encoder", llama_dir],
         "--text-encoder .* \\(a umT5 encoder\\): .*carries no umT5 config"),
        (["--prompt", "a", "--text-encoder", str(misfits["narrow"])],
         "gives 32-wide states; the model takes text_dim=64"),
        (["--prompt", "a cinematic shot of a city at night", "--text-encoder", umt5,
          "--tokenizer", str(hunyuan_ckpt["root"] / "tokenizer")],
         "--prompt: tokenizer .* gives token id \\d+, past the text encoder's vocabulary"),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit, match=match):
            generate.main(["--out", str(tmp_path / "x.mp4"), "--no-progress"] + argv)
    assert not list(tmp_path.glob("x*"))
