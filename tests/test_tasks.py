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
