"""Property-based, over the whole request space against the live server (hypothesis): every
request gets a valid MP4 or a clean INVALID_ARGUMENT naming the field the contract names, and the
server stays healthy. Bounded: 40 examples, sizes kept cheap where valid."""

from __future__ import annotations

import math

from conftest import LIMITS, SMALL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wan_triton.client import Client, ClientError
from wan_triton.contract import SEED_MAX, Geometry, Limits, RequestError, validate
from wan_triton.video import decode_mp4

SIDES = st.sampled_from([-16, 0, 8, 16, 32, 40, 48, 64, 1920, 1936])  # invalid, valid, over the limit
REQUESTS = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=40), st.binary(max_size=40), st.just("x" * 3000))},
    optional={
        "negative_prompt": st.one_of(st.text(max_size=20), st.binary(max_size=20)),
        "height": SIDES,
        "width": SIDES,
        "num_frames": st.sampled_from([-1, 0, 1, 5, 9, 10, 200]),
        "num_inference_steps": st.sampled_from([-1, 0, 1, 2, 3, 101]),
        "guidance_scale": st.one_of(st.sampled_from([math.nan, math.inf, -1.0, 25.0]), st.floats(0, 10)),
        "flow_shift": st.one_of(st.sampled_from([0.0, math.nan, -2.0]), st.floats(0.5, 10)),
        "seed": st.one_of(st.integers(-(2**63), -1), st.integers(0, SEED_MAX)),
        "fps": st.sampled_from([0, 1, 16, 61]),
        "cache_method": st.sampled_from(["none", "first_block", "taylorseer", "warp", ""]),  # mag: tiny has no ratios
        "cache_threshold": st.one_of(st.sampled_from([-0.1, 1.5, math.nan]), st.floats(0, 1)),
        "cache_interval": st.sampled_from([1, 2, 3, 9]),
        "return_frames": st.booleans(),
        "preview": st.booleans(),
    },
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=REQUESTS)
def test_every_request_gets_a_video_or_a_clean_refusal(served, request):
    options = {"height": 32, "width": 48, "num_frames": 5, "num_inference_steps": 2, **request}
    prompt = options.pop("prompt")
    geometry = Geometry.from_checkpoint(served.checkpoint)
    try:
        expected = validate({"prompt": prompt, **options}, geometry, Limits(**LIMITS))
    except RequestError as exc:
        expected = exc
    try:
        result = Client(served.url, retries=0, timeout_s=120).generate(prompt, **options)
    except ClientError as exc:
        assert isinstance(expected, RequestError), f"refused a valid request: {exc}"
        assert exc.status == "INVALID_ARGUMENT" and str(exc).startswith(f"{expected.field}: "), exc
        return
    assert not isinstance(expected, RequestError), f"accepted an invalid request ({expected})"
    frames, fps = decode_mp4(result.video)
    assert frames.shape == (expected.num_frames, expected.height, expected.width, 3) and fps == expected.fps


def test_healthy_after_the_property_run(served):
    assert Client(served.url).generate("a cat", **SMALL).video
