"""scripts/raw_data.py: benchmark JSON is written whole or not at all, with the run's meta."""

import json

import numpy as np
import pytest

from scripts import raw_data


def test_write_json_creates_the_folder_and_converts_numbers(tmp_path):
    path = tmp_path / "new" / "figures.json"
    raw_data.write_json(str(path), dict(ms=np.float32(1.5), rows=[1, 2]))
    assert json.loads(path.read_text()) == dict(ms=1.5, rows=[1, 2])
    assert [p.name for p in path.parent.iterdir()] == ["figures.json"]


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "figures.json"
    path.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        raw_data.write_json(str(path), dict(bad=object()))
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"]


def test_meta_and_default_path():
    meta = raw_data.run_meta(reps=3)
    assert meta["backend"] == "cpu" and meta["reps"] == 3 and "jax" in meta and "date" in meta
    assert "device" not in raw_data.run_meta(device=False)
    assert raw_data.default_path("x.json").endswith("docs/bench/x.json")
