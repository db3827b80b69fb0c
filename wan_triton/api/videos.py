"""The OpenAI Videos API's fields, mapped onto the request contract once.

`POST /v1/videos` takes `prompt`, `model`, `size` ("WIDTHxHEIGHT"), `seconds` and `input_reference`
(an image file: image-to-video), and every other scalar control of the contract by the contract's
own name (`seed`, `num_frames`, `fps`, `num_inference_steps`, `guidance_scale`, `negative_prompt`,
`lora_names`, ...). Values come as JSON or as multipart form fields (the `openai` SDK always sends
multipart, so its `extra_body` fields arrive as text): text is parsed by the contract's dtype here,
and the contract itself (`contract.validate`) judges every value, so the API refuses exactly what
the gRPC entries refuse, with the same words.

`size` and `seconds` map as:
- `size` "WxH" -> `width` W, `height` H (OpenAI's order: width first);
- `seconds` S -> `num_frames`: the frames covering S seconds at `fps`, rounded up to the VAE's
  4k+1 grid (`media.frames_for_duration`; Wan's 81 frames at 16 fps are its 5 s). A job reports
  the `seconds` it was asked for, else its video's duration, num_frames / fps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from wan_triton import media
from wan_triton.contract import (
    DEFAULTS,
    INPUTS,
    LIST_INPUTS,
    MEDIA_INPUTS,
    GenerationRequest,
    Geometry,
    Limits,
    RequestError,
)

# The API's own fields; `input_reference` is the contract's `image`.
OWN_FIELDS = ("prompt", "model", "size", "seconds", "input_reference")
# Contract inputs the API does not take: media arrive only as `input_reference` (an image), and the
# API stores MP4s, not raw frames.
NOT_TAKEN = frozenset(MEDIA_INPUTS) | {"return_frames"}
CONTROLS = {spec.name: spec for spec in INPUTS if spec.name not in NOT_TAKEN and spec.name not in OWN_FIELDS}
FIELDS = (*OWN_FIELDS, *CONTROLS)


def parse_size(text: str) -> tuple[int, int]:
    """ "WIDTHxHEIGHT" -> (height, width); the contract then checks the multiples and the area."""
    width, sep, height = str(text).strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise RequestError("size", f"is {text!r}; must be WIDTHxHEIGHT in pixels, e.g. 832x480")
    return int(height), int(width)


def parse_seconds(text: object) -> float:
    try:
        seconds = float(str(text).strip())
    except ValueError:
        raise RequestError("seconds", f"is {text!r}; must be a number of seconds, e.g. 4") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError("seconds", f"is {text!r}; must be a positive number of seconds")
    return seconds


def _typed(name: str, value: object) -> object:
    """A form field's text as the contract's dtype (JSON values pass as they are: the contract checks them)."""
    if not isinstance(value, str):
        return value
    dtype, text = CONTROLS[name].dtype, value.strip()
    try:
        if dtype in ("INT32", "INT64"):
            return int(text)
        if dtype == "FP32":
            return float(text)
    except ValueError:
        kind = "an integer" if dtype.startswith("INT") else "a number"
        raise RequestError(name, f"is {value!r}; must be {kind}") from None
    if dtype == "BOOL":
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise RequestError(name, f"is {value!r}; must be true or false")
    return value


@dataclass(frozen=True)
class Submission:
    """A create request in contract terms: `raw` goes to `contract.validate` and then to Triton."""

    raw: dict[str, object]
    model: str | None  # the entry asked for by name; None: the one the inputs suit
    seconds: str | None  # as asked
    given: frozenset[str] = frozenset()  # the API fields the request set


def submission(fields: Mapping[str, object], image: bytes | None) -> Submission:
    """The contract's raw inputs of one create request. `fields`: JSON or form values, lists for the
    list inputs (`lora_names`); `image`: the `input_reference` file's bytes. Unknown fields are refused."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"is not a field of this API; known fields: {', '.join(FIELDS)}")
    raw: dict[str, object] = {}
    for name, value in fields.items():
        if name in CONTROLS and value is not None:
            listed = name in LIST_INPUTS
            values = value if isinstance(value, list) else [value]
            if not listed and len(values) != 1:
                raise RequestError(name, "is given more than once")
            typed = [_typed(name, item) for item in values]
            raw[name] = typed if listed else typed[0]
    if fields.get("prompt") is not None:
        raw["prompt"] = fields["prompt"]
    if fields.get("size") is not None:
        raw["height"], raw["width"] = parse_size(str(fields["size"]))
        for side in ("height", "width"):
            if side in fields:
                raise RequestError(side, "give size or height and width, not both")
    seconds = None
    if fields.get("seconds") is not None:
        if fields.get("num_frames") is not None:
            raise RequestError("seconds", "give seconds or num_frames, not both")
        seconds = fields["seconds"]
        parse_seconds(seconds)
    if image is not None:
        raw["image"] = image
    model = fields.get("model")
    name = str(model) if model is not None else None
    return Submission(raw, name, None if seconds is None else str(seconds), frozenset(fields))


def frames_of(submission: Submission, geometry: Geometry, limits: Limits) -> dict[str, object]:
    """`raw` with `seconds` turned into `num_frames` at the request's fps (defined once, here)."""
    raw = dict(submission.raw)
    if submission.seconds is not None:
        fps = raw.get("fps", DEFAULTS.fps)
        fps = fps if isinstance(fps, int) and fps > 0 else DEFAULTS.fps  # a bad fps: the contract names it
        seconds = parse_seconds(submission.seconds)
        raw["num_frames"] = media.frames_for_duration(
            seconds, fps, geometry.temporal_factor, limits.max_frames, "seconds"
        )
    return raw


def size_of(request: GenerationRequest) -> str:
    return f"{request.width}x{request.height}"


def duration_of(request: GenerationRequest) -> str:
    return f"{request.num_frames / request.fps:.4g}"
