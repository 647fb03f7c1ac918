"""Bad inputs to the Wan2.2 / image-to-video paths get errors that say what is wrong and
what is there: missing or extra experts, a checkpoint of another Wan model, images the
model does not take or of the wrong size, conditions that do not fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from test_wan_helpers import torch, torch_model
from test_wan22_pipelines import TINY

from svg2_jax.models.wan import PRESETS
from svg2_jax.models.wan.identify import (_architecture_of_shapes, checkpoint_architecture,
                                          describe_checkpoint, matching_presets)
from svg2_jax.pipelines import wan as pipe
from svg2_jax.pipelines.wan_i2v import WanImageCondition, check_images, video_size
from svg2_jax.pipelines.wan_models import WAN_MODELS, WanModelSpec, model_spec
from svg2_jax.sampling import FlowUniPC, SamplerConfig

T2V2 = WanModelSpec("tiny-t2v-a14b", TINY["t2v-a14b"], boundary_ratio=0.875)
T2V1 = WanModelSpec("tiny-t2v", TINY["t2v-a14b"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    for kind in ("t2v-a14b", "i2v-2.1"):
        torch_model(TINY[kind]).save_pretrained(root / kind / "transformer",
                                                safe_serialization=True)
    return root


def test_missing_and_extra_experts(saved, tmp_path):
    one = saved / "t2v-a14b"  # a diffusers repo root with transformer/ only
    with pytest.raises(ValueError, match=r"needs two experts, but .* holds transformer/ "
                                         r"without transformer_2/ \(it holds: transformer/\)"):
        pipe.expert_paths(T2V2, one)
    with pytest.raises(ValueError, match="needs two experts .* holds one file"):
        pipe.expert_paths(T2V2, one / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="second expert checkpoint not found"):
        pipe.expert_paths(T2V2, one, tmp_path / "absent")
    with pytest.raises(ValueError, match="has one transformer: a second checkpoint"):
        pipe.expert_paths(T2V1, one, one)
    assert pipe.expert_paths(T2V1, one) == (one / "transformer",)
    both = tmp_path / "both"
    (both / "transformer").mkdir(parents=True)
    (both / "transformer_2").mkdir()
    with pytest.raises(ValueError, match=r"holds two experts \(transformer/ and transformer_2/"
                                         r"\): a Wan2.2 A14B checkpoint"):
        pipe.expert_paths(T2V1, both)
    assert pipe.expert_paths(T2V2, both) == (both / "transformer", both / "transformer_2")
    assert pipe.expert_paths(T2V2, one / "transformer", one / "transformer") == (
        one / "transformer", one / "transformer")


def test_a_checkpoint_of_another_wan_model_is_named(saved):
    """Wan2.1-I2V-like weights (CLIP image input) given as a Wan2.2-like expert: the error
    lists the mismatches and says what the checkpoint holds."""
    path = saved / "i2v-2.1" / "transformer"
    with pytest.raises(ValueError) as e:
        pipe.load_experts(T2V2, path, path, dtype=jnp.float32)
    text = str(e.value)
    assert "tiny-t2v-a14b high-noise expert" in text
    assert "CLIP image_dim 32" in text and "in_channels 12" in text
    assert "holds a Wan transformer of 2 layers, dim 24" in text
    arch = checkpoint_architecture(path)
    assert arch["image_dim"] == 32 and arch["num_layers"] == 2 and matching_presets(arch) == []


@pytest.mark.parametrize("preset", ["wan2.2-ti2v-5b", "wan2.1-flf2v-14b", "wan2.2-i2v-a14b"])
def test_released_architectures_are_recognised_from_shapes(preset):
    """The shapes of diffusers' model of a preset (meta device) identify the preset."""
    import diffusers

    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(**PRESETS[preset].to_diffusers())
    arch = _architecture_of_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert preset in matching_presets(arch)
    if preset == "wan2.2-i2v-a14b":
        assert matching_presets(arch) == ["wan2.2-i2v-a14b"]  # no CLIP: not Wan2.1 I2V


