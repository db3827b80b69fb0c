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
    from diffusers import WanAnimatePipeline, WanVACEPipeline
    from PIL import Image

    if isinstance(pipe, WanAnimatePipeline):
        return _animate_frames(pipe, request, media)

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


def _animate_frames(pipe, request: GenerationRequest, media) -> np.ndarray:
    """`WanAnimatePipeline`: the character and the driving videos as PIL frames (the mask as RGB)."""
    from PIL import Image

    def frames(video) -> list | None:
        return None if video is None else [Image.fromarray(frame) for frame in video]

    mask = None if media.mask_video is None else np.repeat(media.mask_video[..., None], 3, axis=-1)
    return pipe(
        image=Image.fromarray(media.image),
        pose_video=frames(media.pose_video),
        face_video=frames(media.face_video),
        background_video=frames(media.background_video),
        mask_video=frames(mask),
        mode=request.mode,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        segment_frame_length=request.segment_frame_length,
        prev_segment_conditioning_frames=request.prev_segment_conditioning_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
    ).frames[0]
