"""Fault injection for svg2-generate: bad flags, inputs and output paths stop the run before
any model work, naming the flag and file; a run that goes non-finite writes its report and
nothing else; a failing mp4 writer keeps the sampled latents. Each case checks the exit
message and the disk afterwards."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shared_fixtures import no_model_work  # noqa: F401  (a fixture)

from svg2_jax.cli import generate
from svg2_jax.pipelines.hunyuan import TINY_CONFIG as HY
from svg2_jax.pipelines.wan import TINY_CONFIG as WAN


def run_fails(args, match, directory):
    """svg2-generate exits with a message matching `match`, and `directory` is as before."""
    before = sorted(os.listdir(directory))
    with pytest.raises(SystemExit) as e:
        generate.main(["--no-progress", *map(str, args)])
    message = str(e.value.code)
    assert message.startswith("svg2-generate: "), message
    assert re.search(match, message), message
    assert sorted(os.listdir(directory)) == before
    return message


@pytest.mark.parametrize("case,match", [
    ("no suffix", r"--out '.*video' must end in \.mp4"),
    ("directory", r"--out '.*d\.mp4' is a directory"),
    ("parent is a file", r"--out '.*file/v\.mp4': '.*file' is not a directory"),
    ("report suffix", r"--report '.*r\.txt' must end in \.json"),
    ("report directory", r"--report '.*rep\.json' is a directory"),
    ("latents path is a directory", r"--out \(its \.latents\.npy\) '.*v\.latents\.npy' is a dir"),
])
def test_output_paths_are_checked_before_any_work(tmp_path, no_model_work, case, match):
    (tmp_path / "d.mp4").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "rep.json").mkdir()
    out = {"no suffix": tmp_path / "video", "directory": tmp_path / "d.mp4",
           "parent is a file": tmp_path / "file" / "v.mp4"}.get(case, tmp_path / "v.mp4")
    args = ["--out", out]
    if case.startswith("report"):
        args += ["--report", tmp_path / ("r.txt" if case == "report suffix" else "rep.json")]
    if case == "latents path is a directory":
        (tmp_path / "v.latents.npy").mkdir()
    run_fails(args, match, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_output_directory(tmp_path, no_model_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    run_fails(["--out", locked / "v.mp4"], "is not writable", tmp_path)


@pytest.mark.parametrize("args,match", [
    (["--fps", "0"], r"--fps must be >= 1, got 0"),
    (["--fps", "-5"], r"--fps must be >= 1, got -5"),
    (["--steps", "0"], r"--steps must be >= 1"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*32\)"),
    (["--shift", "0"], r"--shift must be > 0"),
    (["--guidance", "nan"], r"--guidance must be finite"),
    (["--qc", "0", "--kc", "-3"], r"2 problems:\n  --qc must be >= 1, got 0\n  --kc must be"),
    (["--dense-fraction", "1.5"], r"--dense-fraction must be in \[0, 1\]"),
    (["--dense-layers", "abc"], r"--dense-layers takes comma-separated layer indices"),
    (["--dense-layers", "-1"], r"--dense-layers indices must be >= 0"),
    (["--dense-layers", "1,99"], r"--dense-layers 99: the model has 2 attention layers \(0\.\.1\)"),
    # flags the run would have ignored
    (["--attention", "dense", "--qc", "8", "--dense-layers", "1"],
     r"--qc applies to --attention svg2 only\n  --dense-layers applies"),
    (["--top-p", "0.5", "--target-density", "0.3"], r"--top-p and --target-density exclude"),
    (["--error-tolerance", "-1"], r"--error-tolerance must be a finite number >= 0, got -1"),
    (["--selection", "error", "--error-tolerance", "0.1", "--target-density", "0.2"],
     r"^svg2-generate: --error-tolerance and --target-density exclude each other"),
    (["--selection", "error", "--top-p", "0.8"],
     r"^svg2-generate: --top-p applies to --selection svg2 only; this run has --selection "
     r"error$"),
    (["--error-tolerance", "0.1"], r"^svg2-generate: --error-tolerance applies to --selection "
                                   r"error only; this run has --selection svg2$"),
    (["--selection", "svg2", "--error-tolerance", "0.1", "--error-pool", "layer"],
     r"--error-tolerance applies to --selection error only; this run has --selection svg2\n"
     r"  --error-pool applies"),
    (["--reference-svg2", "--selection", "error"],
     r"--reference-svg2 is --selection svg2 without compensation; it takes no --selection "
     r"error"),
    (["--reference-svg2", "--compensation"],
     r"--reference-svg2 is --selection svg2 without compensation; it takes no --compensation"),
    (["--reference-svg2", "--error-tolerance", "0.1"],
     r"--error-tolerance applies to --selection error only; this run has --reference-svg2"),
    (["--attention", "dense", "--selection", "svg2", "--no-compensation"],
     r"--selection applies to --attention svg2 only\n  --no-compensation applies"),
    (["--attention", "dense", "--compensation"], r"--compensation applies to --attention svg2"),
    (["--negative-prompt", "blurry"], r"--negative-prompt needs --prompt"),
    (["--guidance", "1", "--separate-cfg-cache"], r"--separate-cfg-cache is unused: --guidance 1"),
    (["--dense-fraction", "0", "--kmeans-during-warmup"], r"--kmeans-during-warmup needs a dense"),
    (["--family", "hunyuan", "--separate-cfg-cache"], r"HunyuanVideo has no unconditional pass"),
    (["--family", "hunyuan", "--negative-embeddings", "x.npy"], r"not supported for HunyuanVi"),
    (["--text-encoder", "enc"], r"--text-encoder is read only with --prompt, which is not "),
    (["--vae", "absent-vae"], r"--vae 'absent-vae' not found"),
    # devices: the spec, what the run needs of it, then the device count
    (["--mesh", "sp=2,tp=2"], r"--mesh: bad mesh spec 'sp=2,tp=2': expected comma-sep"),
    (["--mesh", "cfg=3"], r"--mesh: bad mesh spec 'cfg=3'"),
    (["--mesh", "sp=2,cfg=2"], r"--mesh sp=2,cfg=2: cfg=2 runs .* add --separate-cfg-cache"),
    (["--mesh", "cfg=2", "--guidance", "1"], r"cfg=2 \(CFG parallel\) .* --guidance 1 runs"),
    (["--family", "hunyuan", "--mesh", "cfg=2"], r"HunyuanVideo has none \(embedded guid"),
    (["--attention", "dense", "--mesh", "sp=2,balance=0"], r"balance .* svg2 only"),
    (["--mesh", "sp=2", "--error-pool", "layer"],
     r"--mesh sp=2: --error-pool layer pools a layer's heads in one call, and sp splits"),
    (["--distributed", "h:1,2"], r"2 problems:\n  bad --distributed 'h:1,2'.*\n  --distrib"
                                 r"uted needs --mesh"),
    (["--mesh", "sp=4"], r"--mesh sp=4: a mesh of cfg=1 x sp=4 needs 4 devices, 1 avail"),
])
def test_every_value_is_checked_with_its_flag_before_any_work(tmp_path, no_model_work, args,
                                                              match):
    run_fails(["--out", tmp_path / "v.mp4", *args], match, tmp_path)


def test_text_embedding_files(tmp_path, no_model_work):
    d = tmp_path / "in"
    d.mkdir()
    (d / "notes.npy").write_text("these are my notes, not an array")
    np.save(d / "empty.npy", np.zeros((0, WAN.text_dim), np.float32))
    np.save(d / "ints.npy", np.ones((4, WAN.text_dim), np.int32))
    np.savez(d / "pair.npz", a=np.zeros(3))
    np.save(d / "wan.npy", np.zeros((4, HY.text_embed_dim), np.float32))
    np.savez(d / "hy_empty.npz", prompt_embeds=np.zeros((0, HY.text_embed_dim), np.float32),
             prompt_attention_mask=np.zeros((0,), bool),
             pooled_prompt_embeds=np.zeros(HY.pooled_projection_dim, np.float32))
    out = ["--out", tmp_path / "v.mp4", "--text-embeddings"]
    run_fails(out + [d / "notes.npy"], r"--text-embeddings '.*notes\.npy' is not a numpy "
              r"\.npy array file", tmp_path)
    run_fails(out + [d / "empty.npy"], r"with L >= 1 tokens, got \(1, 0, 64\)", tmp_path)
    run_fails(out + [d / "ints.npy"], r"must be floating point, got int32", tmp_path)
    run_fails(out + [d / "pair.npz"], r"'.*pair\.npz' is an \.npz archive; a single \.npy",
              tmp_path)
    hy = ["--family", "hunyuan"] + out
    run_fails(hy + [d / "wan.npy"], r"'.*wan\.npy' is a single \.npy array; an \.npz archive",
              tmp_path)
    run_fails(hy + [d / "hy_empty.npz"], r"prompt_embeds \[T, 64\] with T >= 1", tmp_path)
    run_fails(hy + [d / "notes.npy"], r"is not a numpy \.npz archive file", tmp_path)


def test_a_nonfinite_run_writes_only_its_report(tmp_path):
    """Finite but huge text states (3e38) overflow in layer 0's cross-attention
    projections of the conditional pass; the first self-attention to see the NaN is layer
    1's, in step 0."""
    (tmp_path / "in").mkdir()
    text = tmp_path / "in" / "big.npy"
    np.save(text, np.full((4, WAN.text_dim), 3e38, np.float32))
    with pytest.raises(SystemExit) as e:
        generate.main(["--out", str(tmp_path / "v.mp4"), "--steps", "3", "--text-embeddings",
                       str(text), "--no-progress"])
    message = str(e.value.code)
    assert "latents became NaN/Inf at denoising step 0" in message
    assert "layer 1 in the conditional pass of step 0" in message
    assert f"Wrote only the report {tmp_path / 'v.json'}" in message
    assert sorted(os.listdir(tmp_path)) == ["in", "v.json"]  # no mp4, latents, temporaries
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["nonfinite"] == {"latents_step": 0, "attention": {
        "step": 0, "pass": "conditional", "layer": 1}}
    dens = report["density_per_step_pass_layer"]  # [steps, passes, layers], null = NaN
    assert dens[0] == [[1.0, None], [1.0, 1.0]]  # layer 0 dense; the unconditional pass fine
    assert report["density_mean_sparse_steps"] is None


def test_a_failing_mp4_writer_keeps_the_latents(tmp_path, monkeypatch):
    from svg2_jax.pipelines import video

    def broken(frames, path, fps=16):
        with open(path, "wb") as f:
            f.write(b"half an mp4")
        raise RuntimeError(f"could not write {path}: encoder crashed")

    monkeypatch.setattr(video, "write_mp4", broken)
    with pytest.raises(SystemExit) as e:
        generate.main(["--out", str(tmp_path / "v.mp4"), "--steps", "1", "--attention",
                       "dense", "--no-progress"])
    assert "encoder crashed" in str(e.value.code)
    assert f"the latents are saved in {tmp_path / 'v.latents.npy'}" in str(e.value.code)
    assert sorted(os.listdir(tmp_path)) == ["v.latents.npy"]  # no half-written mp4
    assert np.isfinite(np.load(tmp_path / "v.latents.npy")).all()


def test_the_command_exits_1_with_one_line_and_no_traceback(tmp_path):
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "svg2_jax.cli.generate", "--fps", "-5", "--out",
         str(tmp_path / "out" / "v.mp4")], cwd=root, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "svg2-generate: --fps must be >= 1, got -5"
    assert os.listdir(tmp_path) == []
