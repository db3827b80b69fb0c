"""Image-to-video, video-to-video and audio against live servers: parity with diffusers (R25),
untrusted media (R7, R8), the audio track. The tiny T2V server (`served`) serves wan_t2v and
wan_v2v; the Wan2.1 I2V and Wan2.2 TI2V tiny checkpoints get a server each, here."""

import io
import zlib

import av
import numpy as np
import pytest
import soundfile
from conftest import SMALL, serve, small_request, stop
from test_serving import executions
from test_tasks import pixels

from wan_triton import media
from wan_triton.client import Client, ClientError
from wan_triton.conditioning import Media
from wan_triton.contract import Limits
from wan_triton.pipeline.reference import diffusers_frames
from wan_triton.repository import DENOISER, VAE_ENCODER
from wan_triton.video import encode_mp4, to_uint8

PROMPT = "a red cat walking in the snow"


def clip(frames: int = 9, height: int = 32, width: int = 48) -> bytes:
    return encode_mp4(pixels((frames, height, width, 3), 1).astype(np.float32) / 255.0, 16)


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def wav(seconds: float, rate: int = 22_050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, 0.3 * np.sin(2 * np.pi * 440 * t), rate, format="WAV")
    return out.getvalue()


def decoded(video: bytes) -> np.ndarray:
    limits = Limits()
    frames, _ = media.decode_video(
        video,
        max_bytes=limits.max_video_bytes,
        max_pixels=limits.max_media_pixels,
        max_frames=limits.max_frames,
        max_seconds=limits.max_media_seconds,
    )
    return frames


def png_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header declaring side x side pixels, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def assert_close(served_frames: np.ndarray, expected: np.ndarray) -> None:
    """Float frames agree to 1e-4 in-process (test_tasks); served, the ONNX encoders and batched
    guidance may flip a rounding level."""
    difference = np.abs(served_frames.astype(int) - to_uint8(expected).astype(int))
    assert served_frames.shape == expected.shape and difference.max() <= 1, difference.max()


# --- video to video and audio, on the T2V server ---------------------------------------------------


def test_served_video_to_video_matches_diffusers(served):
    from diffusers import WanVideoToVideoPipeline

    source = clip()
    result = Client(served.url).generate(PROMPT, frames=True, video=source, strength=0.75, seed=42, **SMALL)
    request = small_request("v2v", video=source, strength=0.75)
    pipe = WanVideoToVideoPipeline.from_pretrained(served.checkpoint)
    assert_close(result.frames, diffusers_frames(pipe, request, Media(video=decoded(source))))


def test_video_to_video_streams_the_steps_it_runs(served):
    """strength 0.5 of 4 steps runs 2; without num_frames the video's own count (4k+1) is used."""
    steps = []
    options = {k: v for k, v in SMALL.items() if k != "num_frames"}
    result = Client(served.url).generate_stream(
        PROMPT,
        on_progress=lambda p: steps.append((p.step, p.total)),
        frames=True,
        video=clip(11),
        strength=0.5,
        **options,
    )
    assert steps == [(1, 2), (2, 2)]
    assert result.frames.shape == (9, 32, 48, 3)


