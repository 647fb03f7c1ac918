"""Video diffusion transformers with pluggable (dense / SVG2) self-attention (`wan`,
`hunyuan`), the text encoders that feed them (`umt5`, `llama`, `clip_text`), Wan2.1
image-to-video's image encoder (`clip_vision`) and the VAEs (`wan_vae`, `hunyuan_vae`)."""
