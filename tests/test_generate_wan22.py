"""svg2-generate for Wan2.2 and image-to-video: the models' defaults (the released
settings, the reference's I2V warm-up), an image-to-video run end to end on tiny
checkpoints, and the errors of its new flags."""

import json

import numpy as np
import pytest

from svg2_jax import SVG2Config
from svg2_jax.cli import generate

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
    (["--model", "wan2.2-t2v-a14b", "--image", "IMG"], "is a text-to-video model"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--height", "832", "--width", "480"],
     "would be stretched"),
    (["--model", "wan2.1-t2v-14b", "--guidance-2", "3"], "wan2.1-t2v-14b has one transformer"),
    (["--model", "wan2.2-t2v-a14b", "--checkpoint", "ONE"],
     "needs two experts, but .* holds transformer/ without transformer_2/"),
    (["--model", "wan2.1-t2v-14b", "--checkpoint-2", "ONE"], "has one transformer"),
    (["--model", "wan2.2-i2v-a14b", "--image", "IMG", "--checkpoint", "ONE"],
     "needs two experts"),
    (["--model", "wan2.1-i2v-14b", "--image", "IMG", "--last-image", "IMG", "--checkpoint",
      "ONE/transformer"], "takes no last image"),
    (["--image", "IMG"], "need a real model"),
    (["--model", "wan2.1-i2v-14b", "--image", "absent.png"], "image file not found"),
])
def test_bad_wan22_and_image_flags(tmp_path, saved, args, match):  # noqa: F811
    image = _png(tmp_path / "i.png", 480, 832)
    one = str(saved / "t2v-a14b")
    args = [{"IMG": image, "ONE": one}.get(a, a.replace("ONE", one)) for a in args]
    if "--checkpoint" not in args and "--model" in args:
        args += ["--checkpoint", one]
    with pytest.raises(SystemExit, match=match):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--no-progress"] + args)


def test_image_to_video_end_to_end(tmp_path):
    """A tiny I2V transformer (config.json model: first-frame conditioning, 4 + 4 channels
    on top of 4 noise channels), a tiny Wan2.1-style VAE (diffusers folder: encodes the
    frame in JAX, decodes through diffusers), an image of the video's aspect ratio."""
    torch = pytest.importorskip("torch")
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
    assert report["image"]["first"].endswith("i.png")
    assert report["video"]["latent_shape"] == [4, 3, 4, 6]
    assert report["video"]["mp4_content"] == "decoded by the VAE"
    assert report["sampling"]["steps"] == 3 and out.stat().st_size > 0
    dens = np.asarray(report["density_per_step_pass_layer"])
    assert (dens[:1] == 1).all() and (dens[1:, :, 1] < 1).all()
    with pytest.raises(SystemExit, match="--image needs --vae"):
        generate.main([a for a in argv if a not in ("--vae", str(tmp_path / "vae"))])
    with pytest.raises(SystemExit, match="is an image-to-video model: give it an image"):
        generate.main(argv[:4] + ["--out", str(out), "--no-progress"])
    json.loads((tmp_path / "v.json").read_text())
