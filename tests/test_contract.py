import json
import math

import numpy as np
import pytest

from wan_triton.contract import INPUT_NAMES, SEED_MAX, WAN21, Geometry, Limits, RequestError, validate

GOOD = {"prompt": "a cat"}


def rejects(field: str, expected: str, **values):
    with pytest.raises(RequestError) as info:
        validate({**GOOD, **values})
    assert info.value.field == field
    assert expected in str(info.value)
    return info.value


def test_defaults_are_diffusers_own():
    request = validate({"prompt": b"a cat", "seed": np.int64(5)})
    assert (request.height, request.width, request.num_frames) == (480, 832, 81)
    assert (request.num_inference_steps, request.guidance_scale, request.fps) == (50, 5.0, 16)
    assert request.negative_prompt == "" and request.seed == 5 and request.flow_shift is None


def test_missing_seed_is_random_and_in_range():
    seeds = {validate(GOOD).seed for _ in range(8)}
    assert len(seeds) > 1 and all(0 <= s <= SEED_MAX for s in seeds)


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"a\x00b", b"", b"   \n\t"])
def test_prompt_text_rules(bad):
    rejects("prompt", "", prompt=bad)


def test_prompt_byte_limit_names_the_limit():
    error = rejects("prompt", "at most 2048 bytes", prompt="x" * 2049)
    assert "2049" in str(error)


def test_negative_prompt_may_be_empty_but_not_invalid():
    assert validate({**GOOD, "negative_prompt": b""}).negative_prompt == ""
    rejects("negative_prompt", "UTF-8", negative_prompt=b"\xc3")


def test_missing_prompt_and_unknown_input():
    with pytest.raises(RequestError) as info:
        validate({"height": 480})
    assert info.value.field == "prompt"
    rejects("strength", "not an input", strength=0.5)


@pytest.mark.parametrize("side", ["height", "width"])
@pytest.mark.parametrize("value", [0, -16, 8, 65, 1936])
def test_sides_must_be_multiples_never_rounded(side, value):
    rejects(side, "", **{side: value})


def test_area_limit():
    rejects("height", "pixels", height=1280, width=1280)
    assert validate({**GOOD, "height": 720, "width": 1280}).width == 1280


@pytest.mark.parametrize("frames", [0, 2, 10, 80, 165])
def test_num_frames_is_4k_plus_1(frames):
    rejects("num_frames", "", num_frames=frames)


def test_num_frames_message_names_the_rule():
    rejects("num_frames", "4k+1", num_frames=10)


@pytest.mark.parametrize("steps", [0, -1, 101])
def test_steps_bounded(steps):
    rejects("num_inference_steps", "[1, 100]", num_inference_steps=steps)


@pytest.mark.parametrize("guidance", [math.nan, math.inf, -0.5, 20.5])
def test_guidance_finite_and_bounded(guidance):
    rejects("guidance_scale", "allowed range", guidance_scale=guidance)


def test_types_are_not_coerced():
    rejects("height", "integer", height=480.0)
    rejects("height", "integer", height=True)
    rejects("guidance_scale", "number", guidance_scale="5")
    rejects("prompt", "bytes or str", prompt=5)


def test_seed_and_fps_ranges():
    rejects("seed", "allowed range", seed=-1)
    rejects("seed", "allowed range", seed=SEED_MAX + 1)
    rejects("fps", "[1, 60]", fps=0)
    rejects("flow_shift", "(0.0", flow_shift=0.0)
    assert validate({**GOOD, "seed": SEED_MAX}).seed == SEED_MAX


def test_limits_are_configurable():
    limits = Limits.from_mapping({"max_steps": "8", "max_guidance": "7.5", "unrelated": "x"})
    assert limits.max_steps == 8 and limits.max_guidance == 7.5
    with pytest.raises(RequestError, match=r"\[1, 8\]"):
        validate({**GOOD, "num_inference_steps": 9}, limits=limits)


