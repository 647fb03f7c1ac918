"""svg2-generate for Wan2.2 and image-to-video: the models' defaults (the released
settings, the reference's I2V warm-up), the checks of the new flags (before any model
work, each naming its flag), and runs end to end on tiny checkpoints: first-and-last-frame
conditioning from an image file, and, without torch, a two-expert image-to-video run from a
prompt (JAX umT5) and the JAX VAE, and a Wan2.1-style run with the JAX CLIP vision tower."""

import json

import numpy as np
import pytest
from shared_fixtures import no_model_work, run_torch_free  # noqa: F401  (a fixture)
from test_faults_generate import run_fails

from svg2_jax import SVG2Config
from svg2_jax.cli import generate
from svg2_jax.cli.vae import wan_vae_problems
from svg2_jax.models import wan_vae
from svg2_jax.pipelines.wan_models import WAN_MODELS

from test_wan22_pipelines import TINY
from test_wan22_errors import saved  # noqa: F401  (fixture)


def _resolve(*argv):
    return generate.resolve(generate.parse_args(list(argv)))


def _png(path, height, width, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_wan22_defaults_are_the_released_settings(tmp_path):
    t2v = _resolve("--checkpoint", "c", "--model", "wan2.2-t2v-a14b")
    assert (t2v.height, t2v.width, t2v.frames, t2v.fps) == (720, 1280, 81, 16)
    assert t2v.sampler.num_steps == 40 and t2v.shift == 12.0
    assert (t2v.guidance, t2v.guidance_2) == (4.0, 3.0)
    assert t2v.sampler.guidance_scales == (4.0, 3.0)
    assert t2v.sampler.boundary_timestep == 875.0 and t2v.sampler.dense_fraction == 0.2
    assert t2v.svg2 == SVG2Config()  # 720p: the reference's QC 300
    ti2v = _resolve("--checkpoint", "c", "--model", "wan2.2-ti2v-5b")
    assert (ti2v.height, ti2v.width, ti2v.frames, ti2v.fps) == (704, 1280, 121, 24)
    assert ti2v.sampler.num_steps == 50 and ti2v.shift == 5.0 and ti2v.guidance_2 is None
    own = _resolve("--checkpoint", "c", "--model", "wan2.2-t2v-a14b", "--guidance-2", "2.0")
    assert own.sampler.guidance_scales == (4.0, 2.0)


def test_i2v_defaults_follow_the_reference_and_the_image(tmp_path):
    image = _png(tmp_path / "i.png", 720, 1280)
    hd = _resolve("--checkpoint", "c", "--model", "wan2.1-i2v-14b", "--image", image,
                  "--height", "720", "--width", "1280")
    # the reference's wan_i2v_720p_sap.sh: 40 steps, 35% dense, QC 300; shift 5 at 720p
    assert hd.sampler.num_steps == 40 and hd.sampler.dense_fraction == 0.35
    assert hd.svg2.num_q_clusters == 300 and hd.shift == 5.0
    sd = _resolve("--checkpoint", "c", "--model", "wan2.1-i2v-14b", "--image", image)
    # no size given: the image's 16:9 at the model's 480 x 832 area; 480p: 20% dense, shift 3
    assert (sd.height, sd.width) == (464, 832)
    assert sd.sampler.dense_fraction == 0.2 and sd.svg2.num_q_clusters == 200 and sd.shift == 3
    a14b = _resolve("--checkpoint", "c", "--model", "wan2.2-i2v-a14b", "--image", image)
    assert (a14b.height, a14b.width) == (720, 1280) and a14b.sampler.dense_fraction == 0.35
    assert a14b.sampler.boundary_timestep == 900.0 and a14b.guidance == 3.5


@pytest.mark.parametrize("args,match", [
    (["--model", "wan2.2-t2v-a14b", "--image", "IMG"],
     r"--image: wan2\.2-t2v-a14b is a text-to-video model: it takes no image"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--height", "832", "--width", "480"],
     r"--image .*i\.png: the image is 832x480 .* would be stretched"),
    (["--model", "wan2.1-t2v-14b", "--guidance-2", "3"],
     r"--guidance-2 is the low-noise expert's: wan2\.1-t2v-14b has one transformer"),
    (["--model", "wan2.2-t2v-a14b", "--guidance-2", "inf"], r"--guidance-2 must be finite"),
    (["--model", "wan2.2-t2v-a14b"], r"--checkpoint: wan2\.2-t2v-a14b needs two experts, but "
     r".* holds transformer/ without transformer_2/ .* Pass the other expert as --checkpoint-2"),
    (["--model", "wan2.1-t2v-14b", "--checkpoint-2", "ONE"],
     r"--checkpoint-2 is the low-noise expert's: wan2\.1-t2v-14b has one transformer"),
    (["--model", "wan2.2-t2v-a14b", "--checkpoint-2", "ABSENT"],
     r"--checkpoint-2 '.*absent' not found"),
    (["--model", "wan2.2-i2v-a14b", "--image", "IMG", "--vae", "ONE"], r"needs two experts"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--last-image", "IMG", "--checkpoint",
      "ONE/transformer", "--vae", "ONE", "--image-encoder", "ONE"],
     r"--last-image: wan2\.1-i2v-14b takes no last image: it conditions on the first frame"),
    (["--model", "wan2.1-i2v-14b", "--last-image", "IMG"],
     r"--last-image: a last image needs a first image\n  --image: wan2\.1-i2v-14b is an "
     r"image-to-video model: give it an image"),
    (["--model", "wan2.2-i2v-a14b", "--image", "IMG"], r"--image needs --vae"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--vae", "ONE"],
     r"--image: wan2\.1-i2v-14b also takes CLIP features of the image \(image_dim=1280\): "
     r"give --image-encoder"),
    (["--model", "wan2.2-ti2v-5b", "--image", "IMG", "--vae", "ONE", "--image-encoder", "ONE"],
     r"--image-encoder: wan2\.2-ti2v-5b takes no CLIP image features"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--vae", "ONE", "--image-encoder",
      "ABSENT"], r"--image-encoder '.*absent' not found"),
    (["--model", "wan2.1-i2v-14b", "--image-encoder", "ONE"],
     r"--image-encoder is read only with --image, which is not given"),
    (["--image", "IMG", "--checkpoint", None], r"--image needs a real model \(--checkpoint\)"),
    (["--family", "hunyuan", "--last-image", "IMG", "--checkpoint", None],
     r"--last-image is read only for wan \(this run is hunyuan\)"),
    (["--model", "wan2.1-i2v-14b", "--image", "ABSENT"], r"--image '.*absent' not found"),
    (["--model", "wan2.1-i2v-14b", "--image", "NOTES"],
     r"--image: .*notes\.png is not an image Pillow can read"),
])
def test_bad_wan22_and_image_flags(tmp_path, saved, no_model_work, args,  # noqa: F811
                                   match):
    """Each problem stops the run before any model work, naming its flag; nothing is
    written."""
    work = tmp_path / "work"
    work.mkdir()
    image = _png(work / "i.png", 480, 832)
    (work / "notes.png").write_text("not an image")
    one = str(saved / "t2v-a14b")
    names = {"IMG": image, "ONE": one, "ABSENT": str(work / "absent"),
             "NOTES": str(work / "notes.png")}
    args = [names.get(a, a.replace("ONE", one)) if a else a for a in args]
    if "--checkpoint" in args:  # [..., "--checkpoint", None]: no checkpoint (tiny model)
        i = args.index("--checkpoint")
        args = args[:i] + args[i + 2:] if args[i + 1] is None else args
    else:
        args += ["--checkpoint", one]
    if "--family" not in args:
        np.save(work / "emb.npy", np.zeros((4, 32), np.float32))
        args += ["--text-embeddings", str(work / "emb.npy")]
    run_fails(["--out", work / "x.mp4", *args], match, work)


