"""SVG2 for joint video + text attention (HunyuanVideo's dual- and single-stream blocks).

The sequence is [video tokens | T text tokens], of which the first text_lengths[b] text
tokens are real and the rest padding. As in the reference, only video tokens are
clustered and permuted; text is handled densely:
- video queries attend to their selected video key clusters and to every real text key;
- text queries (real or padding) attend to every video key and every real text key.
With compensation (SVG2Config.compensation) only the left-out video key clusters are
compensated, for video queries (the video part is self-attention over the video tokens);
text stays exact. Padding text keys are masked for every query, which is exactly diffusers' dense
masking (padded query rows still get outputs; the model ignores them). So with top_p=1
the result equals dense masked attention. (The reference lets padding queries attend
only each other; their outputs are never used, so the difference is invisible.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange, repeat

from svg2_jax.attention import check_inputs, compensated_share, svg2_core, svg2_stats
from svg2_jax.clustering import SVG2Cache, to_cache
from svg2_jax.config import SVG2Config
from svg2_jax.head_group import HeadGroup
from svg2_jax.nonfinite import input_finite
from svg2_jax.selection import block_density
from svg2_jax.sparse_attention import masked_attention, merge_attention


def _check_joint(q, num_text, text_lengths):
    if not isinstance(num_text, int) or num_text < 1:
        raise ValueError(f"num_text must be a positive int (the text tokens at the end of "
                         f"the sequence), got {num_text!r}")
    if hasattr(q, "ndim") and q.ndim == 4 and q.shape[1] <= num_text:
        raise ValueError(f"sequence of {q.shape[1]} tokens has no video tokens before its "
                         f"{num_text} text tokens")
    if text_lengths.shape != (q.shape[0],) or not jnp.issubdtype(text_lengths.dtype, jnp.integer):
        raise ValueError(f"text_lengths must be an int array of shape [B]=({q.shape[0]},), got "
                         f"{text_lengths.dtype}{tuple(text_lengths.shape)}")


def text_key_mask(text_lengths, num_text):
    """[B] valid lengths -> [B, T] bool, True for real (unpadded) text tokens."""
    return jnp.arange(num_text) < text_lengths[:, None]


@functools.partial(jax.jit, static_argnames=("config", "num_text", "scale"))
def svg2_joint_attention(q: jax.Array, k: jax.Array, v: jax.Array, text_lengths: jax.Array,
                         cache: SVG2Cache | None, config: SVG2Config,
                         key: jax.Array | None = None, *, num_text: int,
                         scale: float | None = None, head_group: HeadGroup | None = None):
    """SVG2 attention over [video | text] sequences.

    q, k, v: [B, Sv + T, H, D] with T = num_text (static); text_lengths: [B] int, real
    text tokens per sample. cache, config, key, scale, head_group: as `svg2_attention`
    (the cache holds the video tokens' centroids).

    Returns (out [B, Sv + T, H, D], new cache, SVG2Stats). stats.density counts every
    computed (real query, real key) pair, text ones included, over all real pairs;
    stats.compensated_mass is over the video queries.
    """
    _check_joint(q, num_text, text_lengths)
    sv = q.shape[1] - num_text
    check_inputs(q[:, :sv], k[:, :sv], v[:, :sv], cache, config,
                 caller="svg2_joint_attention")
    b, s, h, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    heads = lambda x: rearrange(x, "b s h d -> (b h) s d")
    qn, kn, vn = heads(q), heads(k), heads(v)
    text_valid = repeat(text_key_mask(text_lengths, num_text), "b t -> (b h) t", h=h)

    video = svg2_core(qn[:, :sv], kn[:, :sv], vn[:, :sv], cache, config, key, scale,
                      head_group, heads=h)
    o_vt, lse_vt = masked_attention(qn[:, :sv], kn[:, sv:], vn[:, sv:], text_valid[:, None, :],
                                    scale)
    o_video, lse_video = merge_attention(video.out, video.lse, o_vt, lse_vt)

    key_valid = jnp.concatenate([jnp.ones((b * h, sv), bool), text_valid], axis=-1)
    o_text, _ = masked_attention(qn[:, sv:], kn, vn, key_valid[:, None, :], scale)
    out = rearrange(jnp.concatenate([o_video, o_text], axis=1), "(b h) s d -> b s h d", b=b)

    n_text = jnp.sum(text_valid, axis=-1).astype(jnp.float32)  # [B*H]
    clustering, selection = video.clustering, video.selection
    video_pairs = block_density(selection.selected, clustering.q.sizes,
                                clustering.k.sizes) * sv * sv
    computed = video_pairs + sv * n_text + n_text * (sv + n_text)
    density = computed / (sv + n_text) ** 2
    # the text tokens are attended densely, so their NaN/Inf reaches the output by itself
    text_finite = input_finite(qn[:, sv:], kn[:, sv:], vn[:, sv:]).head
    return out, to_cache(clustering, b), svg2_stats(
        density, clustering, selection, b, ~(video.finite.head & text_finite),
        compensated_share(video.comp_lse, lse_video))


def dense_joint_attention(q, k, v, text_lengths, *, num_text: int, implementation=None):
    """Dense attention with padded text keys masked, as diffusers' HunyuanVideo does.
    q, k, v: [B, Sv + T, H, D]; text_lengths: [B]."""
    _check_joint(q, num_text, text_lengths)
    kv_lengths = (q.shape[1] - num_text + text_lengths).astype(jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=kv_lengths,
                                        implementation=implementation)