def test_audio_becomes_the_aac_track_and_can_set_the_length(served):
    result = Client(served.url).generate(
        PROMPT,
        audio=wav(1.0),
        frames_from_audio=True,
        fps=16,
        seed=1,
        **{k: v for k, v in SMALL.items() if k != "num_frames"},
    )
    with av.open(io.BytesIO(result.video)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert audio.codec_context.name == "aac"
        assert video.frames == 17  # 1 s at 16 fps is 16 frames, rounded up to 4k+1
    plain = Client(served.url).generate(PROMPT, audio=wav(0.2), seed=1, **SMALL)
    with av.open(io.BytesIO(plain.video)) as container:
        assert container.streams.video[0].frames == SMALL["num_frames"] and container.streams.audio


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("video", clip()[:2000], "video: "),
        ("video", png(pixels((32, 48, 3), 1)), "video: "),
        ("video", b"http://169.254.169.254/latest/meta-data", "video: "),
        ("audio", wav(0.5)[:-5000], "audio: "),
        ("audio", png(pixels((32, 48, 3), 1)), "audio: "),
    ],
    ids=["truncated-mp4", "png-as-video", "url-as-video", "truncated-wav", "png-as-audio"],
)
def test_bad_media_is_invalid_argument_and_reaches_no_model(served, name, data, message):
    """R8: refused before any stage runs (the denoiser and the VAE encoder count no execution)."""
    before = executions(served.url, DENOISER), executions(served.url, VAE_ENCODER)
    with pytest.raises(ClientError) as refused:
        Client(served.url).generate(PROMPT, **{name: data}, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith(message), refused.value
    assert (executions(served.url, DENOISER), executions(served.url, VAE_ENCODER)) == before
    assert Client(served.url).generate(PROMPT, **SMALL).video  # healthy for the next one


def test_the_t2v_server_has_no_image_to_video(served):
    with pytest.raises(ClientError) as refused:
        Client(served.url).generate(PROMPT, image=png(pixels((32, 48, 3), 1)), **SMALL)
    assert "wan_i2v" in str(refused.value)


# --- Wan2.1 I2V and Wan2.2 TI2V servers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def served_i2v(i2v_checkpoint, exported_repository, tmp_path_factory):
    # The tiny checkpoints share the text encoder and the Wan2.1 VAE (same seeds and sizes): their
    # exports are reused; the parts a variant has of its own are exported at start.
    served = serve(i2v_checkpoint, exported_repository, tmp_path_factory.mktemp("served-i2v"))
    yield served
    stop(served)


@pytest.fixture(scope="module")
def served_ti2v(ti2v_checkpoint, exported_repository, tmp_path_factory):
    served = serve(ti2v_checkpoint, exported_repository, tmp_path_factory.mktemp("served-ti2v"))
    yield served
    stop(served)


def test_served_wan21_image_to_video_matches_diffusers(served_i2v):
    from diffusers import WanImageToVideoPipeline

    image = pixels((32, 48, 3), 2)
    client = Client(served_i2v.url)
    result = client.generate(PROMPT, frames=True, image=png(image), seed=42, **SMALL)
    request = small_request("i2v", image=b"png")
    pipe = WanImageToVideoPipeline.from_pretrained(served_i2v.checkpoint)
    assert_close(result.frames, diffusers_frames(pipe, request, Media(image=image)))
    previews = []
    streamed = client.generate_stream(
        PROMPT, on_progress=previews.append, image=png(image), seed=42, preview=True, **SMALL
    )
    assert streamed.video == result.video and len(previews) == SMALL["num_inference_steps"]
    assert previews[-1].preview.shape == (32, 48, 3)


@pytest.fixture(scope="module")
def served_flf2v(flf2v_checkpoint, exported_repository, tmp_path_factory):
    served = serve(flf2v_checkpoint, exported_repository, tmp_path_factory.mktemp("served-flf2v"))
    yield served
    stop(served)


def test_a_first_last_frame_request_without_its_last_frame_is_refused_alike_at_every_door(
    served_flf2v, flf2v_checkpoint, tmp_path, monkeypatch, capsys
):
    """FLF2V without `last_image`: gRPC, the OpenAI API (which takes one image) and `generate --checkpoint`
    (before any weight loads) refuse it with the admission's one message, naming the field."""
    import openai
    from test_api import start_api

    from wan_triton import cli
    from wan_triton.admission import Served, admit
    from wan_triton.contract import RequestError
    from wan_triton.pipeline import Pipeline

    first = png(pixels((32, 48, 3), 2))
    with pytest.raises(RequestError) as refused:
        admit({"prompt": PROMPT, "image": first, **SMALL}, "i2v", Served.of_checkpoint(flf2v_checkpoint))
    expected = str(refused.value)
    assert refused.value.field == "last_image" and "is required" in expected
    with pytest.raises(ClientError) as grpc:
        Client(served_flf2v.url).generate(PROMPT, image=first, **SMALL)
    assert grpc.value.status == "INVALID_ARGUMENT" and expected in str(grpc.value)
    api = start_api(served_flf2v.url, tmp_path)
    try:
        sdk = openai.OpenAI(base_url=f"{api.url}/v1", api_key="k", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError) as http:
            sdk.videos.create(prompt=PROMPT, size="48x32", input_reference=("a.png", first, "image/png"))
        assert http.value.body["message"] == expected and http.value.body["param"] == "last_image"
    finally:
        api.stop()

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded for a refused request")

    monkeypatch.setattr(Pipeline, "from_checkpoint", no_weights)
    (tmp_path / "first.png").write_bytes(first)
    command = ["generate", PROMPT, "--checkpoint", str(flf2v_checkpoint), "--image", str(tmp_path / "first.png")]
    assert cli.main([*command, "-o", str(tmp_path / "x.mp4")]) == 2
    assert expected in capsys.readouterr().err


def test_served_first_and_last_frame_matches_diffusers(served_flf2v):
    from diffusers import WanImageToVideoPipeline

    first, last = pixels((32, 48, 3), 2), pixels((32, 48, 3), 5)
    client = Client(served_flf2v.url)
    result = client.generate(PROMPT, frames=True, image=png(first), last_image=png(last), seed=42, **SMALL)
    request = small_request("i2v", image=b"png", last_image=b"png")
    pipe = WanImageToVideoPipeline.from_pretrained(served_flf2v.checkpoint)
    assert_close(result.frames, diffusers_frames(pipe, request, Media(image=first, last_image=last)))
    streamed = client.generate_stream(PROMPT, image=png(first), last_image=png(last), seed=42, **SMALL)
    assert streamed.video == result.video


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "last_image: is required by this first-last-frame checkpoint"),
        ({"last_image": clip()}, "last_image: "),
        ({"last_image": b"http://169.254.169.254/latest/meta-data"}, "last_image: "),
        ({"last_image": png(pixels((32, 48, 3), 1))[:100]}, "last_image: "),
    ],
    ids=["missing", "mp4-as-image", "url", "truncated-png"],
)
def test_a_bad_or_missing_last_frame_is_refused_before_any_stage(served_flf2v, options, message):
    before = executions(served_flf2v.url, DENOISER), executions(served_flf2v.url, VAE_ENCODER)
    with pytest.raises(ClientError) as refused:
        Client(served_flf2v.url).generate(PROMPT, image=png(pixels((32, 48, 3), 2)), **options, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith(message), refused.value
    assert (executions(served_flf2v.url, DENOISER), executions(served_flf2v.url, VAE_ENCODER)) == before


def test_a_checkpoint_without_last_frames_refuses_one(served_i2v):
    image = png(pixels((32, 48, 3), 2))
    with pytest.raises(ClientError) as refused:
        Client(served_i2v.url).generate(PROMPT, image=image, last_image=image, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and "last_image: this checkpoint takes no last frame" in str(
        refused.value
    )


def test_image_sizing_follows_the_image_when_no_size_is_given(served_i2v):
    """Wan's area-based sizing: the image's aspect at the default area (here under the limits)."""
    options = {k: v for k, v in SMALL.items() if k not in ("height", "width")}
    result = Client(served_i2v.url).generate(PROMPT, frames=True, image=png(pixels((60, 120, 3), 4)), **options)
    height, width = media.area_size(60, 120, 480 * 832, 16)
    assert result.frames.shape == (SMALL["num_frames"], height, width, 3) and abs(width / height - 2) < 0.05


def test_image_bombs_and_wrong_kinds_are_refused(served_i2v):
    client = Client(served_i2v.url)
    for data, expected in ((png_bomb(), "pixels"), (clip(), "image: "), (b"GIF89a" + bytes(64), "GIF")):
        with pytest.raises(ClientError) as refused:
            client.generate(PROMPT, image=data, **SMALL)
        assert refused.value.status == "INVALID_ARGUMENT" and expected in str(refused.value), refused.value
    with pytest.raises(ClientError) as missing:
        Client(served_i2v.url, model="wan_i2v").generate(PROMPT, **SMALL)
    assert missing.value.status == "INVALID_ARGUMENT" and "image" in str(missing.value)
    assert client.generate(PROMPT, image=png(pixels((32, 48, 3), 2)), **SMALL).video


def test_served_ti2v_text_and_image_to_video_match_diffusers(served_ti2v):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    sizes = {**SMALL, "height": 64, "width": 96}
    client = Client(served_ti2v.url)
    request = small_request(**sizes)
    result = client.generate(PROMPT, frames=True, seed=42, **sizes)
    assert_close(result.frames, diffusers_frames(WanPipeline.from_pretrained(served_ti2v.checkpoint), request))
    image = pixels((64, 96, 3), 2)
    result = client.generate(PROMPT, frames=True, image=png(image), seed=42, **sizes)
    pipe = WanImageToVideoPipeline.from_pretrained(served_ti2v.checkpoint)
    expected = diffusers_frames(pipe, small_request("i2v", image=b"png", **sizes), Media(image=image))
    assert_close(result.frames, expected)


def test_the_openai_api_serves_image_to_video_on_the_served_geometry(served_ti2v, tmp_path):
    """`input_reference` through the OpenAI SDK gives the gRPC client's video (Wan2.2 TI2V), and the
    API validates by the served checkpoint's geometry (multiples of 32 here, 16 for Wan2.1)."""
    import openai
    from test_api import start_api

    from wan_triton.video import decode_mp4

    api = start_api(served_ti2v.url, tmp_path)
    try:
        client = api.sdk()
        assert [m.id for m in client.models.list().data] == ["wan_t2v", "wan_i2v"]
        image = png(pixels((64, 96, 3), 2))
        fields = {k: v for k, v in SMALL.items() if k not in ("height", "width")} | {"seed": 42}
        job = client.videos.create(
            prompt=PROMPT, size="96x64", input_reference=("first.png", image, "image/png"), extra_body=fields
        )
        assert job.model == "wan_i2v"
        assert client.videos.poll(job.id).status == "completed"
        frames, _ = decode_mp4(client.videos.download_content(job.id).read())
        grpc = Client(served_ti2v.url).generate(PROMPT, image=image, height=64, width=96, **fields)
        expected, _ = decode_mp4(grpc.video)
        assert np.array_equal(frames, expected)
        with pytest.raises(openai.BadRequestError) as refused:
            client.videos.create(prompt=PROMPT, size="48x32", extra_body=fields)
        assert refused.value.body["param"] == "size" and "multiple of 32" in refused.value.body["message"]
        with pytest.raises(openai.BadRequestError) as refused:  # decoded at create, as the entry will
            client.videos.create(prompt=PROMPT, input_reference=("a.png", image[:40], "image/png"))
        assert refused.value.body["param"] == "input_reference"
    finally:
        api.stop()


def test_cli_sends_the_files_it_is_given(served, tmp_path):
    """`wan-triton generate --video FILE --audio FILE` against the server: the files' bytes go."""
    import subprocess
    import sys

    (tmp_path / "in.mp4").write_bytes(clip())
    (tmp_path / "in.wav").write_bytes(wav(0.5))
    options = ["--height", "32", "--width", "48", "--num-frames", "5", "--num-inference-steps", "2"]
    command = [sys.executable, "-m", "wan_triton.cli", "generate", PROMPT, "-o", str(tmp_path / "out.mp4")]
    command += ["--url", served.url, "--video", str(tmp_path / "in.mp4"), "--audio", str(tmp_path / "in.wav")]
    done = subprocess.run([*command, *options, "--strength", "0.5"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert container.streams.video[0].frames == 5 and container.streams.audio
    refused = subprocess.run([*command, *options, "--strength", "0.1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "INVALID_ARGUMENT: strength" in refused.stderr


# --- Wan2.1 VACE ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_vace(vace_checkpoint, exported_repository, tmp_path_factory):
    """The VACE checkpoint shares the T2V one's text encoder and VAE: only the denoiser is its own."""
    served = serve(vace_checkpoint, exported_repository, tmp_path_factory.mktemp("served-vace"))
    yield served
    stop(served)


def mask_clip(inside: bool) -> bytes:
    from test_tasks import border_mask

    return encode_mp4(border_mask(9, 32, 48, inside).astype(np.float32) / 255.0, 16)


SERVED_VACE = {
    # a reference whose sides are no multiples of 8 (the server rounds them as diffusers does)
    "reference": lambda: {"reference_images": [png(pixels((27, 45, 3), 6)), png(pixels((32, 16, 3), 3))]},
    "inpaint": lambda: {"video": clip(), "mask": mask_clip(True)},
    "outpaint": lambda: {"video": clip(), "mask": mask_clip(False), "conditioning_scale": 0.5},
    "control": lambda: {"video": clip()},  # a video alone: the client picks wan_vace on this server
}


@pytest.mark.parametrize("case", list(SERVED_VACE))
def test_served_vace_matches_diffusers(served_vace, case):
    from diffusers import WanVACEPipeline

    from wan_triton import media as decode

    inputs = SERVED_VACE[case]()
    client = Client(served_vace.url)
    result = client.generate(PROMPT, frames=True, seed=42, **inputs, **SMALL)
    limits = Limits()
    references = tuple(
        decode.decode_image(data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_media_pixels)
        for data in inputs.get("reference_images", ())
    )
    prepared = Media(
        video=decoded(inputs["video"]) if "video" in inputs else None,
        mask=decoded(inputs["mask"]) if "mask" in inputs else None,
        reference_images=references,  # as given: diffusers rounds them itself
    )
    request = small_request("vace", **inputs)
    pipe = WanVACEPipeline.from_pretrained(served_vace.checkpoint)
    assert_close(result.frames, diffusers_frames(pipe, request, prepared))
    if case == "reference":
        streamed = client.generate_stream(PROMPT, seed=42, **inputs, **SMALL)
        assert streamed.video == result.video


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mask": mask_clip(True)}, "mask: needs a video"),
        ({"video": clip(), "mask": clip(5)}, "mask: has 5 frames; 9 needed"),
        ({"video": clip(), "mask": png(pixels((32, 48, 3), 1))}, "mask: "),
        ({"reference_images": [png(pixels((32, 48, 3), 1))[:100]]}, "reference_images: "),
        ({"reference_images": [clip()]}, "reference_images: "),
        ({"reference_images": [b"http://169.254.169.254/latest/meta-data"]}, "reference_images: "),
        ({"reference_images": [png(pixels((4, 40, 3), 1))]}, "reference_images: is 4x40 pixels; at least 8"),
        ({"reference_images": [png(pixels((8, 8, 3), 1))] * 5}, "reference_images: has 5 values; 1 to 4 allowed"),
        ({"reference_images": [png_bomb()]}, "reference_images: "),
        ({"conditioning_scale": -0.5}, "conditioning_scale: is -0.5; allowed range is [0.0, 4.0]"),
        ({"conditioning_scale": float("nan")}, "conditioning_scale: "),
        ({"video": clip(), "strength": 0.5}, "unexpected inference input 'strength'"),  # Triton says it
    ],
    ids=[
        "mask-without-video",
        "short-mask",
        "png-as-mask",
        "truncated-reference",
        "mp4-as-reference",
        "url-as-reference",
        "tiny-reference",
        "too-many-references",
        "reference-bomb",
        "negative-scale",
        "nan-scale",
        "v2v-strength",
    ],
)
def test_bad_vace_media_is_refused_before_any_stage(served_vace, options, message):
    before = executions(served_vace.url, DENOISER), executions(served_vace.url, VAE_ENCODER)
    with pytest.raises(ClientError) as refused:
        Client(served_vace.url, model="wan_vace").generate(PROMPT, **options, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith(message), refused.value
    assert (executions(served_vace.url, DENOISER), executions(served_vace.url, VAE_ENCODER)) == before


# --- Wan2.2 Animate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_animate(animate_checkpoint, exported_repository, tmp_path_factory):
    served = serve(animate_checkpoint, exported_repository, tmp_path_factory.mktemp("served-animate"))
    yield served
    stop(served)


def driving_inputs(mode: str, frames: int = 11) -> dict:
    from test_tasks import driven

    _, media = driven(mode, frames)
    video = {n: encode_mp4(getattr(media, n).astype(np.float32) / 255, 16) for n in ("pose_video", "face_video")}
    if mode == "replace":
        video["background_video"] = encode_mp4(media.background_video.astype(np.float32) / 255, 16)
        rgb = np.repeat(media.mask_video[..., None], 3, -1)
        video["mask_video"] = encode_mp4(rgb.astype(np.float32) / 255, 16)
    return {"image": png(media.image), "mode": mode, **video}


ANIMATE_OPTIONS = {**SMALL, "num_inference_steps": 2, "segment_frame_length": 9}
del ANIMATE_OPTIONS["num_frames"]  # the pose video's


@pytest.mark.parametrize(("mode", "guidance"), [("animate", 3.0), ("replace", 1.0)])
def test_served_animate_matches_diffusers(served_animate, mode, guidance):
    """Two segments (11 driving frames, 9 a segment): the second starts from the first's last frame,
    handed over as floats; progress counts the steps of both."""
    import dataclasses

    from diffusers import WanAnimatePipeline

    inputs = driving_inputs(mode)
    options = {**ANIMATE_OPTIONS, "guidance_scale": guidance}
    client = Client(served_animate.url)
    result = client.generate(PROMPT, frames=True, seed=42, **inputs, **options)
    grey = None if mode == "animate" else media.grey(decoded(inputs["mask_video"]))
    prepared = Media(
        image=media.decode_image(inputs["image"], max_bytes=1 << 20, max_pixels=1 << 20),
        pose_video=decoded(inputs["pose_video"]),
        face_video=decoded(inputs["face_video"]),
        background_video=decoded(inputs["background_video"]) if mode == "replace" else None,
        mask_video=grey,
    )
    raw = {k: v for k, v in {**inputs, **options}.items() if k not in ("height", "width")}
    request = dataclasses.replace(small_request("animate", **raw), num_frames=11)
    pipe = WanAnimatePipeline.from_pretrained(served_animate.checkpoint)
    assert_close(result.frames, diffusers_frames(pipe, request, prepared))
    if mode == "animate":
        steps = []
        streamed = client.generate_stream(
            PROMPT, on_progress=lambda p: steps.append((p.step, p.total)), seed=42, **inputs, **options
        )
        assert streamed.video == result.video and steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "dance"}, "mode: is 'dance'; one of animate, replace"),
        ({"background_video": clip(11)}, "background_video: only with mode replace"),
        ({"mode": "replace", "background_video": clip(11)}, "mask_video: is required with mode replace"),
        ({"face_video": clip(5, 16, 16)}, "face_video: has 5 frames; 11 needed"),
        ({"pose_video": clip(1)}, "pose_video: has 1 frames; more than prev_segment_conditioning_frames"),
        ({"pose_video": png(pixels((32, 48, 3), 1))}, "pose_video: "),
        ({"face_video": clip()[:2000]}, "face_video: "),
        ({"prev_segment_conditioning_frames": 3}, "prev_segment_conditioning_frames: is 3; 1 or 5 allowed"),
        ({"segment_frame_length": 10}, "segment_frame_length: is 10; must be 4k+1"),
        ({"prev_segment_conditioning_frames": 5}, "prev_segment_conditioning_frames: is 5; under half"),
    ],
    ids=[
        "mode",
        "background-in-animate",
        "replace-without-mask",
        "short-face",
        "one-frame-pose",
        "png-as-pose",
        "truncated-face",
        "overlap-3",
        "segment-10",
        "overlap-too-long",
    ],
)
def test_bad_animate_inputs_are_refused_before_any_stage(served_animate, change, message):
    before = executions(served_animate.url, DENOISER), executions(served_animate.url, VAE_ENCODER)
    inputs = {**driving_inputs("animate"), **ANIMATE_OPTIONS, **change}
    with pytest.raises(ClientError) as refused:
        Client(served_animate.url, model="wan_animate").generate(PROMPT, **inputs)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith(message), refused.value
    assert (executions(served_animate.url, DENOISER), executions(served_animate.url, VAE_ENCODER)) == before