def test_geometry_from_checkpoint_configs(tmp_path):
    # The published Wan2.1 configs predate scale_factor_*; both forms give the same geometry.
    (tmp_path / "vae").mkdir()
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae" / "config.json").write_text(
        json.dumps({"dim_mult": [1, 2, 4, 4], "temperal_downsample": [False, True, True]})
    )
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"patch_size": [1, 2, 2]}))
    assert Geometry.from_checkpoint(tmp_path) == WAN21
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"scale_factor_spatial": 16, "scale_factor_temporal": 4}))
    wan22 = Geometry.from_checkpoint(tmp_path)
    assert wan22.spatial_multiple == 32
    with pytest.raises(RequestError, match="multiple of 32"):
        validate({**GOOD, "height": 48}, wan22)


def test_contract_names_are_diffusers_call_arguments():
    import inspect

    from diffusers import (
        WanAnimatePipeline,
        WanImageToVideoPipeline,
        WanPipeline,
        WanVACEPipeline,
        WanVideoToVideoPipeline,
    )

    accepted = {"seed", "fps", "flow_shift", "return_frames", "preview", "cache_method", "cache_threshold"}
    accepted |= {"cache_interval"}
    accepted |= {"audio", "frames_from_audio", "lora_names", "lora_scales"}
    pipelines = (WanPipeline, WanImageToVideoPipeline, WanVideoToVideoPipeline, WanVACEPipeline, WanAnimatePipeline)
    for pipeline in pipelines:
        accepted |= set(inspect.signature(pipeline.__call__).parameters)
    assert set(INPUT_NAMES) <= accepted


def test_each_task_takes_its_own_media_and_requires_it():
    assert validate({**GOOD, "image": b"png"}, task="i2v").image == b"png"
    with pytest.raises(RequestError, match="image: is required for i2v"):
        validate(GOOD, task="i2v")
    with pytest.raises(RequestError, match=r"image: is not an input of this task \(t2v\)"):
        validate({**GOOD, "image": b"png"})
    with pytest.raises(RequestError, match=r"strength: is not an input of this task \(i2v\)"):
        validate({**GOOD, "image": b"png", "strength": 0.5}, task="i2v")
    with pytest.raises(RequestError, match="video: is 11 bytes; at most 10 allowed"):
        validate({**GOOD, "video": b"x" * 11}, limits=Limits(max_video_bytes=10), task="v2v")
    with pytest.raises(RequestError, match="audio: is empty"):
        validate({**GOOD, "audio": b""})
    with pytest.raises(RequestError, match="frames_from_audio: needs an audio input"):
        validate({**GOOD, "frames_from_audio": True})


def test_strength_must_leave_at_least_one_step():
    request = validate({**GOOD, "video": b"mp4", "strength": 0.5, "num_inference_steps": 2}, task="v2v")
    assert request.strength == 0.5
    with pytest.raises(RequestError, match=r"strength: is 0.4; with 2 steps it must be at least 0.5"):
        validate({**GOOD, "video": b"mp4", "strength": 0.4, "num_inference_steps": 2}, task="v2v")
    with pytest.raises(RequestError, match=r"strength: is 0.0; allowed range is \(0.0, 1.0\]"):
        validate({**GOOD, "video": b"mp4", "strength": 0.0}, task="v2v")


