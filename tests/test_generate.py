import dataclasses
import json

import numpy as np
import pytest

from svg2_jax import SVG2Config
from svg2_jax.cli import defaults, generate
from svg2_jax.models import hunyuan, wan
from svg2_jax.pipelines.hunyuan import HunyuanSampler
from svg2_jax.sampling import SamplerConfig


def test_tiny_model_end_to_end(tmp_path):
    out = tmp_path / "v.mp4"
    report = generate.main(["--out", str(out), "--steps", "6", "--no-progress"])
    assert out.exists() and out.stat().st_size > 0
    on_disk = json.loads((tmp_path / "v.json").read_text())
    assert on_disk["model"].startswith("TINY RANDOM")
    dens = np.asarray(on_disk["density_per_step_pass_layer"])  # [steps, passes, layers]
    assert dens.shape == (6, 2, 2)
    n_dense = on_disk["sampling"]["dense_warmup_steps"]
    assert n_dense == 1 and (dens[:n_dense] == 1).all()
    assert (dens[:, :, 0] == 1).all()  # layer 0 always dense
    assert (dens[n_dense:, :, 1] < 1).all()  # sparse afterwards
    # the mean leaves the always-dense layer 0 out
    assert on_disk["density_mean_sparse_steps"] == pytest.approx(dens[n_dense:, :, 1].mean(),
                                                                 abs=1e-4)
    # the mp4 is a latent preview: one frame per latent frame, and says so
    import imageio.v3 as iio
    assert iio.imread(out, plugin="FFMPEG").shape[0] == on_disk["video"]["mp4_frames"] == 5
    assert on_disk["video"]["frames"] == 17
    assert on_disk["video"]["mp4_content"].startswith("latent preview, not a decode: 5 frames")
    assert on_disk["nonfinite"] is None and sorted(p.name for p in tmp_path.iterdir()) == [
        "v.json", "v.latents.npy", "v.mp4"]
    assert report["timings_s"]["sample"] > 0
    # what was run: the configs' defaults, with the tiny model's clusters and size
    cfg = SVG2Config()
    att = report["attention"]
    assert (att["qc"], att["kc"]) == defaults.TINY_CLUSTERS
    assert att["top_p"] == cfg.top_p and att["min_kc_ratio"] == cfg.min_kc_ratio
    assert (att["selection"], att["error_tolerance"], att["error_pool"], att["compensation"],
            att["compensate_own_key"]) == (cfg.selection, cfg.error_tolerance, cfg.error_pool,
                                           cfg.compensation, cfg.compensate_own_key)
    assert (att["kmeans_iters_cold"], att["kmeans_iters_warm"]) == (cfg.kmeans_iters_cold,
                                                                    cfg.kmeans_iters_warm)
    assert att["dense_layers"] == [0] and att["target_density"] is None
    assert att["shared_cfg_cache"] == SamplerConfig().share_cfg_cache
    samp = report["sampling"]
    assert samp["guidance"] == SamplerConfig().guidance_scale
    assert samp["scheduler"] == "unipc" and samp["shift"] == 3.0
    assert report["video"]["fps"] == 16
    lat = np.load(tmp_path / "v.latents.npy")
    assert lat.shape == (1, 16, 5, 16, 24) and np.isfinite(lat).all()


def test_fixed_density_budget(tmp_path):
    report = generate.main(["--out", str(tmp_path / "b.mp4"), "--steps", "4",
                            "--target-density", "0.3", "--no-progress"])
    assert report["attention"]["target_density"] == 0.3
    assert report["attention"]["sparse_backend"].startswith("jax")
    assert 0.2 < report["density_mean_sparse_steps"] < 1.0


def test_dense_attention_and_euler(tmp_path):
    report = generate.main(["--out", str(tmp_path / "d.mp4"), "--attention", "dense",
                            "--scheduler", "euler", "--steps", "3", "--no-progress"])
    assert report["density_mean_sparse_steps"] == 1.0


