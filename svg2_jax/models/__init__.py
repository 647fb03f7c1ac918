"""Video diffusion transformers with pluggable (dense / SVG2) self-attention (`wan`,
`hunyuan`), and the text encoders that feed them (`umt5`, `llama`, `clip_text`)."""