def test_a_step_cache_is_one_method_with_its_own_parameter():
    def cache(**values):
        request = validate({**GOOD, **values})
        return request.cache_method, request.cache_threshold, request.cache_interval

    assert cache() == ("none", 0.0, 0)
    assert cache(cache_threshold=0.0) == ("none", 0.0, 0)
    assert cache(cache_threshold=0.2) == ("first_block", 0.2, 0)  # as before cache_method existed
    assert cache(cache_method="first_block") == ("first_block", 0.05, 0)  # diffusers' defaults
    assert cache(cache_method=b"mag", cache_threshold=0.12) == ("mag", 0.12, 0)
    assert cache(cache_method="mag") == ("mag", 0.06, 0)
    assert cache(cache_method="taylorseer") == ("taylorseer", 0.0, 2)
    assert cache(cache_method="taylorseer", cache_interval=4) == ("taylorseer", 0.0, 4)
    assert cache(cache_method="none", cache_threshold=0.0) == ("none", 0.0, 0)
    rejects("cache_method", "is 'warp'; choose from none, first_block, mag, taylorseer", cache_method="warp")
    rejects("cache_method", "must be UTF-8 bytes or str", cache_method=3)
    rejects(
        "cache_threshold",
        "does not apply to cache_method 'taylorseer', which takes cache_interval",
        cache_method="taylorseer",
        cache_threshold=0.1,
    )
    rejects(
        "cache_interval",
        "does not apply to cache_method 'mag', which takes cache_threshold",
        cache_method="mag",
        cache_interval=3,
    )
    rejects("cache_interval", "does not apply to cache_method 'first_block'", cache_threshold=0.1, cache_interval=3)
    rejects(
        "cache_threshold",
        "does not apply to cache_method 'none', which takes no parameter",
        cache_method="none",
        cache_threshold=0.1,
    )
    rejects(
        "cache_threshold",
        "is 0 with cache_method 'first_block'; allowed range is (0, 1.0]",
        cache_method="first_block",
        cache_threshold=0.0,
    )
    rejects("cache_threshold", "allowed range is [0.0, 1.0]", cache_method="mag", cache_threshold=1.5)
    rejects("cache_interval", "is 1; allowed range is [2, 8]", cache_method="taylorseer", cache_interval=1)
    rejects("cache_interval", "must be an integer", cache_method="taylorseer", cache_interval=2.0)
    assert cache(cache_method="faster", cache_interval=3) == ("faster", 0.0, 3)
    # FasterCache approximates the unconditional branch: without guidance there is none to approximate.
    rejects(
        "cache_method",
        "'faster' approximates the unconditional branch, which guidance_scale 1.0 does not run; allowed with"
        " guidance_scale > 1",
        cache_method="faster",
        guidance_scale=1.0,
    )


def test_parallel_modes_refuse_the_step_caches_they_cannot_run():
    from wan_triton.parallel import Parallel

    Parallel(cfg=2).check_request(32, 48, 9, "taylorseer", WAN21)  # each rank runs its branch's blocks
    with pytest.raises(RequestError, match="cache_method: 'faster' is not supported with --parallel cfg=2"):
        Parallel(cfg=2).check_request(32, 48, 9, "faster", WAN21)
    with pytest.raises(RequestError, match="cache_method: step caching is not supported with --parallel ulysses=2"):
        Parallel(ulysses=2).check_request(32, 48, 9, "first_block", WAN21)


def test_a_request_knows_which_inputs_the_client_set():
    assert validate({"prompt": b"a", "image": b"png", "height": 480}, task="i2v").given == {"prompt", "image", "height"}


def test_adapters_are_named_lists_with_one_scale_each():
    request = validate({**GOOD, "lora_names": [b"a", b"b"], "lora_scales": [0.5, -1.0]})
    assert request.lora_names == ("a", "b") and request.lora_scales == (0.5, -1.0)
    assert validate({**GOOD, "lora_names": ["a"]}).lora_scales == (1.0,)
    for raw, message in (
        ({"lora_scales": [1.0]}, "lora_scales: given without lora_names"),
        ({"lora_names": ["a", "a"]}, "lora_names: names an adapter twice"),
        ({"lora_names": [""]}, "lora_names: must not be empty"),
        ({"lora_names": list("abcde")}, r"lora_names: has 5 names; 1 to 4 allowed"),
        ({"lora_names": ["a"], "lora_scales": [1.0, 2.0]}, "lora_scales: has 2 values for 1 adapters"),
        ({"lora_names": ["a"], "lora_scales": [5.0]}, r"lora_scales: is 5.0; allowed range is \[-4.0, 4.0\]"),
        ({"lora_names": ["a"], "lora_scales": [math.nan]}, "lora_scales: is nan"),
    ):
        with pytest.raises(RequestError, match=message):
            validate({**GOOD, **raw})