def test_wan21_t2v_14b_and_a_wan22_expert_share_an_architecture():
    from svg2_jax.models.wan.identify import _architecture_of_config

    arch = _architecture_of_config(PRESETS["wan2.1-t2v-14b"])
    assert matching_presets(arch) == ["wan2.1-t2v-14b", "wan2.2-t2v-a14b"]


def test_describe_an_unreadable_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert describe_checkpoint(tmp_path) is None


def test_images_the_model_does_not_take():
    check_images(WAN_MODELS["wan2.2-ti2v-5b"], None, None)  # TI2V: text-to-video too
    for name, image, last, match in [
        ("wan2.2-i2v-a14b", None, None, "is an image-to-video model: give it an image"),
        ("wan2.2-t2v-a14b", "img", None, "is a text-to-video model: it takes no image"),
        ("wan2.1-i2v-14b", "img", "img", "takes no last image: .*wan2.1-flf2v-14b"),
        ("wan2.2-ti2v-5b", "img", "img", "takes no last image"),
        ("wan2.1-flf2v-14b", None, "img", "a last image needs a first image"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_images(WAN_MODELS[name], image, last)


def test_video_size_follows_or_checks_the_image():
    # diffusers' I2V example / the reference: round(sqrt(area * aspect)) // 16 * 16 ...:
    # sqrt(399360 * 0.5625) = 473.96 -> 464; sqrt(399360 / 0.5625) = 842.6 -> 832
    assert video_size((720, 1280), None, None, 480 * 832, 16) == (464, 832)
    assert video_size((1024, 1024), None, None, 720 * 1280, 16) == (960, 960)
    assert video_size((720, 1280), 480, 832, 480 * 832, 16) == (480, 832)  # 2.5% off: fine
    with pytest.raises(ValueError, match=r"the image is 600x1000 \(aspect 0.600\) but the "
                                         r"video 832x480 .* would be stretched"):
        video_size((1000, 600), 480, 832, 480 * 832, 16)
    with pytest.raises(ValueError, match="give both height and width"):
        video_size((1000, 600), 480, None, 480 * 832, 16)


def test_conditions_that_do_not_fit_the_model_or_the_latents():
    from flax import nnx

    from svg2_jax.models.wan import WanTransformer3DModel

    def sampler(kind):
        model = nnx.eval_shape(lambda: WanTransformer3DModel(
            TINY[kind], dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
        return pipe.WanSampler(model, FlowUniPC(), SamplerConfig(num_steps=2, progress=False))

    latents = jnp.zeros((1, 4, 3, 4, 6))
    z = jnp.zeros((1, 8, 3, 4, 6))
    clip = jnp.zeros((1, 17, 32))
    i2v, i2v21, ti2v = sampler("i2v-a14b"), sampler("i2v-2.1"), sampler("ti2v-5b")
    for s, cond, match in [
        (i2v, None, "image-to-video model: pass an image condition"),
        (i2v, WanImageCondition(jnp.zeros((1, 8, 3, 8, 12))),
         r"condition latents \(1, 8, 3, 8, 12\) do not fit: the model takes 8 conditioning "
         r"channels at the latents' size \(1, 8, 3, 4, 6\)"),
        (i2v21, WanImageCondition(z), "takes CLIP image features .* has none"),
        (i2v, WanImageCondition(z, None, clip), "CLIP image features this model does not take"),
        (i2v, WanImageCondition(jnp.zeros((1, 4, 1, 4, 6)), jnp.ones((1, 1, 3, 4, 6))),
         "first-frame .* condition for a model with 8 conditioning channels"),
        (ti2v, WanImageCondition(z), "conditions on the first frame: replace_first_frame=True"),
        (ti2v, WanImageCondition(jnp.zeros((1, 4, 1, 8, 12)), jnp.ones((1, 1, 3, 4, 6))),
         "first-frame condition latents .* do not fit"),
    ]:
        with pytest.raises(ValueError, match=match):
            s.check_condition(latents, cond)
    with pytest.raises(ValueError, match="latents have 12 channels; the model denoises "
                                         "out_channels=4"):
        i2v.check_condition(jnp.zeros((1, 12, 3, 4, 6)), WanImageCondition(z))
    ti2v.check_condition(latents, None)  # TI2V without an image: text-to-video


def test_a_last_image_for_ti2v_raises_before_encoding():
    from svg2_jax.pipelines.wan_i2v import image_condition

    image = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(ValueError, match="TI2V-5B conditions on the first frame only"):
        image_condition(None, image, image, height=64, width=96, num_frames=9,
                        replace_first_frame=True)


def test_model_spec_of_configs_and_names():
    assert model_spec("wan2.2-t2v-a14b").boundary_timestep == 875.0
    assert model_spec("wan2.2-i2v-a14b").boundary_timestep == 900.0
    assert model_spec(PRESETS["wan2.2-ti2v-5b"]).expand_timesteps
    assert model_spec(PRESETS["wan2.1-flf2v-14b"]).takes_last_image
    assert model_spec(PRESETS["wan2.1-i2v-14b"]).image_encoder == "clip-vit-h-14-vision"
    with pytest.raises(ValueError, match="unknown Wan preset 'wan2.3'"):
        model_spec("wan2.3")
    assert pipe.latent_shape(PRESETS["wan2.2-ti2v-5b"], 704, 1280, 121, "wan2.2-ti2v-5b") == (
        48, 31, 44, 80)
    with pytest.raises(ValueError, match="height=720 must be a positive multiple of 32"):
        pipe.latent_shape(PRESETS["wan2.2-ti2v-5b"], 720, 1280, 121, "wan2.2-ti2v-5b")


def test_both_experts_convert_to_one_orbax_directory(tmp_path, capsys):
    """convert_experts: an official high_noise_model/ + low_noise_model/ directory ->
    out/transformer + out/transformer_2, the same parameters as reading the source; the
    CLI refuses a two-expert directory for a one-transformer model."""
    import json

    from test_wan_helpers import same_params
    from test_wan22_pipelines import _save_official

    from convert.cli import main as convert_main
    from convert.wan import convert_experts, holds_experts

    cfg = TINY["t2v-a14b"]
    for name, seed in (("high_noise_model", 0), ("low_noise_model", 1)):
        _save_official(torch_model(cfg, seed=seed), tmp_path / "src" / name)
    assert holds_experts(tmp_path / "src")
    reports = convert_experts(tmp_path / "src", "wan", T2V2, tmp_path / "out", dtype=jnp.float32)
    assert [r.tensors for r in reports] == [len(torch_model(cfg).state_dict())] * 2
    ours = pipe.load_experts(T2V2, tmp_path / "out", dtype=jnp.float32)
    direct = pipe.load_experts(T2V2, tmp_path / "src", dtype=jnp.float32)
    assert all(same_params(a, b) for a, b in zip(ours, direct))
    assert not same_params(*ours)
    # the pair is ours: replaced only with overwrite, and not once something else is in it
    with pytest.raises(ValueError, match="already exists"):
        convert_experts(tmp_path / "src", "wan", T2V2, tmp_path / "out", dtype=jnp.float32)
    convert_experts(tmp_path / "src", "wan", T2V2, tmp_path / "out", dtype=jnp.float32,
                    overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["transformer",
                                                                    "transformer_2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"--overwrite replaces only .* or transformer/ \+ "
                                         r"transformer_2/ of two of them\), and .* holds "
                                         r"notes\.txt"):
        convert_experts(tmp_path / "src", "wan", T2V2, tmp_path / "out", dtype=jnp.float32,
                        overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg.to_diffusers()))
    assert convert_main(["--from", "wan", str(tmp_path / "src"), "--model", str(config),
                         "--out", str(tmp_path / "cli"), "--quiet"]) == 1
    assert "holds two experts (high_noise_model/ and low_noise_model/): a Wan2.2 A14B" in \
        capsys.readouterr().err
    assert not (tmp_path / "cli").exists()
