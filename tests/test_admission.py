"""One admission for every front door (wan_triton/admission.py): what the entries, `generate --checkpoint`
and the OpenAI API refuse before any stage, with the same message; and what `serve` writes for the API."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import openai
import pytest
from conftest import SMALL
from PIL import Image
from test_metrics import scrape

from wan_triton import cli
from wan_triton.acceleration import Acceleration
from wan_triton.admission import Served, admit
from wan_triton.client import Client, ClientError
from wan_triton.contract import Limits, RequestError
from wan_triton.lora import AllowList
from wan_triton.parallel import Parallel
from wan_triton.serving.models import served_of


def _png(height: int = 32, width: int = 48) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _refusal(raw: dict, task: str, served: Served) -> RequestError:
    with pytest.raises(RequestError) as refused:
        admit({"prompt": "a cat", **SMALL, **raw}, task, served)
    return refused.value


def test_each_rule_refuses_naming_its_field(tiny_checkpoint, flf2v_checkpoint, loras):
    """The contract, the family, parallel, acceleration, calibration, adapters and the media: each refusal
    names its field; the same request without the fault is admitted."""
    plain = Served.of_checkpoint(tiny_checkpoint)
    cases = [
        ({"num_inference_steps": 0}, "t2v", plain, "num_inference_steps", "allowed range"),
        ({"cache_method": "mag"}, "t2v", plain, "cache_method", "calibrated ratios"),
        ({"lora_names": ["a"], "lora_scales": [1.0]}, "t2v", plain, "lora_names", "no adapters"),
        ({"image": b"not an image", "last_image": _png()}, "i2v", Served.of_checkpoint(flf2v_checkpoint), "image", ""),
        ({"image": _png()}, "i2v", Served.of_checkpoint(flf2v_checkpoint), "last_image", "is required"),
        (
            {"height": 16, "width": 16, "num_frames": 1},
            "t2v",
            Served.of_checkpoint(tiny_checkpoint, parallel=Parallel(ulysses=2)),
            "height",
            "latent tokens",
        ),
        (
            {"cache_method": "first_block", "cache_threshold": 0.1},
            "t2v",
            Served.of_checkpoint(tiny_checkpoint, acceleration=Acceleration(compile=True)),
            "cache_method",
            "compiled transformer",
        ),
    ]
    allowed = Served.of_checkpoint(tiny_checkpoint, allow_list=AllowList.from_file(loras))
    for name, message in (("nope", "not an allowed adapter"), ("low_noise", "transformer_2"), ("gone", "missing")):
        cases.append(({"lora_names": [name], "lora_scales": [1.0]}, "t2v", allowed, "lora_names", message))
    for raw, task, served, field, message in cases:
        refused = _refusal(raw, task, served)
        assert refused.field == field and message in str(refused), (raw, str(refused))
    request, media = admit({"prompt": "a cat", **SMALL, "lora_names": ["a"], "lora_scales": [0.5]}, "t2v", allowed)
    assert request.lora_names == ("a",) and media.image is None
    request, media = admit(
        {"prompt": "a cat", **SMALL, "image": _png(), "last_image": _png()},
        "i2v",
        Served.of_checkpoint(flf2v_checkpoint),
    )
    assert media.image.shape == media.last_image.shape == (32, 48, 3)


def test_what_serve_writes_admits_as_the_entry_does(tiny_checkpoint, loras):
    """The entries' configs carry Served without file names; read back (as the API reads it) it refuses
    what the entry refuses, except for a file that only the server can look at."""
    limits = Limits(max_frames=33)
    served = Served.of_checkpoint(
        tiny_checkpoint, limits, Parallel(cfg=2), Acceleration(quantize="int8"), AllowList.from_file(loras)
    )
    text = served.to_json()
    assert str(loras.parent) not in text and "safetensors" not in text
    seen = Served.from_json(text, served.geometry, limits)
    assert seen == dataclasses.replace(served, allow_list=None)
    for raw in ({"num_frames": 37}, {"lora_names": ["nope"], "lora_scales": [1.0]}, {"cache_method": "mag"}):
        assert str(_refusal(raw, "t2v", seen)) == str(_refusal(raw, "t2v", served))
    gone = {"lora_names": ["gone"], "lora_scales": [1.0]}
    assert "missing" in str(_refusal(gone, "t2v", served))
    admit({"prompt": "a cat", **SMALL, **gone}, "t2v", seen)  # the API leaves the file to the entry


def _steps(served) -> float:
    return sum(value for (name, _), value in scrape(served.metrics).items() if name == "wan_denoising_steps_total")


# Refusals the `served` fixture's configuration can show (its limits, its allow-list, no mag calibration), each
# with the fields as the contract takes them and as `wan-triton generate` takes them.
DOOR_CASES = [
    ({"num_inference_steps": 0}, ["--num-inference-steps", "0"]),  # the contract
    ({"height": 40}, ["--height", "40"]),  # the contract: a multiple of 16
    ({"cache_method": "mag"}, ["--cache-method", "mag"]),  # the checkpoint's calibration
    ({"lora_names": ["nope"], "lora_scales": [1.0]}, ["--lora", "nope:1.0"]),  # the adapters
    ({"lora_names": ["low_noise"], "lora_scales": [1.0]}, ["--lora", "low_noise:1.0"]),  # an expert it lacks
]


def test_the_three_front_doors_refuse_alike(served, tiny_checkpoint, capsys):
    """Each refusal, through gRPC, the OpenAI API and `generate --checkpoint`: the admission's message for
    what that door serves (the same server's for gRPC and the API; in-process, no adapters), and no step run."""
    config = Client(served.url).grpc.get_model_config("wan_t2v", as_json=True)["config"]
    remote, local = served_of(config), Served.of_checkpoint(tiny_checkpoint)
    assert remote.adapters is not None  # serve --loras: what the API checks adapters against
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{served.api_port}/v1", api_key="k", max_retries=0, timeout=60)
    before = _steps(served)
    for fields, flags in DOOR_CASES:
        expected = _refusal(fields, "t2v", remote)
        with pytest.raises(ClientError) as grpc:
            Client(served.url, model="wan_t2v").generate("a cat", **{**SMALL, **fields})
        assert grpc.value.status == "INVALID_ARGUMENT" and str(expected) in str(grpc.value), str(grpc.value)
        with pytest.raises(openai.BadRequestError) as api:
            sdk.videos.create(prompt="a cat", extra_body={**SMALL, **fields})
        assert api.value.body["message"] == str(expected), api.value.body
        small = [arg for name, value in SMALL.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
        code = cli.main(["generate", "a cat", "--checkpoint", str(tiny_checkpoint), "-o", "/dev/null", *small, *flags])
        mine = _refusal(fields, "t2v", local)
        assert code == 2 and mine.field == expected.field and str(mine) in capsys.readouterr().err
    assert _steps(served) == before  # none of them did any work
