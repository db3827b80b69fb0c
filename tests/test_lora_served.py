"""LoRA adapters per request against the live server (`served` has the `loras` allow-list, two
adapters resident at most): R19/R20 refusals, parity with diffusers, no leak between requests."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import LORA_SCALES, SMALL, small_request
from test_serving import executions
from test_tasks_served import assert_close

from wan_triton.client import Client, ClientError
from wan_triton.lora import AllowList
from wan_triton.pipeline.reference import diffusers_frames
from wan_triton.repository import DENOISER

PROMPT = "a red cat walking in the snow"


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["../a"], "is not an allowed adapter"),
        (["/etc/passwd"], "is not an allowed adapter"),
        (["nobody"], "is not an allowed adapter"),
        (["parent"], "outside the adapter root"),
        (["absolute"], "outside the adapter root"),
        (["symlink"], "outside the adapter root"),
        (["pickle"], "only .safetensors load"),
        (["torch"], "only .safetensors load"),
        (["low_noise"], "loads into transformer_2, which this checkpoint does not have"),
        (["a", "a"], "twice"),
        (["a", "b", "a", "b", "a"], "1 to 4 allowed"),
    ],
)
def test_adapters_outside_the_allow_list_are_refused_before_any_work(served, names, reason):
    before = executions(served.url, DENOISER)
    with pytest.raises(ClientError) as refused:
        Client(served.url).generate(PROMPT, lora_names=names, **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and str(refused.value).startswith("lora_names: ")
    assert reason in str(refused.value), refused.value
    assert executions(served.url, DENOISER) == before


def test_scales_must_match_the_names(served):
    with pytest.raises(ClientError) as refused:
        Client(served.url).generate(PROMPT, lora_names=["a", "b"], lora_scales=[0.5], **SMALL)
    assert refused.value.status == "INVALID_ARGUMENT" and "lora_scales" in str(refused.value)


def test_served_adapters_match_diffusers_and_do_not_leak(served, loras):
    from diffusers import WanPipeline

    client = Client(served.url)
    plain = client.generate(PROMPT, frames=True, seed=42, **SMALL)
    names, scales = list(LORA_SCALES), list(LORA_SCALES.values())
    adapted = client.generate(PROMPT, frames=True, seed=42, lora_names=names, lora_scales=scales, **SMALL)
    assert np.abs(adapted.frames.astype(int) - plain.frames.astype(int)).max() > 2
    # The next request without adapters is the same as before them (bytes, R23).
    assert client.generate(PROMPT, frames=True, seed=42, **SMALL).video == plain.video

    pipe = WanPipeline.from_pretrained(served.checkpoint)
    allow = AllowList.from_file(loras)
    for name in names:
        pipe.load_lora_weights(str(allow.resolve(name)["transformer"]), adapter_name=name)
    pipe.set_adapters(names, scales)
    assert_close(adapted.frames, diffusers_frames(pipe, small_request()))


def test_cli_takes_adapters_with_scales(served, tmp_path):
    out = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "wan_triton.cli", "generate", PROMPT, "-o", str(out), "--url", served.url]
    command += ["--height", "32", "--width", "48", "--num-frames", "5", "--num-inference-steps", "2"]
    done = subprocess.run([*command, "--lora", "a:0.5", "--lora", "b"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    refused = subprocess.run([*command, "--lora", "nobody"], capture_output=True, text=True)
    assert refused.returncode == 2 and "INVALID_ARGUMENT: lora_names" in refused.stderr
