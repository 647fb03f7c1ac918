"""Fault injection for svg2-convert (and the checkpoint readers it shares with svg2-generate):
bad inputs, outputs it must not replace, conversions killed at several points. Each case
checks the exit code, the message, and the disk afterwards: nothing half-written, nothing
of the user's deleted, no leftovers once the next run has looked."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from convert import output_dir
from convert.cli import main as convert_main
from convert.wan import convert_to_orbax
from svg2_jax.checkpoints import abstract_state, expected_keys
from svg2_jax.models.wan import WanConfig, load
from svg2_jax.models.wan.config import DIFFUSERS_CLASS
from svg2_jax.models.wan.load import FAMILY

ROOT = Path(__file__).resolve().parents[1]
CFG = WanConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=32, freq_dim=16, ffn_dim=64, num_layers=2)
KEYS = expected_keys(FAMILY.keys, CFG, abstract_state(FAMILY, CFG, jnp.float32)[1])
A_KEY = "blocks.1.attn1.to_k.weight"


def random_state(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (0.1 * rng.standard_normal(t.source_shape)).astype(np.float32)
            for k, t in KEYS.items()}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A tiny diffusers-layout Wan transformer directory (config.json + safetensors),
    written with numpy."""
    path = tmp_path_factory.mktemp("src") / "transformer"
    path.mkdir()
    save_file(random_state(), str(path / "diffusion_pytorch_model.safetensors"))
    (path / "config.json").write_text(json.dumps({"_class_name": DIFFUSERS_CLASS,
                                                  **CFG.to_diffusers()}))
    return path


def convert_cli(capsys, src, out, *extra):
    rc = convert_main(["--from", "diffusers", str(src), "--model", str(src / "config.json"),
                       "--out", str(out), "--quiet", *extra])
    captured = capsys.readouterr()
    return rc, captured.err


