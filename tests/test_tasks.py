"""Image-to-video and video-to-video, in-process: the stages match diffusers' own pipelines (R25).

Guidance runs as diffusers runs it (two forwards) here: batched guidance equals it to 1e-5 on
latents (test_pipeline), but the tiny random VAE decoder is not smooth everywhere, and a 1e-6
step in the latents can move a decoded pixel by 0.05.
"""

import numpy as np
import pytest
from conftest import small_request
from test_pipeline import assert_parity

from wan_triton.conditioning import Media
from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.reference import diffusers_frames


def pixels(shape: tuple, seed: int) -> np.ndarray:
    """Smooth random uint8 pixels: a gradient plus noise, more like a picture than like static."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, shape[-2], dtype=np.float32)[None, :, None]
    return np.clip(ramp * 0.6 + rng.integers(0, 100, shape), 0, 255).astype(np.uint8)


def two_forward(pipeline: Pipeline) -> Pipeline:
    pipeline.denoiser.batch_cfg = False
    return pipeline


@pytest.fixture(scope="module")
def t2v_pipeline(tiny_checkpoint):
    return two_forward(Pipeline.from_checkpoint(tiny_checkpoint))


def test_video_to_video_matches_diffusers(tiny_checkpoint, t2v_pipeline):
    from diffusers import WanVideoToVideoPipeline

    request = small_request("v2v", video=b"mp4", strength=0.75)
    media = Media(video=pixels((9, 32, 48, 3), 1))
    ours = t2v_pipeline.frames(request, media=media)
    theirs = diffusers_frames(WanVideoToVideoPipeline.from_pretrained(tiny_checkpoint), request, media)
    assert_parity(ours, theirs)
    # The strength matters: another one gives another video.
    other = t2v_pipeline.frames(small_request("v2v", video=b"mp4", strength=1.0), media=media)
    assert np.abs(other - ours).max() > 1e-3


def test_image_to_video_matches_diffusers(i2v_checkpoint):
    """Wan2.1 I2V: CLIP image tokens plus the image's latents and mask on the input channels."""
    from diffusers import WanImageToVideoPipeline

    pipeline = two_forward(Pipeline.from_checkpoint(i2v_checkpoint))
    assert pipeline.family.tasks == ("i2v",) and pipeline.encode_image is not None
    request = small_request("i2v", image=b"png")
    media = Media(image=pixels((32, 48, 3), 2))
    ours = pipeline.frames(request, media=media)
    theirs = diffusers_frames(WanImageToVideoPipeline.from_pretrained(i2v_checkpoint), request, media)
    assert_parity(ours, theirs)
    other = pipeline.frames(request, media=Media(image=pixels((32, 48, 3), 3)))
    assert np.abs(other - ours).max() > 1e-3  # the image matters
    with pytest.raises(ValueError, match="image to video: pass the prepared image"):
        pipeline.frames(request)


def test_first_and_last_frame_matches_diffusers(flf2v_checkpoint):
    """Wan2.1 FLF2V: both frames' CLIP tokens under the image embedder's positional embedding, the
    clip [first, blanks, last] encoded, and the mask on its first and last frames."""
    from diffusers import WanImageToVideoPipeline

    pipeline = two_forward(Pipeline.from_checkpoint(flf2v_checkpoint))
    assert pipeline.family.last_frame and pipeline.family.tasks == ("i2v",)
    request = small_request("i2v", image=b"png", last_image=b"png")
    first, last = pixels((32, 48, 3), 2), pixels((32, 48, 3), 5)
    ours = pipeline.frames(request, media=Media(image=first, last_image=last))
    reference = WanImageToVideoPipeline.from_pretrained(flf2v_checkpoint)
    assert_parity(ours, diffusers_frames(reference, request, Media(image=first, last_image=last)))
    swapped = pipeline.frames(request, media=Media(image=last, last_image=first))
    assert np.abs(swapped - ours).max() > 1e-3  # which frame is the last matters


