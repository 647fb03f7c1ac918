"""scripts/bench_e2e.py end to end on a tiny random Wan (CPU): both parts run and report
what docs/performance.md quotes."""

import json
import statistics

from scripts import bench_e2e


def test_bench_e2e_tiny(tmp_path):
    out = tmp_path / "e2e.json"
    assert bench_e2e.main(["--tiny", "--steps", "5", "--reps", "2", "--loop-reps", "1",
                           "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["backend"] == "cpu" and data["meta"]["density_control"] == 0.13
    rows = {r["part"]: r for r in data["rows"]}
    proj = rows["14b-720p"]
    assert proj["dense_steps"] == 1 and proj["projected_dense_s"] > 0
    assert 0 < proj["svg2_density_mean"] < 1
    # the figures are those of the timed calls, whose every output was kept and is finite
    assert len(proj["t_dense_all"]) == len(proj["t_warm_all"]) == 2
    assert abs(proj["t_dense_s"] - statistics.median(proj["t_dense_all"])) < 1e-12
    for key in ("dense_outputs", "svg2_cold_outputs", "svg2_warm_outputs"):
        assert proj[key]["nonfinite"] == 0 and proj[key]["leaves"] >= 2, key
    # dense forward: the prediction [1, 16, 3, 16, 24] and per-layer density [3 layers, 1, 2]
    assert proj["dense_outputs"]["elements"] == 16 * 3 * 16 * 24 + 3 * 2
    steps, n_dense = proj["steps"], proj["dense_steps"]
    want = (n_dense * 2 * proj["t_dense_s"] + proj["t_cold_s"] + proj["t_warm_s"]
            + (steps - n_dense - 1) * 2 * proj["t_warm_s"])
    assert abs(proj["projected_svg2_s"] - want) < 1e-9
    assert abs(proj["projected_speedup"] - proj["projected_dense_s"] / want) < 1e-9
    assert proj["dense_attention_timing"]["outputs"]["nonfinite"] == 0
    loop = rows["1.3b-480p"]
    for label in ("dense", "svg2_shared", "svg2_separate"):
        assert loop[f"{label}_s"] > 0 and loop[f"{label}_all_s"] == [loop[f"{label}_s"]]
        assert loop[f"{label}_outputs"]["nonfinite"] == 0
    assert loop["dense_density_sparse_steps"] == 1.0
    assert loop["svg2_shared_density_sparse_steps"] < 1.0
    assert loop["svg2_shared_rel_l2_to_dense"] > 0
