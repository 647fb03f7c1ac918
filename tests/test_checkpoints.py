"""The family-independent checkpoint reading of `svg2_jax.checkpoints`: the tensor sources
and their table, row reads, the official-layout view. (Plans, streaming, orbax and `load`
run end to end in test_convert.py / test_convert_hunyuan.py.)"""

import sys

import ml_dtypes
import numpy as np
import pytest

from svg2_jax.checkpoints import (SOURCES, RenamedSource, SafetensorsSource, TensorSource,
                                  TorchCheckpointSource, open_source)
from svg2_jax.checkpoints.keymap import compose_rows

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
TENSORS = {"a.weight": RNG.standard_normal((10, 3)).astype(np.float32),
           "b.bias": RNG.standard_normal((7,)).astype(ml_dtypes.bfloat16)}


def _safetensors(path):
    from safetensors.numpy import save_file

    save_file(TENSORS, str(path))
    return path


def _torch(path):
    torch.save({k: torch.from_numpy(v.astype(np.float32)).to(
        torch.bfloat16 if v.dtype == ml_dtypes.bfloat16 else torch.float32)
        for k, v in TENSORS.items()}, path)
    return path


@pytest.mark.parametrize("make,cls", [(_safetensors, SafetensorsSource),
                                      (_torch, TorchCheckpointSource)])
def test_sources_read_whole_tensors_and_rows(tmp_path, make, cls):
    path = make(tmp_path / ("x.safetensors" if cls is SafetensorsSource else "x.pt"))
    with open_source(path) as source:
        assert type(source) is cls and isinstance(source, TensorSource)
        assert sorted(source.keys()) == sorted(TENSORS)
        for key, want in TENSORS.items():
            assert source.shape(key) == want.shape
            got = source.read(key)
            assert got.dtype == want.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)
        rows = ((6, 9), (0, 2), (4, 5))
        got = source.read("a.weight", rows)
        np.testing.assert_array_equal(got, np.concatenate([TENSORS["a.weight"][a:b]
                                                           for a, b in rows]))
        assert got.flags.c_contiguous
    assert source.keys() == []  # closed


def test_the_source_table_recognises_paths(tmp_path):
    assert [k.name for k in SOURCES] == ["torch state dict", "safetensors"]
    release = tmp_path / "release"
    release.mkdir()
    _torch(release / "mp_rank_00_model_states.pt")
    with open_source(release) as source:  # a directory holding only one torch file
        assert isinstance(source, TorchCheckpointSource)
    _torch(release / "other.pth")
    with pytest.raises(ValueError, match="several torch checkpoints"):
        open_source(release)
    _safetensors(release / "diffusion_pytorch_model.safetensors")
    with open_source(release) as source:  # safetensors win over torch files
        assert isinstance(source, SafetensorsSource)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"not a checkpoint this reads: torch state dict: a "
                                         r"\.pt, .*; safetensors: a \.safetensors file"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="does not exist"):
        open_source(tmp_path / "absent.pt")


def test_a_torch_file_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    path = _torch(tmp_path / "x.pt")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    with pytest.raises(ValueError, match=r"x\.pt' is a torch state dict file: reading it "
                                         r"needs PyTorch \(pip install 'svg2-jax\[torch\]'"):
        open_source(path)


def test_compose_rows_matches_slicing_twice():
    x = np.arange(40)
    for _ in range(50):
        cuts = np.sort(RNG.choice(41, size=6, replace=False))
        pairs = [(int(a), int(b)) for a, b in zip(cuts[::2], cuts[1::2])]
        outer = tuple(pairs[i] for i in RNG.permutation(len(pairs)))
        view = np.concatenate([x[a:b] for a, b in outer])
        cuts = np.sort(RNG.choice(len(view) + 1, size=4, replace=False))
        inner = ((int(cuts[2]), int(cuts[3])), (int(cuts[0]), int(cuts[1])))
        want = np.concatenate([view[a:b] for a, b in inner])
        got = np.concatenate([x[a:b] for a, b in compose_rows(outer, inner)])
        np.testing.assert_array_equal(got, want)


def test_renamed_source_splits_reports_and_reads_rows(tmp_path):
    def rename(key, shape):
        if key == "a.weight":  # fused: two pieces, the second out of order
            return [("p.weight", ((0, 4),)), ("q.weight", ((8, 10), (4, 8)))]
        return [("p.weight", None)]  # collides with a piece of a.weight

    from safetensors.numpy import save_file

    save_file({**TENSORS, "foreign.x": np.zeros(2, np.float32)}, str(tmp_path / "o.safetensors"))
    with RenamedSource(open_source(tmp_path / "o.safetensors"), rename, ("a.", "b.")) as view:
        assert isinstance(view, TensorSource)
        assert view.keys() == ["p.weight", "q.weight"]
        assert view.foreign == ["foreign.x"]
        assert view.duplicates == ["b.bias (maps to p.weight, already given by a.weight)"]
        assert view.origin("q.weight") == "a.weight" and view.shape("q.weight") == (6, 3)
        a = TENSORS["a.weight"]
        q = np.concatenate([a[8:10], a[4:8]])
        np.testing.assert_array_equal(view.read("q.weight"), q)
        np.testing.assert_array_equal(view.read("q.weight", ((1, 3),)), q[1:3])