def test_ti2v_text_and_image_to_video_match_diffusers(ti2v_checkpoint):
    """Wan2.2 TI2V: text alone through WanPipeline; with an image, its latents replace the first
    latent frame (timestep 0 there) as WanImageToVideoPipeline does with expand_timesteps."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    pipeline = two_forward(Pipeline.from_checkpoint(ti2v_checkpoint))
    assert pipeline.family.tasks == ("t2v", "i2v") and pipeline.encode_image is None
    sizes = {"height": 64, "width": 96}
    request = small_request(**sizes)
    assert_parity(pipeline.frames(request), diffusers_frames(WanPipeline.from_pretrained(ti2v_checkpoint), request))
    request = small_request("i2v", image=b"png", **sizes)
    media = Media(image=pixels((64, 96, 3), 2))
    ours = pipeline.frames(request, media=media)
    theirs = diffusers_frames(WanImageToVideoPipeline.from_pretrained(ti2v_checkpoint), request, media)
    assert_parity(ours, theirs)


def test_cli_generates_image_to_video_in_process(ti2v_checkpoint, tmp_path):
    """`wan-triton generate --checkpoint DIR --image FILE`: no server, the same stages."""
    from PIL import Image

    from wan_triton.cli import main

    Image.fromarray(pixels((64, 96, 3), 2)).save(tmp_path / "first.png")
    out = tmp_path / "out.mp4"
    options = ["--height", "64", "--width", "96", "--num-frames", "5", "--num-inference-steps", "2"]
    assert (
        main(
            [
                "generate",
                "a cat",
                "-o",
                str(out),
                "--checkpoint",
                str(ti2v_checkpoint),
                "--image",
                str(tmp_path / "first.png"),
                *options,
            ]
        )
        == 0
    )
    from wan_triton.video import decode_mp4

    assert decode_mp4(out.read_bytes())[0].shape == (5, 64, 96, 3)


# --- VACE: reference images, a control or source video and its mask ------------------------------------


@pytest.fixture(scope="module")
def vace_pipelines(vace_checkpoint):
    from diffusers import WanVACEPipeline

    return two_forward(Pipeline.from_checkpoint(vace_checkpoint)), WanVACEPipeline.from_pretrained(vace_checkpoint)


def border_mask(frames: int, height: int, width: int, inside: bool) -> np.ndarray:
    """White (generate) inside a centred box, or outside it (outpainting)."""
    mask = np.zeros((frames, height, width, 3), np.uint8)
    mask[:, height // 4 : -height // 4, width // 4 : -width // 4] = 255
    return mask if inside else 255 - mask


VACE_CASES = {
    # reference-to-video: references of other sizes, letterboxed onto the output's
    "reference": (
        {"reference_images": [b"png"] * 2},
        lambda: Media(reference_images=(pixels((24, 40, 3), 2), pixels((32, 16, 3), 3))),
    ),
    "inpaint": (
        {"video": b"mp4", "mask": b"mp4"},
        lambda: Media(video=pixels((9, 32, 48, 3), 1), mask=border_mask(9, 32, 48, True)),
    ),
    "outpaint": (
        {"video": b"mp4", "mask": b"mp4"},
        lambda: Media(video=pixels((9, 32, 48, 3), 1), mask=border_mask(9, 32, 48, False)),
    ),
    # a control video (pose, depth, ...) guides the whole frame; with a reference and a scale
    "control": (
        {"video": b"mp4", "reference_images": [b"png"], "conditioning_scale": 0.7},
        lambda: Media(video=pixels((9, 32, 48, 3), 4), reference_images=(pixels((32, 48, 3), 5),)),
    ),
}


@pytest.mark.parametrize("case", list(VACE_CASES))
def test_vace_tasks_match_diffusers(vace_pipelines, case):
    """The control latents (kept and generated clips encoded apart, the folded mask, the references in
    front of the noise and dropped before the decode) as WanVACEPipeline builds them."""
    ours, theirs = vace_pipelines
    inputs, media = VACE_CASES[case]
    request = small_request("vace", **inputs)
    frames = ours.frames(request, media=media())
    assert_parity(frames, diffusers_frames(theirs, request, media()))
    assert np.abs(frames - ours.frames(small_request("vace"))).max() > 1e-3  # the conditioning matters


def test_vace_reference_images_are_prepared_as_diffusers_prepares_them(vace_pipelines):
    """From the bytes: a 27 x 45 reference is rounded down to 24 x 40 (Lanczos), then letterboxed."""
    from test_tasks_served import png

    from wan_triton import conditioning
    from wan_triton.contract import WAN21, Limits

    ours, theirs = vace_pipelines
    image = pixels((27, 45, 3), 6)
    request, media = conditioning.prepare(small_request("vace", reference_images=[png(image)]), WAN21, Limits())
    assert media.reference_images[0].shape == (24, 40, 3)
    assert_parity(
        ours.frames(request, media=media), diffusers_frames(theirs, request, Media(reference_images=(image,)))
    )


def test_the_folded_mask_is_diffusers_own(vace_pipelines):
    """Any mask values (not only black and white), any frame count: the 8 x 8 blocks and the frames
    picked per latent frame are diffusers' prepare_masks, bit for bit."""
    import torch

    from wan_triton import vace
    from wan_triton.contract import WAN21

    _, theirs = vace_pipelines
    every_value = np.arange(256, dtype=np.uint8)
    assert np.array_equal(vace.mask_values(every_value) > 0.5, every_value > 127)  # masked_clips' threshold
    rng = np.random.default_rng(0)
    # (diffusers pads at most as many reference frames as the mask has latent frames: 1 frame, 1 reference)
    for frames, references in ((1, 1), (5, 2), (9, 2), (33, 2)):
        mask = rng.integers(0, 256, (frames, 32, 48, 3), dtype=np.uint8)
        values = torch.from_numpy(vace.mask_values(mask).transpose(3, 0, 1, 2))[None]
        expected = theirs.prepare_masks(values, [[None] * references]).numpy()
        assert np.array_equal(vace.fold_mask(mask, (frames, 32, 48), WAN21, references), expected)
        all_white = theirs.prepare_masks(torch.ones_like(values), [[None]]).numpy()
        assert np.array_equal(vace.fold_mask(None, (frames, 32, 48), WAN21, 1), all_white)


