"""The quality benchmark's inputs: q, k, v built from real images (see
scripts/bench_quality.py): panning videos cut into tokens, projected to heads whose
q . k measures feature similarity, with Wan's 3-D rotary embedding."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def load_image(name: str) -> np.ndarray:
    """A scikit-image bundled image as float RGB in [0, 1], [H, W, 3]."""
    import skimage.data
    from skimage.color import gray2rgb
    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = gray2rgb(img)
    img = img[..., :3].astype(np.float64)
    return img / 255.0 if img.max() > 1.0 else img


def panning_video(image: np.ndarray, frames: int, height: int, width: int,
                  pan_px: int) -> np.ndarray:
    """[T, height, width, 3]: a window sliding right by pan_px (frame pixels) per frame.

    The image is rescaled (anti-aliased) so that the window plus the whole pan fits in
    it at one image pixel per frame pixel; the window is centred vertically.
    """
    from skimage.transform import resize
    ih, iw = image.shape[:2]
    need_w = width + (frames - 1) * pan_px
    scale = max(need_w / iw, height / ih)
    new_h, new_w = max(height, math.ceil(ih * scale)), max(need_w, math.ceil(iw * scale))
    big = resize(image, (new_h, new_w), order=1, anti_aliasing=scale < 1, mode="reflect")
    y0 = (new_h - height) // 2
    x0 = (new_w - need_w) // 2
    return np.stack([big[y0:y0 + height, x0 + t * pan_px:x0 + t * pan_px + width]
                     for t in range(frames)]).astype(np.float32)


def token_features(video: np.ndarray, patch: int = 16, pool: int = 4,
                   context_weight: float = 0.5) -> np.ndarray:
    """[T, H, W, 3] video -> [T, gh, gw, F] token features (see the module docstring)."""
    t, h, w, c = video.shape
    if h % patch or w % patch or patch % pool:
        raise ValueError(f"frame {h}x{w} must be a multiple of the patch {patch}, and the "
                         f"patch a multiple of the pooling {pool}")
    gh, gw, cell = h // patch, w // patch, patch // pool
    x = video.reshape(t, gh, pool, cell, gw, pool, cell, c).mean(axis=(3, 6))
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(t, gh, gw, pool * pool * c)
    x = (x - x.mean(axis=(0, 1, 2))) / (x.std(axis=(0, 1, 2)) + 1e-6)
    if context_weight:
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        ctx = sum(xp[:, i:i + gh, j:j + gw] for i in range(3) for j in range(3)) / 9.0
        x = np.concatenate([x, context_weight * ctx], axis=-1)
    return x.astype(np.float32)


def wan_rope_angles(grid: tuple[int, int, int], head_dim: int = 128,
                    theta: float = 10000.0) -> np.ndarray:
    """Rotation angles [T * gh * gw, head_dim // 2] of diffusers' WanRotaryPosEmbed.

    h_dim = w_dim = 2 * (head_dim // 6), t_dim = head_dim - h_dim - w_dim (44/42/42 for
    128); per axis the frequencies are 1 / theta^(arange(0, dim, 2) / dim) (computed in
    float64, as diffusers does), the angle of position p is p * freq, and the complex
    channels are ordered [t | h | w].
    """
    f, gh, gw = grid
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim

    def freqs(dim):
        return 1.0 / theta ** (np.arange(0, dim, 2)[: dim // 2].astype(np.float64) / dim)

    ft = np.arange(f)[:, None] * freqs(t_dim)[None]
    fh = np.arange(gh)[:, None] * freqs(h_dim)[None]
    fw = np.arange(gw)[:, None] * freqs(w_dim)[None]
    ang = np.concatenate([
        np.broadcast_to(ft[:, None, None], (f, gh, gw, ft.shape[-1])),
        np.broadcast_to(fh[None, :, None], (f, gh, gw, fh.shape[-1])),
        np.broadcast_to(fw[None, None, :], (f, gh, gw, fw.shape[-1]))], axis=-1)
    return ang.reshape(f * gh * gw, head_dim // 2)


def apply_rope(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """x [..., S, H, D]; angles [S, D/2]: (x[2i] + i x[2i+1]) * exp(i angle_i), in float64."""
    x64 = x.astype(np.float64)
    re, im = x64[..., 0::2], x64[..., 1::2]
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    out = np.empty_like(x64)
    out[..., 0::2] = re * cos - im * sin
    out[..., 1::2] = re * sin + im * cos
    return out.astype(np.float32)


def build_qkv(images=("astronaut",), frames=5, height=256, width=448, heads=2,
              head_dim=128, patch=16, pool=4, pan_px=8, context_weight=0.5,
              temperature=0.5, qk_noise=0.3, seed=0, roll_kv=0):
    """q, k, v [B = len(images), S, H, D] float32 and a dict describing them.

    roll_kv: the keys and values of token (t, y, x) are those built for (t, y, x - roll_kv)
    (wrapping along x), so each query's most similar key is a neighbour's, not its own:
    no own-key advantage, which the builder otherwise gives (Wq and Wk are noisy copies of
    one matrix, so q_t . k_t is large by construction)."""
    rng = np.random.default_rng(seed)
    feats = []
    for name in images:
        video = panning_video(load_image(name), frames, height, width, pan_px)
        feats.append(token_features(video, patch, pool, context_weight))
    grid = feats[0].shape[:3]
    f_dim = feats[0].shape[-1]
    x = np.stack([f.reshape(-1, f_dim) for f in feats])  # [B, S, F]
    proj = rng.normal(size=(f_dim, head_dim)) / math.sqrt(f_dim)
    x = x.astype(np.float64) @ proj
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)

    wq, wk, wv = [], [], []
    for _ in range(heads):
        w = np.exp(rng.normal(size=head_dim))
        w /= np.sqrt(np.mean(w * w))
        a = w[:, None] * rng.normal(size=(head_dim, head_dim)) / math.sqrt(head_dim)
        wq.append(a + qk_noise * rng.normal(size=a.shape) / math.sqrt(head_dim))
        wk.append(a + qk_noise * rng.normal(size=a.shape) / math.sqrt(head_dim))
        wv.append(rng.normal(size=a.shape) / math.sqrt(head_dim))
    wq, wk, wv = (np.stack(m) for m in (wq, wk, wv))  # [H, C, D]
    inv_sqrt_t = 1.0 / math.sqrt(temperature)
    q = np.einsum("bsc,hcd->bshd", x, wq) * inv_sqrt_t
    k = np.einsum("bsc,hcd->bshd", x, wk) * inv_sqrt_t
    v = np.einsum("bsc,hcd->bshd", x, wv)
    if roll_kv:
        k, v = (np.roll(y.reshape(y.shape[0], *grid, *y.shape[2:]), roll_kv, axis=3)
                .reshape(y.shape) for y in (k, v))
    angles = wan_rope_angles(grid, head_dim)
    q, k = apply_rope(q, angles), apply_rope(k, angles)
    meta = dict(images=list(images), frames=frames, height=height, width=width,
                patch=patch, pool=pool, pan_px=pan_px, context_weight=context_weight,
                temperature=temperature, qk_noise=qk_noise, seed=seed, heads=heads,
                head_dim=head_dim, grid=list(grid), S=int(x.shape[1]), roll_kv=roll_kv)
    return (jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32),
            jnp.asarray(v.astype(np.float32)), meta)
