"""CLIP's image preprocessing (transformers' `CLIPImageProcessor`, its Pillow backend):
RGB, resize the shortest edge (bicubic), center crop, rescale to [0, 1], normalise with
OpenAI's CLIP mean/std. The resize is Pillow's own (what that backend calls), the rest
numpy with the processor's dtypes, so the pixels are the processor's to the bit.

transformers' torchvision backend (its default when torchvision is installed) resizes in
float with antialiasing instead of Pillow's uint8 passes, so its pixels can differ slightly
from these (not measured here: torchvision is not a dependency).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from svg2_jax.input_files import read_json

# transformers.image_utils OPENAI_CLIP_MEAN / OPENAI_CLIP_STD
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, transformers' PILImageResampling.BICUBIC


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessing:
    """The settings of a `preprocessor_config.json` this port follows; the defaults are
    `CLIPImageProcessor`'s (and the Wan2.1 I2V diffusers repos' image_processor)."""

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    resample: int = PIL_BICUBIC
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "CLIPImageProcessing":
        """From a `preprocessor_config.json`; keys that would change the pixels in a way
        not ported raise."""
        raw = read_json(path, "CLIP image processor config")
        size, crop = raw.get("size", {"shortest_edge": 224}), raw.get("crop_size", 224)
        if isinstance(size, dict):
            if set(size) != {"shortest_edge"}:
                raise ValueError(f"{path}: size {size} is not a shortest_edge resize (the only "
                                 "one ported)")
            size = size["shortest_edge"]
        if isinstance(crop, dict) and set(crop) == {"height", "width"}:
            crop = (crop["height"], crop["width"])
        elif isinstance(crop, int):
            crop = (crop, crop)
        else:
            raise ValueError(f"{path}: crop_size {crop} is neither a size nor "
                             "{height, width}")
        if raw.get("do_convert_rgb") is False or raw.get("do_pad"):
            raise ValueError(f"{path}: do_convert_rgb false / do_pad are not ported")
        keep = {f.name for f in dataclasses.fields(cls)} - {"shortest_edge", "crop_size"}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items()
                  if k in keep}
        return cls(shortest_edge=int(size), crop_size=tuple(crop), **values)


def to_rgb_image(image):
    """A PIL image, or a uint8 [H, W, 3] array, as an RGB PIL image."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"an image array must be uint8 [H, W, 3], got {image.dtype} "
                             f"{list(image.shape)}")
        return Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or a uint8 [H, W, 3] array, got "
                         f"{type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """transformers' get_resize_output_image_size(default_to_square=False): the short side
    to `edge`, the long one int(edge * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = edge, int(edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[C, H, W] -> [C, height, width] as transformers' center_crop (zero padding where the
    image is smaller)."""
    _, h, w = x.shape
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return x[:, top:top + height, left:left + width]
    out = np.zeros((x.shape[0], max(h, height), max(w, width)), x.dtype)
    tp, lp = -(-(out.shape[1] - h) // 2), -(-(out.shape[2] - w) // 2)
    out[:, tp:tp + h, lp:lp + w] = x
    top, left = (out.shape[1] - height) // 2, (out.shape[2] - width) // 2
    return out[:, top:top + height, left:left + width]


def clip_pixel_values(images, processing: CLIPImageProcessing = CLIPImageProcessing()
                      ) -> np.ndarray:
    """Images (each a PIL image or uint8 [H, W, 3]) -> float32 [N, 3, crop_h, crop_w], what
    `CLIPImageProcessor(images=images)["pixel_values"]` gives."""
    p = processing
    out = []
    for image in images:
        image = to_rgb_image(image)
        if p.do_resize:
            h, w = _shortest_edge_size(image.height, image.width, p.shortest_edge)
            image = image.resize((w, h), resample=p.resample)
        x = np.moveaxis(np.asarray(image), -1, 0)  # [3, H, W] uint8
        if p.do_center_crop:
            x = _center_crop(x, *p.crop_size)
        if p.do_rescale:
            x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
        if p.do_normalize:
            x = x.astype(np.float32)
            mean = np.asarray(p.image_mean, np.float32)[:, None, None]
            std = np.asarray(p.image_std, np.float32)[:, None, None]
            x = (x - mean) / std
        out.append(x.astype(np.float32))
    return np.stack(out)
