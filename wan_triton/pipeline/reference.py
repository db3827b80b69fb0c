"""diffusers' own Wan pipelines on a request: what the stages are checked and benchmarked against."""

from __future__ import annotations

import numpy as np
import torch

from wan_triton.conditioning import Media
from wan_triton.contract import GenerationRequest


def diffusers_frames(pipe, request: GenerationRequest, media=None) -> np.ndarray:
    """Frames [F, H, W, 3] in [0, 1] from a loaded `diffusers.WanPipeline`, seeded like ours; with
    prepared media (conditioning.Media), a `WanImageToVideoPipeline`, `WanVideoToVideoPipeline` or
    `WanVACEPipeline`."""
    from diffusers import WanVACEPipeline
    from PIL import Image

    extra: dict = {"guidance_scale_2": request.guidance_scale_2} if request.guidance_scale_2 is not None else {}
    if isinstance(pipe, WanVACEPipeline):
        media = media or Media()
        extra["conditioning_scale"] = request.conditioning_scale
        for name in ("video", "mask"):
            if getattr(media, name) is not None:
                extra[name] = [Image.fromarray(frame) for frame in getattr(media, name)]
        if media.reference_images:
            extra["reference_images"] = [Image.fromarray(image) for image in media.reference_images]
        media = None  # the rest as for text to video
    if media is not None and media.image is not None:
        extra["image"] = Image.fromarray(media.image)
    if media is not None and media.last_image is not None:
        extra["last_image"] = Image.fromarray(media.last_image)
    if media is not None and media.video is not None:
        extra["video"] = [Image.fromarray(frame) for frame in media.video]
        extra["strength"] = request.strength
    else:
        extra["num_frames"] = request.num_frames
    return pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
        **extra,
    ).frames[0]
