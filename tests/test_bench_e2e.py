"""scripts/bench_e2e.py end to end on a tiny random Wan (CPU): both parts run and report
what docs/performance.md quotes."""

import json

from scripts import bench_e2e


def test_bench_e2e_tiny(tmp_path):
    out = tmp_path / "e2e.json"
    assert bench_e2e.main(["--tiny", "--steps", "5", "--reps", "1", "--json", str(out)]) == 0
    rows = {r["part"]: r for r in json.loads(out.read_text())["rows"]}
    proj = rows["14b-720p"]
    assert proj["dense_steps"] == 1 and proj["projected_dense_s"] > 0
    assert 0 < proj["svg2_density_mean"] < 1
    loop = rows["1.3b-480p"]
    for label in ("dense", "svg2_shared", "svg2_separate"):
        assert loop[f"{label}_s"] > 0
    assert loop["dense_density_sparse_steps"] == 1.0
    assert loop["svg2_shared_density_sparse_steps"] < 1.0
    assert loop["svg2_shared_rel_l2_to_dense"] > 0