def tree(directory) -> dict:
    """Every file under directory (hidden ones included) -> its bytes."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def entries(directory) -> list[str]:
    return sorted(os.listdir(directory))


def meta(out) -> dict:
    return json.loads((Path(out) / FAMILY.config_file).read_text())


# -- what --overwrite may replace -----------------------------------------------------------

def test_overwrite_refuses_what_is_not_our_checkpoint(src, tmp_path, capsys):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"meow")
    (user / "notes").mkdir()
    before = tree(tmp_path)
    rc, err = convert_cli(capsys, src, user, "--overwrite")
    assert rc == 1
    assert "--overwrite replaces only an svg2-jax checkpoint directory" in err
    assert "holds cat.jpg, notes/" in err and "Traceback" not in err
    assert tree(tmp_path) == before and entries(tmp_path) == ["photos"]

    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    rc, err = convert_cli(capsys, src, a_file, "--overwrite")
    assert rc == 1 and "is a file" in err and a_file.read_bytes() == b"x"

    # one of ours with something of the user's added is not replaced either
    ours = tmp_path / "ckpt"
    assert convert_cli(capsys, src, ours)[0] == 0
    (ours / "README.md").write_text("mine")
    rc, err = convert_cli(capsys, src, ours, "--overwrite")
    assert rc == 1 and "README.md" in err and (ours / "README.md").read_text() == "mine"
    (ours / "README.md").unlink()
    rc, _ = convert_cli(capsys, src, ours, "--overwrite", "--dtype", "float32")
    assert rc == 0 and meta(ours)["param_dtype"] == "float32"
    assert entries(tmp_path) == ["ckpt", "model.bin", "photos"]


def test_out_dot_and_parent_that_is_a_file(src, tmp_path, capsys, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    rc, err = convert_cli(capsys, src, ".", "--overwrite")
    assert rc == 1 and "is an empty directory" in err
    assert entries(tmp_path) == ["plain"] and entries(plain) == []
    ours = tmp_path / "ours"
    assert convert_cli(capsys, src, ours)[0] == 0
    monkeypatch.chdir(ours)
    assert convert_cli(capsys, src, ".", "--overwrite")[0] == 0  # replaces the cwd itself
    monkeypatch.chdir(tmp_path)
    assert entries(tmp_path) == ["ours", "plain"] and meta(ours)["format"] == FAMILY.format
    (tmp_path / "f").write_text("")
    rc, err = convert_cli(capsys, src, tmp_path / "f" / "ckpt")
    assert rc == 1 and "is not a directory" in err and entries(tmp_path) == ["f", "ours", "plain"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_parent_is_refused_before_any_work(src, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    rc, err = convert_cli(capsys, src, locked / "ckpt")
    assert rc == 1 and "is not writable" in err and entries(locked) == []


# -- malformed inputs -----------------------------------------------------------------------

def _bad_sources(tmp_path, src) -> dict:
    good = (src / "diffusion_pytorch_model.safetensors").read_bytes()
    files = {"empty": b"", "truncated": good[: len(good) // 2],
             "garbage": b"not a safetensors file at all" * 10,
             "bad header": good[:8] + b"{nonsense" + good[17:]}
    out = {}
    for name, data in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(data)
        out[name] = path
    index = tmp_path / "sharded"
    index.mkdir()
    (index / "diffusion_pytorch_model.safetensors.index.json").write_text("{ not json")
    out["corrupt index"] = index
    return out


def test_malformed_safetensors_name_the_file_in_both_clis(src, tmp_path, capsys):
    from svg2_jax.cli import generate

    (tmp_path / "in").mkdir()
    bad = _bad_sources(tmp_path / "in", src)
    embeddings = tmp_path / "in" / "emb.npy"
    np.save(embeddings, np.zeros((4, CFG.text_dim), np.float32))
    for name, path in bad.items():
        rc = convert_main(["--from", "diffusers", str(path), "--model",
                           str(src / "config.json"), "--out", str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1, name
        assert err.startswith("svg2-convert: error:") and "Traceback" not in err, name
        assert path.name in err, (name, err)
        with pytest.raises(SystemExit) as exit_info:
            generate.main(["--checkpoint", str(path), "--model", str(src / "config.json"),
                           "--text-embeddings", str(embeddings),
                           "--out", str(tmp_path / "v.mp4"), "--no-progress"])
        assert path.name in str(exit_info.value.code), (name, exit_info.value.code)
    assert entries(tmp_path) == ["in"]  # nothing written, nothing left


def test_corrupt_orbax_and_metadata_are_clear_errors(src, tmp_path):
    out = tmp_path / "ckpt"
    convert_to_orbax(src, "diffusers", CFG, out)
    meta_file = out / FAMILY.config_file
    good_meta = meta_file.read_text()
    meta_file.write_text("{ truncated")
    with pytest.raises(ValueError, match=f"cannot read checkpoint metadata .*{FAMILY.config_file}"):
        load(out, CFG)
    meta_file.write_text(good_meta)
    for p in sorted((out / "state").rglob("*")):  # damage every data file of the state
        if p.is_file() and p.stat().st_size > 64 and "manifest" not in p.name:
            p.write_bytes(p.read_bytes()[:32])
    with pytest.raises(ValueError, match="cannot restore the orbax state"):
        load(out, CFG)
    bad_config = tmp_path / "config.json"
    bad_config.write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json.*holds a JSON list"):
        load(src, str(bad_config))
    bad_config.write_text(json.dumps({**CFG.to_diffusers(), "num_layers": "two"}))
    with pytest.raises(ValueError, match="config file .*config.json.*num_layers"):
        load(src, str(bad_config))


@pytest.mark.parametrize("case", ["int64", "nan", "bf16 inf", "bool"])
def test_weight_dtype_policy(src, tmp_path, capsys, case):
    state = random_state()
    if case == "int64":
        state[A_KEY] = np.ones(state[A_KEY].shape, np.int64)
    elif case == "bool":
        state[A_KEY] = np.ones(state[A_KEY].shape, bool)
    elif case == "nan":
        state[A_KEY][3, 1] = np.nan
        state[A_KEY][0, 0] = np.nan
    else:
        state = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
        state[A_KEY][2, 2] = np.inf
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "weights.safetensors"
    save_file(state, str(path))
    rc = convert_main(["--from", "diffusers", str(path), "--model", str(src / "config.json"),
                       "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and A_KEY in err and "weights.safetensors" in err and "Traceback" not in err
    if case in ("int64", "bool"):
        assert "refused, not cast" in err
    else:
        assert ("holds 2 NaN/Inf" if case == "nan" else "holds 1 NaN/Inf") in err
    assert entries(tmp_path) == ["in"]
    with pytest.raises(ValueError, match=A_KEY):  # loading the file directly checks too
        load(path, CFG)


# -- interrupted conversions ----------------------------------------------------------------

KILLER = textwrap.dedent("""
    import os, signal, sys
    from convert import common, output_dir, wan
    src, config, out, point = sys.argv[1:5]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.{sig})

    def after(fn):
        def run(*args, **kwargs):
            fn(*args, **kwargs)
            die()
        return run

    reads = []
    progress = None
    if point == "reading":
        progress = lambda key: (reads.append(key), len(reads) == 4 and die())
    elif point == "saved":  # the orbax state written, the metadata not yet
        common.save_orbax = after(common.save_orbax)
    elif point == "moved_aside":  # the old checkpoint moved away, the new one not yet in
        output_dir._move_into_place = die
    elif point == "moved_in":  # the new checkpoint in place, its staging not yet removed
        output_dir._move_into_place = after(output_dir._move_into_place)
    wan.convert_to_orbax(src, "diffusers", config, out, overwrite=True, progress=progress)
    print("finished")