def test_a_vae_of_another_compression_is_refused():
    """TI2V-5B's latents come from the Wan2.2 VAE (16x in space): a Wan2.1 VAE is named."""
    problems = wan_vae_problems(wan_vae.get_config("wan2.1-vae"), "v21",
                                WAN_MODELS["wan2.2-ti2v-5b"])
    assert problems == ["--vae v21 compresses 4x in time and 8x in space; wan2.2-ti2v-5b's "
                        "latents come from a 4x / 16x VAE (wan2.2-vae)"]
    assert wan_vae_problems(wan_vae.get_config("wan2.2-vae"), "v22",
                            WAN_MODELS["wan2.2-ti2v-5b"]) == []


def test_image_to_video_end_to_end(tmp_path):
    """A tiny I2V transformer (config.json model: first-and-last-frame conditioning, 4 + 4
    channels on top of 4 noise channels), a tiny Wan2.1-style VAE (a diffusers folder the
    JAX VAE reads: it encodes the frames and decodes the result), an image of the video's
    aspect ratio."""
    diffusers = pytest.importorskip("diffusers")
    from test_wan_helpers import torch_model
    from test_wan_vae import TINY as TINY_VAE
    from vae_helpers import random_torch_vae

    cfg = TINY["i2v-a14b"]
    torch_model(cfg).save_pretrained(tmp_path / "transformer", safe_serialization=True)
    random_torch_vae(diffusers.AutoencoderKLWan, TINY_VAE["wan2.1"]).save_pretrained(
        tmp_path / "vae", safe_serialization=True)
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(8, 32)).astype(
        np.float32))
    out = tmp_path / "v.mp4"
    argv = ["--checkpoint", str(tmp_path / "transformer"),
            "--model", str(tmp_path / "transformer" / "config.json"),
            "--image", _png(tmp_path / "i.png", 64, 96), "--vae", str(tmp_path / "vae"),
            "--text-embeddings", str(tmp_path / "emb.npy"), "--height", "32", "--width", "48",
            "--frames", "9", "--steps", "3", "--qc", "4", "--kc", "6", "--dense-fraction",
            "0.34", "--out", str(out), "--no-progress"]
    report = generate.main(argv)
    assert report["image"] == {"first": str(tmp_path / "i.png"), "last": None,
                               "image_encoder": None}
    assert report["video"]["latent_shape"] == [4, 3, 4, 6]
    assert report["video"]["mp4_content"] == "decoded by the VAE"
    assert report["sampling"]["steps"] == 3 and out.stat().st_size > 0
    assert "guidance_2" not in report["sampling"] and report["nonfinite"] is None
    dens = np.asarray(report["density_per_step_pass_layer"])
    assert (dens[:1] == 1).all() and (dens[1:, :, 1] < 1).all()
    json.loads((tmp_path / "v.json").read_text())
    with pytest.raises(SystemExit, match="--image: .* is an image-to-video model: give it an "
                                         "image"):
        generate.main(argv[:4] + ["--text-embeddings", str(tmp_path / "emb.npy"), "--out",
                                  str(tmp_path / "w.mp4"), "--no-progress"])


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Tiny Wan repos as diffusers / transformers save them: a Wan2.2 I2V-A14B-like one
    (transformer/ + transformer_2/, text_encoder/ + tokenizer/, vae/) and a Wan2.1
    FLF2V-like one (transformer/, image_encoder/ + image_processor/ for 28-pixel CLIP
    inputs, sharing the text parts and the VAE)."""
    diffusers = pytest.importorskip("diffusers")
    from test_text_helpers import saved as save_encoder
    from test_text_helpers import torch_encoder, umt5_tokenizer
    from test_wan_helpers import torch_model
    from test_wan_vae import TINY as TINY_VAE
    from vae_helpers import random_torch_vae

    root = tmp_path_factory.mktemp("wan_repos")
    a14b, flf2v = root / "a14b", root / "flf2v"
    for i, name in enumerate(("transformer", "transformer_2")):
        torch_model(TINY["i2v-a14b"], seed=i).save_pretrained(a14b / name,
                                                              safe_serialization=True)
    umt5_tokenizer(a14b / "tokenizer")
    save_encoder(torch_encoder("umt5", d_model=32), a14b / "text_encoder")
    random_torch_vae(diffusers.AutoencoderKLWan, TINY_VAE["wan2.1"]).save_pretrained(
        a14b / "vae", safe_serialization=True)
    torch_model(TINY["flf2v-2.1"], seed=2).save_pretrained(flf2v / "transformer",
                                                           safe_serialization=True)
    save_encoder(torch_encoder("clip_vision", seed=3), flf2v / "image_encoder")
    (flf2v / "image_processor").mkdir()
    (flf2v / "image_processor" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}}))
    return a14b, flf2v


def test_two_experts_and_clip_image_runs_import_no_torch(repos, tmp_path):
    """In a fresh interpreter that must not import torch: a two-expert image-to-video run
    (a tiny spec registered as a released model: boundary 900, guidance 3.5 / 2.0) from a
    --prompt through the JAX umT5 and the JAX VAE, first and last frame; then a Wan2.1
    FLF2V-style run whose CLIP features come from the JAX vision tower."""
    from svg2_jax.sampling import FlowUniPC

    a14b, flf2v = repos
    first, last = _png(tmp_path / "first.png", 64, 96, 1), _png(tmp_path / "last.png", 64, 96, 2)
    two, clip = tmp_path / "two.mp4", tmp_path / "clip.mp4"
    common = ["--frames", "9", "--qc", "4", "--kc", "6", "--vae", str(a14b / "vae"),
              "--prompt", "a fox turns around", "--text-encoder", str(a14b / "text_encoder"),
              "--tokenizer", str(a14b / "tokenizer"), "--no-progress"]
    run_torch_free(f"""
