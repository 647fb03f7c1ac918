"""Pieces every video pipeline shares: latent shapes through a causal video VAE (4x/8x
unless the VAE says otherwise), initial noise, conditioning images (read, sized, made
frames), a latent preview, mp4 writing."""

from __future__ import annotations

import warnings
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

# Wan2.1's and HunyuanVideo's VAEs: 8x spatial, 4x temporal, first frame kept
# (F = 1 + (T - 1) / 4). Wan2.2's is 16x spatial.
VAE_SPATIAL = 8
VAE_TEMPORAL = 4


class VAECompression(Protocol):
    """What the latent shape needs of a video VAE (its config: `WanVAEConfig`,
    `HunyuanVideoVAEConfig`): frames per latent frame after the first, pixels per latent
    pixel."""

    @property
    def temporal_compression(self) -> int: ...

    @property
    def spatial_compression(self) -> int: ...


def latent_shape(channels: int, patch: tuple[int, int, int], height: int, width: int,
                 frames: int, vae: VAECompression | None = None):
    """(C, F, H, W) of the latents for a video of frames x height x width pixels, with a
    clear error when the size cannot go through the VAE and the patch embedding.
    patch: (p_t, p_h, p_w) of the model's patch embedding. vae: the VAE's compression
    (None: VAE_TEMPORAL x / VAE_SPATIAL x, Wan2.1's and HunyuanVideo's)."""
    pt, ph, pw = patch
    rt, rs = ((VAE_TEMPORAL, VAE_SPATIAL) if vae is None
              else (vae.temporal_compression, vae.spatial_compression))
    problems = []
    if frames < 1 or (frames - 1) % rt:
        problems.append(f"frames={frames} must be 1 + {rt}k (e.g. {1 + 20 * rt}): the VAE "
                        f"keeps the first frame and compresses the rest {rt}x")
    for name, size, p in (("height", height, ph), ("width", width, pw)):
        if size < 1 or size % (rs * p):
            problems.append(f"{name}={size} must be a positive multiple of {rs * p} "
                            f"(VAE {rs}x times patch {p})")
    f = 1 + (frames - 1) // rt if frames >= 1 else 0
    if not problems and f % pt:
        problems.append(f"{f} latent frames are not a multiple of the temporal patch {pt}")
    if problems:
        raise ValueError("cannot generate this size: " + "; ".join(problems))
    return channels, f, height // rs, width // rs


def sequence_length(channels, patch, height: int, width: int, frames: int,
                    vae: VAECompression | None = None) -> int:
    """Video tokens per sample (e.g. 75600 for Wan at 1280x720, 81 frames)."""
    _, f, h, w = latent_shape(channels, patch, height, width, frames, vae)
    pt, ph, pw = patch
    return (f // pt) * (h // ph) * (w // pw)


def initial_noise(seed: int, shape) -> jax.Array:
    """[B, C, F, H, W] float32 standard normal latents (the loop keeps latents in float32)."""
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def load_image(path):
    """The image file at `path` as an RGB PIL image (what diffusers' `load_image` gives),
    with an error naming the file when it is missing or not an image."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise RuntimeError("reading images needs Pillow: pip install pillow") from e
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e})") from None


def image_frame(image, height: int, width: int) -> np.ndarray:
    """A conditioning image (a PIL image or uint8 [H, W, 3]) as a video frame float32
    [3, height, width] in [-1, 1], as diffusers' `VideoProcessor.preprocess(image, height,
    width)`: Pillow's Lanczos resize to (width, height) (an identity at that size), / 255,
    2x - 1."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an image array must be uint8 [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")
        image = Image.fromarray(image)
    x = np.asarray(image.resize((width, height), resample=Image.Resampling.LANCZOS))
    x = x.astype(np.float32) / np.float32(255.0)
    return np.moveaxis(2.0 * x - 1.0, -1, 0).astype(np.float32)


def fit_to_area(image_height: int, image_width: int, max_area: int, multiple: int
                ) -> tuple[int, int]:
    """(height, width) of the image's aspect ratio with about `max_area` pixels, each a
    multiple of `multiple` (the VAE factor times the patch): the sizing diffusers' Wan I2V
    example and the SVG2 reference's I2V script apply to the input image."""
    aspect = image_height / image_width
    height = round(np.sqrt(max_area * aspect)) // multiple * multiple
    width = round(np.sqrt(max_area / aspect)) // multiple * multiple
    if height < multiple or width < multiple:
        raise ValueError(f"an image of {image_width}x{image_height} (aspect {aspect:.3g}) "
                         f"leaves no {multiple}-pixel multiple at {max_area} pixels")
    return int(height), int(width)


def to_uint8_frames(video) -> np.ndarray:
    """A decoded video [B, 3, T, H, W] in [-1, 1] (a torch tensor, or a numpy / jax array)
    -> uint8 [B, T, H, W, 3]: round((clip(x, -1, 1) + 1) * 127.5) in float32, the same
    float32 operations (round half to even) whichever framework decoded it."""
    if hasattr(video, "detach"):  # torch, possibly on a GPU or in bf16
        video = video.detach().float().cpu().numpy()
    x = np.asarray(video, np.float32)
    x = np.round((np.clip(x, -1, 1) + 1) * np.float32(127.5)).astype(np.uint8)
    return np.moveaxis(x, 1, -1)


def latent_preview(latents: np.ndarray) -> np.ndarray:
    """Not a decode: the first 3 latent channels, normalised per channel and upsampled 8x,
    as uint8 frames [B, F, H*8, W*8, 3], for a look at the latents without a VAE."""
    x = np.asarray(latents[:, :3], np.float32)
    lo = x.min(axis=(2, 3, 4), keepdims=True)
    hi = x.max(axis=(2, 3, 4), keepdims=True)
    x = (x - lo) / np.maximum(hi - lo, 1e-6)
    x = np.repeat(np.repeat(x, VAE_SPATIAL, axis=3), VAE_SPATIAL, axis=4)
    return (np.moveaxis(x, 1, -1) * 255).round().astype(np.uint8)


def check_mp4_writer():
    """Raises RuntimeError unless imageio and its ffmpeg binary are there (what
    `write_mp4` needs): call it before the work whose result it will write."""
    try:
        import imageio.v3  # noqa: F401
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise RuntimeError(f"writing mp4 needs imageio and imageio-ffmpeg ({e}): pip install "
                           "'svg2-jax[video]'") from None


def write_mp4(frames: np.ndarray, path: str, fps: int = 16):
    """frames: [T, H, W, 3] uint8 -> an H.264 mp4 through imageio's ffmpeg plugin."""
    check_mp4_writer()
    import imageio.v3 as iio

    try:
        with warnings.catch_warnings():
            # JAX warns on any fork; this one only starts the ffmpeg encoder process.
            warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
            iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264",
                        macro_block_size=1)
    except Exception as e:  # noqa: BLE001  (ffmpeg's failures come as several kinds)
        raise RuntimeError(f"could not write {path}: {type(e).__name__}: {e}") from e