def test_vace_inputs_are_all_optional_and_pick_their_task():
    from wan_triton.contract import tasks_of

    assert tasks_of({"video": b"mp4"}) == ["v2v", "vace"]  # the client asks the server which it serves
    assert tasks_of({"video": b"mp4", "mask": b"mp4"}) == tasks_of({"reference_images": [b"png"]}) == ["vace"]
    assert tasks_of({}) == ["t2v", "vace"] and tasks_of({"image": b"png", "mask": b"mp4"}) == []
    request = validate({**GOOD, "reference_images": [b"a", b"b"], "conditioning_scale": 0.5}, task="vace")
    assert request.reference_images == (b"a", b"b") and request.conditioning_scale == 0.5
    assert validate(GOOD, task="vace").reference_images == ()
    for raw, message in (
        ({"mask": b"mp4"}, "mask: needs a video"),
        ({"reference_images": []}, "reference_images: has 0 images; 1 to 4 allowed"),
        ({"reference_images": [b""]}, "reference_images: is empty"),
        ({"reference_images": ["text"]}, "reference_images: must be the file's bytes"),
        ({"conditioning_scale": 4.5}, r"conditioning_scale: is 4.5; allowed range is \[0.0, 4.0\]"),
        ({"strength": 0.5}, r"strength: is not an input of this task \(vace\)"),
    ):
        with pytest.raises(RequestError, match=message):
            validate({**GOOD, **raw}, task="vace")


def test_all_media_of_a_request_share_one_cap():
    """R29: each input within its own cap, and all of them together within what the ingress passes."""
    limits = Limits(max_video_bytes=100, max_image_bytes=50, max_request_media_bytes=250)
    videos = {"pose_video": b"x" * 100, "face_video": b"x" * 100}
    assert validate({**GOOD, "image": b"x" * 50, **videos}, limits=limits, task="animate")
    with pytest.raises(RequestError, match="pose_video: the request's media take 251 bytes together; at most 250"):
        validate({**GOOD, "image": b"x" * 50, **videos, "audio": b"x"}, limits=limits, task="animate")
    refs = {"reference_images": [b"x" * 50] * 4}
    with pytest.raises(RequestError, match="reference_images: the request's media take 300 bytes together"):
        validate({**GOOD, "video": b"x" * 100, **refs}, limits=limits, task="vace")


def test_animate_needs_its_driving_videos_and_checks_its_segments():
    from wan_triton.contract import tasks_of

    driving = {"image": b"png", "pose_video": b"mp4", "face_video": b"mp4"}
    assert tasks_of(driving) == ["animate"] and tasks_of({"image": b"png"}) == ["i2v"]
    request = validate({**GOOD, **driving, "prev_segment_conditioning_frames": 5}, task="animate")
    assert (request.mode, request.segment_frame_length, request.prev_segment_conditioning_frames) == ("animate", 77, 5)
    with pytest.raises(RequestError, match="face_video: is required for animate"):
        validate({**GOOD, "image": b"png", "pose_video": b"mp4"}, task="animate")
    for raw, message in (
        ({"mode": "Replace"}, "mode: is 'Replace'; one of animate, replace"),
        ({"mode": "replace", "mask_video": b"mp4"}, "background_video: is required with mode replace"),
        ({"mask_video": b"mp4"}, "mask_video: only with mode replace"),
        ({"segment_frame_length": 8}, "segment_frame_length: is 8; must be 4k"),
        ({"prev_segment_conditioning_frames": 2}, "prev_segment_conditioning_frames: is 2; 1 or 5 allowed"),
        ({"segment_frame_length": 9, "prev_segment_conditioning_frames": 5}, "under half of segment_frame_length"),
    ):
        with pytest.raises(RequestError, match=message):
            validate({**GOOD, **driving, **raw}, task="animate")


@pytest.mark.parametrize("pipeline", ["StableDiffusionPipeline"])
def test_a_checkpoint_of_a_pipeline_not_served_is_refused_at_start(tiny_checkpoint, tmp_path, pipeline):
    """Not served as the text-to-video model it partly contains: `serve` exits 2 naming what it is."""
    import shutil
    import subprocess
    import sys

    from wan_triton.contract import CheckpointError, Family

    folder = tmp_path / "checkpoint"
    for part in ("transformer", "vae"):
        (folder / part).mkdir(parents=True)
        shutil.copy(tiny_checkpoint / part / "config.json", folder / part / "config.json")
    index = json.loads((tiny_checkpoint / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline}))
    with pytest.raises(CheckpointError, match=f"is a {pipeline} checkpoint; served are WanPipeline"):
        Family.from_checkpoint(folder)
    command = [sys.executable, "-m", "wan_triton.cli", "serve", "--checkpoint", str(folder)]
    refused = subprocess.run([*command, "--repository", str(tmp_path / "repo")], capture_output=True, text=True)
    assert refused.returncode == 2 and f"is a {pipeline} checkpoint" in refused.stderr, refused.stderr