from svg2_jax.cli.generate import main
from svg2_jax.models.wan import get_config
from svg2_jax.pipelines import wan_models as m

m.WAN_MODELS["tiny-i2v-a14b"] = m.WanModelSpec(
    "tiny-i2v-a14b", get_config({str(a14b / 'transformer' / 'config.json')!r}),
    boundary_ratio=0.9, image=m.FIRST_LAST, steps=4, guidance=3.5, guidance_2=2.0, shift=5.0,
    shift_hd=5.0, height=32, width=48, frames=9)
main(["--checkpoint", {str(a14b)!r}, "--model", "tiny-i2v-a14b", "--image", {first!r},
      "--last-image", {last!r}, "--dense-fraction", "0.25", "--out", {str(two)!r}]
     + {common!r})
main(["--checkpoint", {str(flf2v / 'transformer')!r}, "--model",
      {str(flf2v / 'transformer' / 'config.json')!r}, "--image", {first!r}, "--last-image",
      {last!r}, "--image-encoder", {str(flf2v / 'image_encoder')!r}, "--height", "32",
      "--width", "48", "--steps", "2", "--out", {str(clip)!r}] + {common!r})
""", timeout=600)
    report = json.loads(two.with_suffix(".json").read_text())
    assert report["model"]["experts"] == [str(a14b / "transformer"), str(a14b / "transformer_2")]
    assert report["image"] == {"first": first, "last": last, "image_encoder": None}
    assert report["text"]["source"] == "--prompt"
    assert (report["video"]["height"], report["video"]["width"]) == (32, 48)  # the image's
    timesteps = np.asarray(FlowUniPC(flow_shift=5.0).schedule(4)[0], np.float32)
    want = (timesteps < np.float32(900.0)).astype(int).tolist()
    s = report["sampling"]
    assert s["expert_per_step"] == want and set(want) == {0, 1}
    assert (s["steps"], s["guidance"], s["guidance_2"], s["boundary_timestep"]) == (
        4, 3.5, 2.0, 900.0)
    assert report["video"]["mp4_content"] == "decoded by the VAE"
    assert report["nonfinite"] is None and two.stat().st_size > 0
    report = json.loads(clip.with_suffix(".json").read_text())
    assert report["image"]["image_encoder"] == str(flf2v / "image_encoder")
    assert "experts" not in report["model"] and "guidance_2" not in report["sampling"]
    assert report["nonfinite"] is None and clip.stat().st_size > 0