@pytest.mark.parametrize("args,match", [
    (["--frames", "10"], "1 \\+ 4k"),
    (["--height", "100"], "multiple of 16"),
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint '/nonexistent/ckpt' not found"),
    (["--qc", "600"], "fewer than the clusters"),
    (["--top-p", "1.5"], "--top-p must be in \\(0, 1\\], got 1.5"),
    (["--target-density", "0"], "--target-density must be in"),
    pytest.param(["--sparse-backend", "pallas"], "Hopper",
                 marks=pytest.mark.skipif(__import__("jax").default_backend() == "gpu",
                                          reason="on a GPU machine this may be a Hopper")),
    (["--text-embeddings", "/nonexistent.npy"], "not found"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, match):
    with pytest.raises(SystemExit, match=match):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--no-progress"] + args)


def test_text_embeddings_are_checked(tmp_path):
    bad = tmp_path / "e.npy"
    np.save(bad, np.zeros((4, 7), np.float32))
    with pytest.raises(SystemExit, match="must be \\[L, 64\\]"):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--text-embeddings", str(bad)])
    nan = tmp_path / "n.npy"
    np.save(nan, np.full((4, 64), np.nan, np.float32))
    with pytest.raises(SystemExit, match="NaN"):
        generate.main(["--out", str(tmp_path / "x.mp4"), "--text-embeddings", str(nan)])


def test_tiny_hunyuan_end_to_end(tmp_path):
    out = tmp_path / "h.mp4"
    report = generate.main(["--family", "hunyuan", "--out", str(out), "--steps", "10",
                            "--no-progress"])
    assert out.exists() and report["family"] == "hunyuan"
    assert report["sampling"]["embedded_guidance"] == 6.0 and report["sampling"]["shift"] == 7.0
    dens = np.asarray(report["density_per_step_pass_layer"])  # [steps, 1 pass, 2 layers]
    assert dens.shape == (10, 1, 2)
    assert (dens[:1] == 1).all() and (dens[:, :, 0] == 1).all()  # 10% warm-up, layer 0
    assert (dens[1:, :, 1] < 1).all()


def test_hunyuan_text_file_and_unsupported_flags(tmp_path):
    from svg2_jax.pipelines.hunyuan import TINY_CONFIG as cfg
    good = tmp_path / "t.npz"
    np.savez(good, prompt_embeds=np.random.rand(12, cfg.text_embed_dim).astype(np.float32),
             prompt_attention_mask=np.arange(12) < 7,
             pooled_prompt_embeds=np.random.rand(cfg.pooled_projection_dim).astype(np.float32))
    report = generate.main(["--family", "hunyuan", "--out", str(tmp_path / "h.mp4"),
                            "--text-embeddings", str(good), "--steps", "2", "--attention",
                            "dense", "--no-progress"])
    assert report["density_mean_sparse_steps"] == 1.0
    bad = tmp_path / "b.npz"
    np.savez(bad, prompt_embeds=np.zeros((12, 5), np.float32))
    with pytest.raises(SystemExit, match="lacks"):
        generate.main(["--family", "hunyuan", "--out", str(tmp_path / "x.mp4"),
                       "--text-embeddings", str(bad)])
    with pytest.raises(SystemExit, match="not supported for HunyuanVideo"):
        generate.main(["--family", "hunyuan", "--out", str(tmp_path / "x.mp4"),
                       "--negative-embeddings", str(good)])
    with pytest.raises(SystemExit, match="scheduler euler"):
        generate.main(["--family", "hunyuan", "--out", str(tmp_path / "x.mp4"),
                       "--scheduler", "unipc"])


def test_console_entry_point_exits_zero(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["svg2-generate", "--out", str(tmp_path / "c.mp4"),
                                     "--steps", "2", "--attention", "dense", "--no-progress"])
    assert generate.cli() == 0


def _resolve(*argv):
    return generate.resolve(generate.parse_args(list(argv)))


def test_defaults_come_from_the_configs():
    wan_480 = _resolve("--checkpoint", "ckpt")
    assert wan_480.family == "wan" and wan_480.model in wan.PRESETS
    assert wan_480.svg2 == dataclasses.replace(SVG2Config(), num_q_clusters=200)
    assert wan_480.sampler == SamplerConfig()
    assert (wan_480.height, wan_480.width, wan_480.frames) == (480, 832, 81)
    assert wan_480.guidance == SamplerConfig().guidance_scale and wan_480.shift == 3.0
    wan_720 = _resolve("--checkpoint", "ckpt", "--height", "720", "--width", "1280")
    assert wan_720.svg2 == SVG2Config() and wan_720.shift == 5.0
    # a preset name picks the family; HunyuanVideo's guidance is the sampler's own default
    hy = _resolve("--checkpoint", "c", "--model", "hunyuan-video-t2v-720p", "--height", "1280",
                  "--width", "720")
    assert hy.family == "hunyuan" and hy.model in hunyuan.PRESETS
    assert hy.svg2 == dataclasses.replace(SVG2Config(), num_q_clusters=400)
    assert hy.guidance == HunyuanSampler.__dataclass_fields__["embedded_guidance"].default
    assert hy.sampler == dataclasses.replace(SamplerConfig(), guidance_scale=1.0,
                                             dense_fraction=0.1)
    assert hy.scheduler == "euler" and hy.shift == 7.0


def test_flags_override_only_what_they_name():
    run = _resolve("--checkpoint", "c", "--kc", "500", "--selection", "svg2", "--top-p", "0.8",
                   "--guidance", "3", "--dense-fraction", "0.5", "--separate-cfg-cache",
                   "--dense-layers", "0,3", "--no-progress", "--steps", "7")
    assert run.svg2 == dataclasses.replace(SVG2Config(), num_q_clusters=200,
                                           num_k_clusters=500, selection="svg2", top_p=0.8)
    assert run.sampler == SamplerConfig(num_steps=7, guidance_scale=3.0, dense_fraction=0.5,
                                        share_cfg_cache=False, progress=False)
    assert run.dense_layers == (0, 3)
    dense = _resolve("--attention", "dense")
    assert dense.svg2 is None and dense.sampler.dense_fraction == 0.0
    assert dense.sampler.num_steps == defaults.TINY_STEPS


def test_selection_and_compensation_flags():
    # the default is the paper's rule; --reference-svg2 says so explicitly
    assert _resolve("--checkpoint", "c").svg2 == SVG2Config.reference(num_q_clusters=200)
    ref = _resolve("--checkpoint", "c", "--reference-svg2")
    assert ref.svg2 == SVG2Config.reference(num_q_clusters=200)
    ref = _resolve("--checkpoint", "c", "--reference-svg2", "--top-p", "0.8")
    assert ref.svg2 == SVG2Config.reference(num_q_clusters=200, top_p=0.8)
    # --selection error is the error-aware preset, compensated unless --no-compensation
    run = _resolve("--checkpoint", "c", "--selection", "error")
    assert run.svg2 == SVG2Config.error_aware(num_q_clusters=200)
    run = _resolve("--checkpoint", "c", "--selection", "error", "--error-tolerance", "0.05",
                   "--no-compensation")
    assert run.svg2 == SVG2Config.error_aware(num_q_clusters=200, error_tolerance=0.05,
                                              compensation=False)
    run = _resolve("--checkpoint", "c", "--selection", "error", "--target-density", "0.1",
                   "--error-pool", "layer")
    assert (run.svg2.selection, run.svg2.compensation, run.svg2.target_density,
            run.svg2.error_pool) == ("error", True, 0.1, "layer")
    # --compensation: the reference's selection with the left-out clusters compensated
    for argv in (("--compensation",), ("--selection", "svg2", "--compensation")):
        run = _resolve("--checkpoint", "c", *argv)
        assert run.svg2 == SVG2Config.reference(num_q_clusters=200, compensation=True)
    with pytest.raises(SystemExit):
        generate.parse_args(["--compensation", "--no-compensation"])
    # flags of the other rule, or against --reference-svg2: tests/test_faults_generate.py


def test_help_states_the_config_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        generate.parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    cfg = SVG2Config()
    for flag, value in (("--top-p", cfg.top_p), ("--min-kc-ratio", cfg.min_kc_ratio),
                        ("--kmeans-iters-cold", cfg.kmeans_iters_cold),
                        ("--kmeans-iters-warm", cfg.kmeans_iters_warm)):
        assert f"{flag} {flag.upper().lstrip('-').replace('-', '_')} default {value}" in text
    assert f"key clusters (default {cfg.num_k_clusters};" in text
    assert f"default {SamplerConfig().num_steps};" in text
