"""Wan2.2-S2V against a live server on the tiny release layout (`tiny-checkpoint --variant s2v-2.2`, converted):
`wan_s2v` against the in-process pipeline, the MP4's audio track, progress and cancel across clips, bad audio."""

import io

import av
import numpy as np
import pytest
import soundfile
from conftest import serve, stop
from test_serving import executions
from test_tasks_served import png

from wan_triton import conditioning
from wan_triton.client import Client, ClientError
from wan_triton.contract import Geometry, Limits, validate
from wan_triton.repository import AUDIO_ENCODER, DENOISER, VAE_DECODER
from wan_triton.video import encode_mp4, to_uint8

PROMPT = "a woman is singing"
SIZE = {"height": 64, "width": 64}  # latents of 8 x 8: FramePack's coarsest scale takes 8 x 8 latent cells


def speech(seconds: float, rate: int = 22_050) -> bytes:
    """A voiced tone with a syllable rhythm, as WAV."""
    t = np.arange(int(seconds * rate)) / rate
    out = io.BytesIO()
    soundfile.write(out, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)), rate, format="WAV")
    return out.getvalue()


@pytest.fixture(scope="module")
def s2v_release(tmp_path_factory):
    from wan_triton.checkpoints.tiny import build_checkpoint
    from wan_triton.s2v import release

    root = build_checkpoint(tmp_path_factory.mktemp("s2v-release") / "Wan2.2-S2V-14B", "s2v-2.2")
    release.convert_pickles(root)
    return root


@pytest.fixture(scope="module")
def served_s2v(s2v_release, tmp_path_factory):
    served = serve(s2v_release, None, tmp_path_factory.mktemp("served-s2v"))
    yield served
    stop(served)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    pose = rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)  # shorter than the video: black after it
    return {
        "image": png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "audio": speech(6.0),  # 96 frames at 16 fps: two clips
        "pose_video": encode_mp4(pose.astype(np.float32) / 255, 16),
    }


def test_served_s2v_matches_the_pipeline_in_process_and_carries_the_audio(served_s2v, inputs, tmp_path):
    """Two clips, a pose video, guidance: the served frames are the in-process pipeline's (torch, on the same
    decoded media) within one 8-bit level; the MP4's audio track is the input's length, to a frame."""
    from wan_triton.pipeline import Pipeline

    options = {**SIZE, "num_inference_steps": 2, "seed": 5}
    result = Client(served_s2v.url).generate(PROMPT, frames=True, **inputs, **options)
    assert result.frames.shape == (96, 64, 64, 3)  # 6 s at 16 fps: num_frames follows the audio

    geometry = Geometry.from_checkpoint(served_s2v.checkpoint)
    request = validate({"prompt": PROMPT, **inputs, **options}, geometry, Limits(), "s2v")
    request, media = conditioning.prepare(request, geometry, Limits())
    expected = Pipeline.from_checkpoint(served_s2v.checkpoint).frames(request, media=media)
    difference = np.abs(result.frames.astype(int) - to_uint8(expected).astype(int))
    assert difference.max() <= 1, difference.max()

    with av.open(io.BytesIO(result.video)) as container:
        track = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(track))
    assert abs(samples / track.rate - 6.0) <= 1 / 16, samples / track.rate


def test_a_stream_counts_the_steps_of_every_clip_and_a_cancel_stops_it_in_the_second(served_s2v, inputs):
    """Six steps a clip, two clips: progress runs to 12; the client leaving at step 8 (the second clip's
    second, four steps before that clip's end) stops the job there: the second clip is never decoded."""

    class Leave(Exception):
        pass

    options = {**SIZE, "num_inference_steps": 6, "seed": 6, "guidance_scale": 1.0}
    steps = []
    client = Client(served_s2v.url)
    client.generate_stream(PROMPT, on_progress=lambda p: steps.append((p.step, p.total)), **inputs, **options)
    assert steps == [(step, 12) for step in range(1, 13)]

    decoded = executions(served_s2v.url, VAE_DECODER)
    seen = []

    def leave_in_the_second_clip(progress) -> None:
        seen.append(progress.step)
        if progress.step == 8:
            raise Leave

    with pytest.raises(Leave):
        client.generate_stream(PROMPT, on_progress=leave_in_the_second_clip, **inputs, **options)
    assert seen == list(range(1, 9))
    assert executions(served_s2v.url, VAE_DECODER, settle_s=1.0) == decoded + 1  # the first clip's only
    assert client.generate(PROMPT, **inputs, **{**options, "num_frames": 8}).video  # and the server serves on


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"audio": None}, "audio: is required for s2v"),
        ({"audio": _truncated(speech(2.0))}, "audio: "),
        ({"audio": png(np.zeros((8, 8, 3), np.uint8))}, "audio: "),
        ({"audio": speech(12.0)}, "audio: is 12.00 s = 192 frames at 16 fps"),
        # inputs the entry does not declare: Triton itself refuses them, by name
        ({"fps": 24}, "unexpected inference input 'fps'"),
        ({"cache_method": "mag"}, "unexpected inference input 'cache_method'"),
    ],
    ids=["missing", "truncated", "png-as-audio", "too-long", "fps", "step-cache"],
)
def test_bad_s2v_inputs_are_refused_before_any_stage(served_s2v, inputs, change, message):
    before = executions(served_s2v.url, AUDIO_ENCODER), executions(served_s2v.url, DENOISER)
    given = {k: v for k, v in {**inputs, **SIZE, **change}.items() if v is not None}
    with pytest.raises(ClientError) as refused:
        Client(served_s2v.url, model="wan_s2v").generate(PROMPT, **given)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith(message), refused.value
    assert (executions(served_s2v.url, AUDIO_ENCODER), executions(served_s2v.url, DENOISER)) == before


def test_generate_in_process_on_the_release_writes_the_mp4_with_its_audio(s2v_release, inputs, tmp_path):
    """`wan-triton generate --checkpoint <the S2V release>`: the same task as the server's, in this process; the
    MP4 carries the speech as its audio track, and its frames follow the audio."""
    from wan_triton import cli

    files = {name: tmp_path / f"{name}.bin" for name in inputs}
    for name, data in inputs.items():
        files[name].write_bytes(data)
    out = tmp_path / "s2v.mp4"
    command = ["generate", PROMPT, "--checkpoint", str(s2v_release), "-o", str(out), "--num-inference-steps", "1"]
    command += ["--height", "64", "--width", "64", "--seed", "5"]
    command += [arg for name, path in files.items() for arg in (f"--{name.replace('_', '-')}", str(path))]
    assert cli.main(command) == 0
    with av.open(str(out)) as container:
        video, track = container.streams.video[0], container.streams.audio[0]
        frames = sum(1 for _ in container.decode(video))
        container.seek(0)
        samples = sum(frame.samples for frame in container.decode(track))
    assert frames == 96  # 6 s of speech at 16 fps
    assert abs(samples / track.rate - 6.0) <= 1 / 16, samples / track.rate
