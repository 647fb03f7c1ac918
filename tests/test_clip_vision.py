"""The CLIP vision tower (svg2_jax.models.clip_vision) against transformers' CLIPVisionModel,
and its image preprocessing against transformers' CLIPImageProcessor (Pillow backend), on
tiny random configs (fp32, CPU)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from test_text_helpers import rel_error, saved, torch, torch_encoder, transformers

from convert.cli import main as convert_main
from svg2_jax.models import clip_vision
from svg2_jax.models.clip_vision.preprocess import CLIPImageProcessing, clip_pixel_values

TOL = 1e-4


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    model = torch_encoder("clip_vision")
    path = saved(model, tmp_path_factory.mktemp("clip_vision"))
    return model, path


def _pixels(batch=2, size=28, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_hidden_states_match_transformers(tower):
    model, path = tower
    ours = clip_vision.load(path)  # the config.json beside the weights
    x = _pixels()
    with torch.no_grad():
        want = model(x, output_hidden_states=True)
    states = ours.hidden_states(jnp.asarray(x.numpy()))
    assert states.shape[0] == len(want.hidden_states) == 4
    for i, h in enumerate(want.hidden_states):
        assert rel_error(states[i], h) <= TOL, i
    last, pooled = ours(jnp.asarray(x.numpy()))
    assert rel_error(last, want.last_hidden_state) <= TOL
    assert rel_error(pooled, want.pooler_output) <= TOL
    penultimate = clip_vision.penultimate_hidden_states(ours, jnp.asarray(x.numpy()))
    assert rel_error(penultimate, want.hidden_states[-2]) <= TOL
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 28, 28\]"):
        ours(jnp.zeros((1, 3, 32, 32)))


def test_with_projection_and_transformers_4_keys_through_orbax(tower, tmp_path):
    """CLIPVisionModelWithProjection saved by transformers 4 (`vision_model.` keys, a
    `visual_projection` head and `position_ids`, as laion's CLIP-ViT-H-14): the same tower;
    svg2-convert --from transformers writes it to orbax."""
    from safetensors.numpy import load_file, save_file

    model, path = tower
    state = {f"vision_model.{k}": v for k, v in load_file(path / "model.safetensors").items()}
    state["vision_model.embeddings.position_ids"] = np.arange(17, dtype=np.int64)[None]
    state["visual_projection.weight"] = np.zeros((16, 32), np.float32)
    src = tmp_path / "v4"
    src.mkdir()
    save_file(state, str(src / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(
        {**config, "architectures": ["CLIPVisionModelWithProjection"]}))
    assert convert_main(["--from", "transformers", str(src), "--model", str(src / "config.json"),
                         "--out", str(tmp_path / "orbax"), "--quiet"]) == 0
    ours = clip_vision.load(tmp_path / "orbax")
    x = _pixels(1, seed=3)
    with torch.no_grad():
        want = model(x, output_hidden_states=True).hidden_states[-2]
    assert rel_error(clip_vision.penultimate_hidden_states(ours, jnp.asarray(x.numpy())),
                     want) <= TOL


def test_preset_matches_the_released_image_encoder():
    """clip-vit-h-14-vision has transformers' shapes for the released config."""
    cfg = clip_vision.PRESETS["clip-vit-h-14-vision"]
    theirs = transformers.CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024)
    assert clip_vision.CLIPVisionConfig.from_transformers(theirs.to_dict()) == cfg
    assert cfg.num_positions == 257


@pytest.mark.parametrize("size", [(300, 200), (180, 240), (224, 224), (150, 100)])
def test_preprocessing_matches_clip_image_processor(size):
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    rgba = image.convert("RGBA")
    want = CLIPImageProcessorPil()(images=[image, rgba], return_tensors="np")["pixel_values"]
    ours = clip_pixel_values([image, np.asarray(image)])
    assert ours.dtype == np.float32 and ours.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(ours, want)


def test_processing_settings_from_json(tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"crop_size": 224, "do_center_crop": True, "do_normalize": True,
                                "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                                "image_std": [0.5, 0.5, 0.5], "resample": 3, "size": 224,
                                "feature_extractor_type": "CLIPFeatureExtractor"}))
    p = CLIPImageProcessing.from_json(path)
    assert p.crop_size == (224, 224) and p.shortest_edge == 224 and p.image_mean == (0.5,) * 3
    path.write_text(json.dumps({"size": {"height": 224, "width": 224}}))
    with pytest.raises(ValueError, match="not a shortest_edge resize"):
        CLIPImageProcessing.from_json(path)