""")


def killed_conversion(src, out, point, sig="SIGKILL"):
    script = KILLER.format(sig=sig)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script, str(src), str(src / "config.json"),
                           str(out), point], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    return proc


def staging_dirs(parent):
    return [p for p in entries(parent) if ".svg2-convert-" in p]


@pytest.mark.parametrize("point,expect_out", [
    ("reading", "old"), ("saved", "old"), ("moved_aside", "missing"), ("moved_in", "new")])
def test_sigkill_at_each_point_leaves_only_what_the_next_run_cleans(src, tmp_path, capsys,
                                                                    point, expect_out):
    out = tmp_path / "ckpt"
    convert_to_orbax(src, "diffusers", CFG, out, dtype=jnp.float32)  # the "old" one
    old = tree(out)
    proc = killed_conversion(src, out, point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    left = staging_dirs(tmp_path)
    assert len(left) == 1
    staging = tmp_path / left[0]
    owner = json.loads((staging / output_dir.OWNER_FILE).read_text())
    assert owner["host"] == socket.gethostname() and owner["pid"] != os.getpid()
    if expect_out == "old":
        assert tree(out) == old
    elif expect_out == "missing":  # killed between the two renames
        assert not out.exists() and tree(staging / output_dir.OLD) == old
    else:
        assert meta(out)["param_dtype"] == "bfloat16"

    # the next conversion to the same output finds it, restores / removes, says so
    rc, err = convert_cli(capsys, src, out, "--overwrite")
    assert rc == 0
    assert f"removed '{staging}', left by a conversion that is no longer running" in err
    if expect_out == "missing":
        assert "restored" in err
    assert entries(tmp_path) == ["ckpt"] and meta(out)["param_dtype"] == "bfloat16"


def test_killed_between_renames_then_cleaned_restores_the_old_checkpoint(src, tmp_path):
    out = tmp_path / "ckpt"
    convert_to_orbax(src, "diffusers", CFG, out, dtype=jnp.float32)
    old = tree(out)
    assert killed_conversion(src, out, "moved_aside").returncode == -signal.SIGKILL
    messages = output_dir.clean_stale(output_dir.output_path(out))
    assert len(messages) == 1 and "restored" in messages[0]
    assert tree(out) == old and entries(tmp_path) == ["ckpt"]


def test_a_conversion_to_another_output_cleans_up_too(src, tmp_path, capsys):
    out = tmp_path / "first"
    convert_to_orbax(src, "diffusers", CFG, out, dtype=jnp.float32)
    old = tree(out)
    assert killed_conversion(src, out, "moved_aside").returncode == -signal.SIGKILL
    rc, err = convert_cli(capsys, src, tmp_path / "second")
    assert rc == 0 and "restored" in err and str(out) in err
    assert entries(tmp_path) == ["first", "second"] and tree(out) == old


def test_sigterm_cleans_up_at_once(src, tmp_path):
    out = tmp_path / "ckpt"
    proc = killed_conversion(src, out, "reading", sig="SIGTERM")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert entries(tmp_path) == []


def test_staging_of_live_or_foreign_runs_is_left_alone_and_explained(src, tmp_path, capsys):
    out = tmp_path / "ckpt"
    live = tmp_path / ".ckpt.svg2-convert-live"
    live.mkdir()
    (live / output_dir.OWNER_FILE).write_text(json.dumps(output_dir._owner()))  # this process
    foreign = tmp_path / ".ckpt.svg2-convert-far"
    foreign.mkdir()
    (foreign / output_dir.OWNER_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    legacy = tmp_path / ".ckpt.tmp-abc123"  # what an earlier version left, without an owner
    legacy.mkdir()
    other_out = tmp_path / ".other.svg2-convert-x"  # a conversion to another output
    other_out.mkdir()
    rc, err = convert_cli(capsys, src, out)
    assert rc == 0
    assert f"'{live}' belongs to a conversion still running (pid {os.getpid()})" in err
    assert "host 'elsewhere'" in err and f"rm -rf {foreign}" in err
    assert f"rm -rf {legacy}" in err and ".other" not in err
    assert sorted(entries(tmp_path)) == sorted(
        ["ckpt", live.name, foreign.name, legacy.name, other_out.name])


def test_a_failure_while_replacing_restores_the_old_checkpoint(src, tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    convert_to_orbax(src, "diffusers", CFG, out, dtype=jnp.float32)
    old = tree(out)

    def fail(new, dest):
        raise OSError("disk full")

    monkeypatch.setattr(output_dir, "_move_into_place", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_to_orbax(src, "diffusers", CFG, out, overwrite=True)
    assert tree(out) == old and entries(tmp_path) == ["ckpt"]
