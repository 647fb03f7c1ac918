"""The HunyuanVideo VAE's checkpoint keys: the `KeyMap` naming our parameters in diffusers'
keys (`AutoencoderKLHunyuanVideo.save_pretrained`; see `svg2_jax.checkpoints.keymap`).

Our module names are diffusers' (the mid-block attention's `to_out.0` is `to_out`); conv
weights [O, I, T, H, W] become channels-last kernels [T, H, W, I, O]. The official
release's VAE file (`vae/pytorch_model.pt`) uses these keys too (diffusers' conversion
script renames none), so it reads as the diffusers layout.
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

KEYS = KeyMap(diffusers_markers=("encoder.conv_in.conv.", "decoder.conv_in.conv."))
