"""The Wan VAE's checkpoint keys: the `KeyMap` naming our parameters in diffusers' keys
(`AutoencoderKLWan.save_pretrained`; see `svg2_jax.checkpoints.keymap`).

Our module names are diffusers'; conv weights [O, I, *window] become channels-last kernels
[*window, I, O]; `WanRMS_norm.gamma` keeps its shape. Only the diffusers layout is read
(the official `Wan2.1_VAE.pth` / `Wan2.2_VAE.pth` keys are not mapped).
"""

from __future__ import annotations

from svg2_jax.checkpoints.keymap import KeyMap

KEYS = KeyMap(
    diffusers_markers=("encoder.conv_in.", "decoder.conv_in.", "post_quant_conv."),
    # diffusers' `WanResample.resample` is nn.Sequential(upsample or zero pad, Conv2d); ours
    # is the conv itself
    module_renames=(("resample", "resample.1"),),
)
