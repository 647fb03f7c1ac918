"""scripts/bench_model.py and scripts/bench_hunyuan.py on tiny models (CPU): every printed
figure is in the JSON and follows from the timed calls."""

import json
import statistics

import pytest

from scripts import bench_hunyuan, bench_model, headline_figures


def test_bench_model_tiny(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "model.json"
    # torch.compile's "eager" backend: the compiled path (dynamo) without code generation
    assert bench_model.main(["--tiny", "--reps", "2", "--warmup", "1", "--frameworks",
                             "jax,torch,torch-compile", "--compile-backend", "eager",
                             "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["framework"]: r for r in data["rows"]}
    assert list(rows) == ["jax", "torch", "torch-compile"]
    for fw, r in rows.items():
        assert len(r["ms"]) == 2 and r["finite"], fw
        assert r["median_ms"] == statistics.median(r["ms"]) and r["min_ms"] == min(r["ms"])
        assert r["tflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9)
        assert r["flops"] == bench_model.model_flops(
            bench_model.cases(True)["tiny"][0], r["latents"], bench_model.TEXT_LEN)
        # every output of the forward was kept: prediction [1, 4, 3, 6, 10] (+ JAX's density)
        assert r["outputs"]["nonfinite"] == 0
        assert r["outputs"]["elements"] == 4 * 3 * 6 * 10 + (2 * 1 * 2 if fw == "jax" else 0)
    assert 0 < rows["jax"]["compile_s"] and rows["torch"]["compile_s"] == 0
    compiled = rows["torch-compile"]
    assert compiled["compiled"] == "torch.compile(model, backend='eager')"
    # compiled inside the first call: that call less one run
    assert compiled["compile_s"] == pytest.approx(
        compiled["first_call_s"] - compiled["median_ms"] / 1e3)
    for fw in ("torch", "torch-compile"):
        assert data["jax_over"][fw]["tiny"] == pytest.approx(
            rows["jax"]["median_ms"] / rows[fw]["median_ms"])
    table = "\n".join(headline_figures.headline(data))
    assert f"| tiny | torch-compile | {compiled['median_ms']:.1f} |" in table


def test_bench_model_worker_timeout_and_errors(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert bench_model.main(["--tiny", "--frameworks", "jax", "--worker-timeout", "0.2",
                             "--json", str(out)]) == 0
    row, = json.loads(out.read_text())["rows"]
    assert row == dict(case="*", tokens="", framework="jax",
                       error="worker timed out after 0.2 s")
    for argv, msg in ((["--frameworks", "jax,tf"], "known frameworks"),
                      (["--cases", "7b-1080p"], "known cases")):
        with pytest.raises(SystemExit):
            bench_model.main(["--tiny", "--json", str(out)] + argv)
        assert msg in capsys.readouterr().err


def test_bench_hunyuan_tiny(tmp_path):
    out = tmp_path / "hunyuan.json"
    assert bench_hunyuan.main(["--tiny", "--reps", "2", "--warmup", "1", "--model-reps", "1",
                               "--model-warmup", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["density_control"] == 0.13 and data["meta"]["model_reps"] == 1
    rows = {(r["part"], r["case"]): r for r in data["rows"]}
    cases = ("dense", "svg2-cold", "svg2-warm")
    assert list(rows) == [(part, case) for part in ("attention", "model") for case in cases]
    config = bench_hunyuan.model_config(True)
    for key, r in rows.items():
        assert r["median_ms"] == statistics.median(r["ms"]), key
        assert len(r["ms"]) == (2 if key[0] == "attention" else 1), key
        assert r["tflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9), key
        assert r["outputs"]["nonfinite"] == 0, key
    for part in ("attention", "model"):
        dense = rows[part, "dense"]
        assert dense["density"] == 1.0 and 0 < dense["compile_s"]
        for case in ("svg2-cold", "svg2-warm"):
            r = rows[part, case]
            assert 0 < r["density"] < 1 and "density 0.13 (fixed budget)" in r["attention"]
            assert r["speedup_vs_dense"] == pytest.approx(dense["median_ms"] / r["median_ms"])
    # one step: the model's FLOPs with attention scaled by the density it reports
    sv = bench_hunyuan.video_tokens(config, bench_hunyuan.TINY["latents"])
    warm = rows["model", "svg2-warm"]
    assert warm["flops"] == pytest.approx(bench_hunyuan.model_flops(
        config, sv, bench_hunyuan.TINY["text_len"], 1, warm["density"]))
    # both SVG2 steps ran one compiled program: compiled once, for the cold call
    assert rows["model", "svg2-cold"]["compile_s"] > 0 == rows["model", "svg2-warm"]["compile_s"]
    # the cold call's outputs include the per-layer state it hands to the warm call
    assert (rows["model", "svg2-cold"]["outputs"]["elements"]
            > rows["model", "dense"]["outputs"]["elements"])
    layers = config.num_attention_layers
    assert data["all_attention_layers_s"]["dense"] == pytest.approx(
        rows["attention", "dense"]["median_ms"] * layers / 1e3)
    assert all(r["finite"] for (part, _), r in rows.items() if part == "model")
    table = "\n".join(headline_figures.headline(data))
    assert f"| model | svg2-warm | {warm['median_ms']:.2f} |" in table
