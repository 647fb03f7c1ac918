"""Image conditioning of the Wan image-to-video models, built as diffusers'
`WanImageToVideoPipeline` builds it (diffusers 0.42.1, `pipelines/wan/pipeline_wan_i2v.py`):

- Wan2.1 I2V / FLF2V and Wan2.2 I2V-A14B (`prepare_latents`): the first frame (and the
  last, FLF2V) followed by zero frames is VAE-encoded (the posterior's mode), normalised,
  and 4 mask channels (1 where a frame is given) go before it: 20 channels concatenated to
  the 16 noise channels at every step.
- Wan2.2 TI2V-5B (`expand_timesteps`): the first frame alone is encoded and replaces the
  first latent frame of the model input at every step (and of the result), whose tokens
  get timestep 0.
- Wan2.1's transformers also take CLIP features of the input image(s) (`encode_image`:
  CLIPVisionModel hidden_states[-2] after CLIPImageProcessor).

The VAE and the CLIP tower are the JAX ones (`svg2_jax.models.wan_vae`,
`svg2_jax.models.clip_vision`): no torch on this path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from svg2_jax.models import clip_vision, wan_vae
from svg2_jax.models.clip_vision.preprocess import CLIPImageProcessing, clip_pixel_values

MASK_CHANNELS = 4  # = the VAE's temporal compression: one mask channel per folded frame


# how far (relative) the image's aspect ratio may be from the video's before it counts as
# a wrong-size image: diffusers stretches any image to the video's size; a few percent is
# the rounding to 16-pixel multiples, more is a visibly distorted first frame
ASPECT_TOLERANCE = 0.1


def image_problems(spec, image: bool, last_image: bool) -> list[tuple[str, str]]:
    """What is wrong with giving `spec`'s model an image (`image`) and a last image
    (`last_image`): (which, message) pairs, which being "image" or "last_image": an
    image-to-video model without an image, a text-to-video one with one, a last frame for a
    model without first-and-last-frame conditioning."""
    from svg2_jax.pipelines.wan_models import FIRST_FRAME, OPTIONAL_FIRST

    problems = []
    if last_image and not image:
        problems.append(("last_image", "a last image needs a first image"))
    if spec.needs_image and not image:
        problems.append(("image", f"{spec.name} is an image-to-video model: give it an image"))
    if image and not spec.takes_image:
        problems.append(("image", f"{spec.name} is a text-to-video model: it takes no image"))
    if last_image and not spec.takes_last_image:
        why = {FIRST_FRAME: "conditions on the first frame only (wan2.1-flf2v-14b takes a "
                            "last frame too)",
               OPTIONAL_FIRST: "conditions on the first frame only"}.get(spec.image, "")
        problems.append(("last_image", f"{spec.name} takes no last image: it {why}"))
    return problems


def check_images(spec, image, last_image) -> None:
    """Whether the model takes the image(s) given: a ValueError with the first of
    `image_problems`."""
    problems = image_problems(spec, image is not None, last_image is not None)
    if problems:
        raise ValueError(problems[0][1])


def video_size(image_size: tuple[int, int], height: int | None, width: int | None,
               max_area: int, multiple: int) -> tuple[int, int]:
    """(height, width) of an image-to-video run for an image of image_size (height,
    width): when not given, the image's aspect ratio at about `max_area` pixels in
    `multiple`s (`video.fit_to_area`); when given, a ValueError if the image's aspect ratio
    is off by more than ASPECT_TOLERANCE (it would be stretched to that size)."""
    from svg2_jax.pipelines.video import fit_to_area

    ih, iw = image_size
    if height is None and width is None:
        return fit_to_area(ih, iw, max_area, multiple)
    if height is None or width is None:
        raise ValueError("give both height and width, or neither (then they follow the "
                         "image's aspect ratio)")
    image_aspect, video_aspect = iw / ih, width / height
    if abs(image_aspect / video_aspect - 1) > ASPECT_TOLERANCE:
        raise ValueError(
            f"the image is {iw}x{ih} (aspect {image_aspect:.3f}) but the video {width}x{height} "
            f"(aspect {video_aspect:.3f}): the first frame would be stretched. Leave out the "
            "height and width to follow the image's aspect ratio, or crop the image")
    return height, width


def video_size_of(model, image, height: int | None, width: int | None) -> tuple[int, int]:
    """`video_size` for a released model (`wan_models.model_spec`) and an image (a path,
    PIL image or uint8 array): its default area, in multiples of its VAE factor times the
    patch."""
    from svg2_jax.pipelines.video import load_image
    from svg2_jax.pipelines.wan import model_vae
    from svg2_jax.pipelines.wan_models import model_spec

    spec = model_spec(model)
    if isinstance(image, np.ndarray):
        size = image.shape[:2]
    else:
        image = load_image(image) if not hasattr(image, "size") else image
        size = (image.height, image.width)
    _, ph, pw = spec.config.patch_size
    return video_size(size, height, width, spec.height * spec.width,
                      model_vae(spec).spatial_compression * max(ph, pw))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WanImageCondition:
    """What an image-to-video Wan transformer sees besides the noise and the text.

    latents: concatenated mode: [B, 4 + z, F, h, w] mask channels then the normalised
      latents of the conditioning video; first-frame mode (TI2V): [B, z, 1, h, w] the
      normalised latents of the first frame.
    first_frame_mask: first-frame mode only, [1, 1, F, h, w] float32: 0 at the first latent
      frame, 1 elsewhere (None in concatenated mode).
    image_embeds: CLIP features [B, N, image_dim] ([2B, N, image_dim] first and last frame,
      FLF2V) for transformers with image_dim; None otherwise.
    """

    latents: jax.Array
    first_frame_mask: jax.Array | None = None
    image_embeds: jax.Array | None = None

    @property
    def replaces_first_frame(self) -> bool:
        return self.first_frame_mask is not None


def frame_mask(batch: int, num_frames: int, latent_hw: tuple[int, int], last: bool,
               temporal: int = MASK_CHANNELS) -> np.ndarray:
    """[B, temporal, F, h, w] float32, `prepare_latents`'s `mask_lat_size`: 1 for the given
    frames (the first; and the last with `last`), the first frame's value repeated
    `temporal` times so the pixel frames fold into latent frames, folded as diffusers'
    view + transpose does."""
    h, w = latent_hw
    mask = np.ones((batch, 1, num_frames, h, w), np.float32)
    mask[:, :, 1:num_frames - 1 if last else num_frames] = 0
    mask = np.concatenate([np.repeat(mask[:, :, :1], temporal, axis=2), mask[:, :, 1:]], axis=2)
    mask = mask.reshape(batch, -1, temporal, h, w)  # [B, F, temporal, h, w]
    return np.ascontiguousarray(mask.transpose(0, 2, 1, 3, 4))


def conditioning_video(image: np.ndarray, last_image: np.ndarray | None, num_frames: int,
                       first_frame_only: bool) -> np.ndarray:
    """[1, 3, T, H, W] float32: the frame(s) [3, H, W] in [-1, 1] with zero frames between
    them (T = num_frames), or the first frame alone (T = 1) when `first_frame_only`."""
    x = image[None, :, None]
    if first_frame_only:
        return x
    zeros = np.zeros((1, 3, num_frames - 1 - (last_image is not None), *image.shape[1:]),
                     np.float32)
    parts = [x, zeros] + ([] if last_image is None else [last_image[None, :, None]])
    return np.concatenate(parts, axis=2)


def encode_condition(vae: wan_vae.AutoencoderKLWan, image: np.ndarray,
                     last_image: np.ndarray | None, num_frames: int, batch: int,
                     first_frame_only: bool) -> jax.Array:
    """The normalised VAE latents (posterior mode) of `conditioning_video`, repeated for
    the batch: [B, z, F, h, w] ([B, z, 1, h, w] first frame only), float32."""
    video = jnp.asarray(conditioning_video(image, last_image, num_frames, first_frame_only))
    z = wan_vae.wan_vae_encode(vae, video.astype(vae.dtype)).mode().astype(jnp.float32)
    z = wan_vae.normalize(z, vae.config)
    return jnp.repeat(z, batch, axis=0)


def clip_image_features(image_encoder: clip_vision.CLIPVisionModel, images,
                        processing: CLIPImageProcessing = CLIPImageProcessing()) -> jax.Array:
    """`encode_image`: the CLIP tower's hidden_states[-2] [len(images), N, D] of the
    preprocessed images (PIL images or uint8 [H, W, 3], as given to the pipeline)."""
    pixels = jnp.asarray(clip_pixel_values(images, processing), image_encoder.dtype)
    return clip_vision.penultimate_hidden_states(image_encoder, pixels)


def image_condition(vae: wan_vae.AutoencoderKLWan, image, last_image=None, *, height: int,
                    width: int, num_frames: int, batch: int = 1, replace_first_frame: bool,
                    image_encoder: clip_vision.CLIPVisionModel | None = None,
                    processing: CLIPImageProcessing = CLIPImageProcessing()
                    ) -> WanImageCondition:
    """The whole conditioning of one video from its image(s) (PIL images or uint8
    [H, W, 3], resized to height x width as diffusers' VideoProcessor does).

    replace_first_frame: the TI2V-5B mode (first frame only; a last image is an error, as
      that model has no way to take it). image_encoder: for transformers with image_dim.
    """
    from svg2_jax.pipelines.video import image_frame

    if replace_first_frame and last_image is not None:
        raise ValueError("a last image needs a first-and-last-frame model: Wan2.2 TI2V-5B "
                         "conditions on the first frame only")
    frame = image_frame(image, height, width)
    last = None if last_image is None else image_frame(last_image, height, width)
    z = encode_condition(vae, frame, last, num_frames, batch, replace_first_frame)
    embeds = None
    if image_encoder is not None:
        images = [image] if last_image is None else [image, last_image]
        embeds = jnp.tile(clip_image_features(image_encoder, images, processing), (batch, 1, 1))
    if replace_first_frame:
        t = vae.config.scale_factor_temporal or vae.config.temporal_compression
        f = 1 + (num_frames - 1) // t
        mask = np.ones((1, 1, f, *z.shape[3:]), np.float32)
        mask[:, :, 0] = 0
        return WanImageCondition(z, jnp.asarray(mask), embeds)
    mask = frame_mask(batch, num_frames, z.shape[3:], last is not None,
                      vae.config.scale_factor_temporal or MASK_CHANNELS)
    return WanImageCondition(jnp.concatenate([jnp.asarray(mask), z], axis=1), None, embeds)


def processing_beside(image_encoder_path) -> CLIPImageProcessing:
    """The CLIP preprocessing of a diffusers repo's `image_processor/` next to its
    `image_encoder/` (or inside the given folder), else CLIPImageProcessor's defaults (the
    released Wan2.1 I2V repos' settings)."""
    from pathlib import Path

    path = Path(image_encoder_path)
    for candidate in (path / "preprocessor_config.json",
                      path.parent / "image_processor" / "preprocessor_config.json"):
        if candidate.is_file():
            return CLIPImageProcessing.from_json(candidate)
    return CLIPImageProcessing()


def model_image_condition(spec, vae, image, last_image=None, *, height: int, width: int,
                          num_frames: int, image_encoder=None, batch: int = 1,
                          processing: CLIPImageProcessing | None = None
                          ) -> WanImageCondition:
    """`image_condition` for a released model (`wan_models.WanModelSpec`): its checks
    (`check_images`), its mode (TI2V-5B replaces the first frame), and CLIP features when
    its transformer takes them.

    vae: a loaded `wan_vae.AutoencoderKLWan` or a path for `wan_vae.load` (checked against
      the spec's VAE preset: a Wan2.1 VAE for TI2V-5B is an error naming both).
    image, last_image: PIL images, uint8 [H, W, 3] arrays, or image file paths.
    image_encoder: a loaded `clip_vision.CLIPVisionModel` or a path for `clip_vision.load`;
      needed exactly when the transformer has image_dim.
    processing: the CLIP preprocessing (None: `processing_beside` an image_encoder path,
      else CLIPImageProcessor's defaults).
    """
    from svg2_jax.pipelines.video import load_image

    image, last_image = (load_image(x) if isinstance(x, (str, bytes)) or hasattr(x, "__fspath__")
                         else x for x in (image, last_image))
    check_images(spec, image, last_image)
    if image is None:
        raise ValueError(f"{spec.name}: no image given (text-to-video needs no condition)")
    if not isinstance(vae, wan_vae.AutoencoderKLWan):
        vae = wan_vae.load(vae)  # the checkpoint's own config, checked below
    c, want = vae.config, wan_vae.get_config(spec.vae)
    have = (c.z_dim, c.spatial_compression, c.temporal_compression)
    if have != (spec.config.out_channels, want.spatial_compression, want.temporal_compression):
        raise ValueError(
            f"{spec.name} takes latents of {spec.config.out_channels} channels from a "
            f"{want.spatial_compression}x spatial, {want.temporal_compression}x temporal VAE "
            f"({spec.vae}); the VAE given has z_dim {have[0]}, {have[1]}x / {have[2]}x")
    image_dim = spec.config.image_dim
    if image_dim is None:
        if image_encoder is not None:
            raise ValueError(f"{spec.name} takes no CLIP image features: no image encoder")
    elif image_encoder is None:
        raise ValueError(f"{spec.name} takes CLIP image features (image_dim={image_dim}): "
                         f"give its image encoder ({spec.image_encoder or 'a CLIPVisionModel'}"
                         ", e.g. the diffusers repo's image_encoder/)")
    else:
        if not isinstance(image_encoder, clip_vision.CLIPVisionModel):
            if processing is None:
                processing = processing_beside(image_encoder)
            image_encoder = clip_vision.load(image_encoder)  # its own config, checked below
        if image_encoder.config.hidden_size != image_dim:
            raise ValueError(f"{spec.name} takes CLIP features of width {image_dim}; the "
                             f"image encoder's are {image_encoder.config.hidden_size}")
    return image_condition(vae, image, last_image, height=height, width=width,
                           num_frames=num_frames, batch=batch,
                           replace_first_frame=spec.expand_timesteps,
                           image_encoder=image_encoder,
                           processing=processing or CLIPImageProcessing())
