"""scripts/bench_model.py and scripts/bench_hunyuan.py on tiny models (CPU): every printed
figure is in the JSON and follows from the timed calls."""

import json
import statistics

import pytest

from scripts import bench_hunyuan, bench_model


def test_bench_model_tiny(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "model.json"
    assert bench_model.main(["--tiny", "--reps", "2", "--warmup", "1", "--json",
                             str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["framework"]: r for r in data["rows"]}
    assert set(rows) == {"jax", "torch"}
    for fw, r in rows.items():
        assert len(r["ms"]) == 2 and r["finite"], fw
        assert r["median_ms"] == statistics.median(r["ms"]) and r["min_ms"] == min(r["ms"])
        assert r["tflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9)
        assert r["flops"] == bench_model.model_flops(
            bench_model.cases(True)["tiny"][0], r["latents"], bench_model.TEXT_LEN)
    # JAX: every output of the forward was kept (prediction [1, 4, 3, 6, 10] + density)
    assert rows["jax"]["outputs"]["elements"] == 4 * 3 * 6 * 10 + 2 * 1 * 2
    assert 0 < rows["jax"]["compile_s"] and rows["jax"]["outputs"]["nonfinite"] == 0
    assert data["jax_over_torch"]["tiny"] == pytest.approx(
        rows["jax"]["median_ms"] / rows["torch"]["median_ms"])


def test_bench_hunyuan_tiny(tmp_path):
    out = tmp_path / "hunyuan.json"
    assert bench_hunyuan.main(["--tiny", "--reps", "2", "--warmup", "1", "--json",
                               str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["part"], r["case"]): r for r in data["rows"]}
    assert set(rows) == {("attention", "dense"), ("attention", "svg2-cold"),
                         ("attention", "svg2-warm"), ("model", "forward")}
    dense = rows["attention", "dense"]
    assert dense["density"] == 1.0
    for key, r in rows.items():
        assert r["median_ms"] == statistics.median(r["ms"]) and len(r["ms"]) == 2, key
        assert r["tflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9), key
        assert r["outputs"]["nonfinite"] == 0 and 0 < r["compile_s"], key
    for case in ("svg2-cold", "svg2-warm"):
        r = rows["attention", case]
        assert 0 < r["density"] < 1
        assert r["speedup_vs_dense"] == pytest.approx(dense["median_ms"] / r["median_ms"])
    layers = bench_hunyuan.model_config(True).num_attention_layers
    assert data["all_attention_layers_s"]["dense"] == pytest.approx(
        dense["median_ms"] * layers / 1e3)
    assert rows["model", "forward"]["finite"]
