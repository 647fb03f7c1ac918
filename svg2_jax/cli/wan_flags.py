"""svg2-generate's Wan flags beyond one transformer and its text: the second expert of
Wan2.2 A14B (--checkpoint-2, --guidance-2) and image-to-video (--image, --last-image,
--image-encoder). They are checked with the other flags before any model work, each
problem naming its flag: the image files first (`check_image_files`: the video size
follows the image, so the settings read it), then what the model takes
(`check_wan_flags`: which images, which experts, the CLIP tower's width, --vae to encode
the frames). `image_condition` then builds the conditioning with the JAX VAE and CLIP
vision tower. No torch."""

from __future__ import annotations

import os

from svg2_jax.cli.flags import flag, given, input_problem
from svg2_jax.cli.text import fail

# argparse dests of the flags only a real Wan model reads
WAN_ONLY = ("checkpoint_2", "guidance_2", "image", "last_image", "image_encoder")
IMAGE_FILES = ("image", "last_image")
TWO_EXPERTS = "wan2.2-t2v-a14b and wan2.2-i2v-a14b"


def check_image_files(args) -> list[str]:
    """--image and --last-image: files there that Pillow reads as images."""
    from svg2_jax.pipelines.video import load_image

    problems = []
    for dest in IMAGE_FILES:
        path = getattr(args, dest)
        if path is None:
            continue
        problem = input_problem(flag(dest), path, "file")
        if problem is None:
            try:
                load_image(path)
            except (ValueError, RuntimeError) as e:
                problem = f"{flag(dest)}: {e}"
        if problem:
            problems.append(problem)
    return problems


def image_encoder_config(path):
    """The CLIP vision config the --image-encoder checkpoint carries (no weights read);
    ValueError when it carries none."""
    from svg2_jax.checkpoints import checkpoint_config
    from svg2_jax.models.clip_vision.load import FAMILY

    return checkpoint_config(FAMILY, path)


def check_wan_flags(args, family: str, spec) -> list[str]:
    """The WAN_ONLY flags against the model: spec, its `wan_models.WanModelSpec` (None:
    the tiny random model, or HunyuanVideo)."""
    flags = [d for d in WAN_ONLY if given(args, d)]
    if family != "wan":
        return [f"{flag(d)} is read only for wan (this run is {family})" for d in flags]
    if spec is None:
        return [f"{flag(d)} needs a real model (--checkpoint): the tiny random model is a "
                "one-transformer text-to-video Wan" for d in flags]
    from svg2_jax.pipelines.wan import expert_paths
    from svg2_jax.pipelines.wan_i2v import image_problems

    problems = [f"{flag(d)}: {message}" for d, message in
                image_problems(spec, given(args, "image"), given(args, "last_image"))]
    image_dim = spec.config.image_dim
    if given(args, "image") and spec.takes_image:
        if args.vae is None:
            problems.append("--image needs --vae: the VAE encodes the conditioning frames")
        if image_dim is not None and args.image_encoder is None:
            problems.append(f"--image: {spec.name} also takes CLIP features of the image "
                            f"(image_dim={image_dim}): give --image-encoder (the repo's "
                            "image_encoder/ folder or svg2-convert's orbax)")
    if given(args, "image_encoder"):
        path = args.image_encoder
        if not given(args, "image"):
            problems.append("--image-encoder is read only with --image, which is not given")
        elif image_dim is None:
            problems.append(f"--image-encoder: {spec.name} takes no CLIP image features")
        elif (problem := input_problem("--image-encoder", path)) is not None:
            problems.append(problem)
        else:
            try:
                width = image_encoder_config(path).hidden_size
            except ValueError as e:
                problems.append(f"--image-encoder {path}: {e}")
            else:
                if width != image_dim:
                    problems.append(f"--image-encoder {path} gives {width}-wide features; "
                                    f"{spec.name} takes image_dim={image_dim}: not this "
                                    "model's CLIP vision tower")
    one = spec.num_experts == 1
    problems += [f"{flag(d)} is the low-noise expert's: {spec.name} has one transformer "
                 f"(two: {TWO_EXPERTS})" for d in ("checkpoint_2", "guidance_2")
                 if one and given(args, d)]
    second = args.checkpoint_2
    if (os.path.exists(args.checkpoint) and not (one and second is not None)
            and (second is None or os.path.exists(second))):
        try:  # no weights read: which paths hold the experts
            expert_paths(spec, args.checkpoint, second, second_name="--checkpoint-2")
        except ValueError as e:
            problems.append(f"--checkpoint: {e}")
    return problems


def image_condition(args, spec, vae, height: int, width: int, frames: int):
    """The `wan_i2v.WanImageCondition` of --image / --last-image (None without --image):
    the frames encoded by `vae` (loaded), CLIP features by --image-encoder (loaded here in
    float32, as diffusers' I2V examples run it, with the preprocessing beside it)."""
    if args.image is None:
        return None
    import jax.numpy as jnp

    from svg2_jax.pipelines.wan_i2v import model_image_condition, processing_beside

    encoder = processing = None
    if args.image_encoder is not None:
        from svg2_jax.models import clip_vision

        try:
            processing = processing_beside(args.image_encoder)
            encoder = clip_vision.load(args.image_encoder, None, jnp.float32)
        except ValueError as e:
            fail(f"--image-encoder {args.image_encoder}: {e}")
    try:
        return model_image_condition(spec, vae, args.image, args.last_image, height=height,
                                     width=width, num_frames=frames, image_encoder=encoder,
                                     processing=processing)
    except ValueError as e:
        fail(f"--image {args.image}: {e}")


def describe_image(args) -> dict | None:
    """The report's image conditioning (paths absolute; None without --image)."""
    if args.image is None:
        return None
    return {key: None if path is None else os.path.abspath(path) for key, path in
            (("first", args.image), ("last", args.last_image),
             ("image_encoder", args.image_encoder))}


def describe_experts(args, spec) -> dict:
    """{"experts": [high-noise, low-noise checkpoint]} (absolute) for a two-expert model,
    else {}: for the report's model entry."""
    if spec is None or spec.num_experts == 1:
        return {}
    from svg2_jax.pipelines.wan import expert_paths

    return {"experts": [os.path.abspath(p) for p in
                        expert_paths(spec, args.checkpoint, args.checkpoint_2)]}