# --- Wan2.2 Animate: a character image driven by pose and face videos, segment by segment ---------------


@pytest.fixture(scope="module")
def animate_pipelines(animate_checkpoint):
    from diffusers import WanAnimatePipeline

    return two_forward(Pipeline.from_checkpoint(animate_checkpoint)), WanAnimatePipeline.from_pretrained(
        animate_checkpoint
    )


def driven(mode: str, frames: int, **overrides):
    """An Animate request and its media: `frames` driving frames, 16 x 16 faces (the tiny motion encoder's)."""
    import dataclasses

    replace = {"background_video": b"mp4", "mask_video": b"mp4"} if mode == "replace" else {}
    inputs = {"image": b"png", "pose_video": b"mp4", "face_video": b"mp4", "mode": mode, **replace, **overrides}
    request = dataclasses.replace(small_request("animate", **inputs), num_frames=frames)  # as the pose video decides
    mask = np.zeros((frames, 32, 48), np.uint8)
    mask[:, 8:24, 16:32] = 255
    media = Media(
        image=pixels((32, 48, 3), 1),
        pose_video=pixels((frames, 32, 48, 3), 2),
        face_video=pixels((frames, 16, 16, 3), 3),
        background_video=pixels((frames, 32, 48, 3), 4) if replace else None,
        mask_video=mask if replace else None,
    )
    return request, media


@pytest.mark.parametrize(
    ("mode", "frames", "overrides"),
    [
        ("animate", 11, {"segment_frame_length": 9, "num_inference_steps": 2}),  # two segments, padded back and forth
        ("replace", 17, {"segment_frame_length": 13, "prev_segment_conditioning_frames": 5, "num_inference_steps": 2}),
    ],
    ids=["animate", "replace"],
)
def test_animate_matches_diffusers(animate_pipelines, mode, frames, overrides):
    """Segment by segment: each segment's noise drawn in turn from the seed's generator, its condition
    (the character, the frames the last segment ended with, their mask) and the unconditional face."""
    ours, theirs = animate_pipelines
    request, media = driven(mode, frames, **overrides)
    video = ours.frames(request, media=media)
    assert video.shape == (frames, 32, 48, 3)
    assert_parity(video, diffusers_frames(theirs, request, media))
    other = ours.frames(request, media=Media(**{**media.__dict__, "face_video": pixels((frames, 16, 16, 3), 9)}))
    assert np.abs(other - video).max() > 1e-3  # the face matters


def test_animate_media_are_prepared_as_diffusers_prepares_them(animate_checkpoint, animate_pipelines):
    """From the bytes: a character of another aspect fitted inside the output on black (diffusers'
    "fill"), the mask video made grey, the frame count and the face size from the checkpoint. (The CLIP
    tower then sees the fitted character, as our I2V does; diffusers gives it the upload.)"""
    import torch
    from PIL import Image
    from test_tasks_served import png

    from wan_triton import conditioning
    from wan_triton.contract import Geometry, Limits
    from wan_triton.video import encode_mp4

    ours, theirs = animate_pipelines
    _, media = driven("replace", 9)
    character = pixels((40, 40, 3), 7)
    names = ("pose_video", "face_video", "background_video")
    mp4 = {name: encode_mp4(getattr(media, name).astype(np.float32) / 255, 16) for name in names}
    mp4["mask_video"] = encode_mp4(np.repeat(media.mask_video[..., None], 3, -1).astype(np.float32) / 255, 16)
    raw = {"image": png(character), "mode": "replace", "segment_frame_length": 5, **mp4}
    geometry = Geometry.from_checkpoint(animate_checkpoint)
    request, prepared = conditioning.prepare(small_request("animate", **raw), geometry, Limits())
    assert request.num_frames == 9 and geometry.face_side == 16 and prepared.face_video.shape == (9, 16, 16, 3)
    fill = theirs.vae_image_processor.preprocess(Image.fromarray(character), height=32, width=48, resize_mode="fill")
    assert np.array_equal(torch.from_numpy(prepared.image.copy()).permute(2, 0, 1)[None] / 255.0 * 2 - 1, fill)
    rgb_mask = [Image.fromarray(frame) for frame in np.repeat(prepared.mask_video[..., None], 3, -1)]
    grey = theirs.video_processor_for_mask.preprocess_video(rgb_mask, height=32, width=48)
    assert np.array_equal(prepared.mask_video.astype(np.float32) / 255, grey[0, 0].numpy())
    assert_parity(ours.frames(request, media=prepared), diffusers_frames(theirs, request, prepared))
