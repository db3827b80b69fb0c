"""Wan2.2 A14B, the two-expert checkpoints (`Wan-AI/Wan2.2-T2V-A14B-Diffusers`,
`Wan-AI/Wan2.2-I2V-A14B-Diffusers`): in-process and served, against diffusers' own pipelines.

`transformer` runs the steps above `boundary_ratio` x 1000 with `guidance_scale`, `transformer_2`
the rest with `guidance_scale_2`; the I2V layout conditions on the image's latents alone (no CLIP).
"""

import numpy as np
import pytest
from conftest import SMALL, serve, small_request, stop
from test_pipeline import assert_parity
from test_tasks import pixels, two_forward
from test_tasks_served import PROMPT, assert_close, png

from wan_triton.client import Client, ClientError
from wan_triton.conditioning import Media
from wan_triton.contract import Family
from wan_triton.pipeline import Pipeline
from wan_triton.pipeline.reference import diffusers_frames

IMAGE = pixels((32, 48, 3), 2)


def test_i2v_a14b_matches_diffusers_in_process(i2v_a14b):
    from diffusers import WanImageToVideoPipeline

    assert Family.from_checkpoint(i2v_a14b) == Family(
        concat_condition=True, image_tokens=False, expand_timesteps=False, two_experts=True
    )
    pipeline = two_forward(Pipeline.from_checkpoint(i2v_a14b))
    assert pipeline.denoiser.transformer_2 is not None and pipeline.encode_image is None
    reference = WanImageToVideoPipeline.from_pretrained(i2v_a14b)
    for guidance_2 in (3.0, None):  # unset: the low-noise expert uses guidance_scale, as diffusers does
        request = small_request("i2v", image=b"png", guidance_scale_2=guidance_2)
        ours = pipeline.frames(request, media=Media(image=IMAGE))
        assert_parity(ours, diffusers_frames(reference, request, Media(image=IMAGE)))


@pytest.fixture(scope="module")
def served_t2v_a14b(two_experts, exported_repository, expert_loras, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served-t2v-a14b")
    served = serve(two_experts, exported_repository, folder, None, ("--loras", str(expert_loras)))
    yield served
    stop(served)


def test_served_t2v_a14b_matches_diffusers(served_t2v_a14b):
    from diffusers import WanPipeline

    client = Client(served_t2v_a14b.url)
    reference = WanPipeline.from_pretrained(served_t2v_a14b.checkpoint)
    for guidance_2 in (3.0, None):
        extra = {} if guidance_2 is None else {"guidance_scale_2": guidance_2}
        result = client.generate(PROMPT, frames=True, seed=42, **extra, **SMALL)
        assert_close(result.frames, diffusers_frames(reference, small_request(**extra)))
    assert client.generate(PROMPT, frames=True, seed=42, guidance_scale_2=3.0, **SMALL).frames.tobytes() != (
        client.generate(PROMPT, frames=True, seed=42, guidance_scale_2=1.5, **SMALL).frames.tobytes()
    )


def test_served_adapters_on_both_experts_match_diffusers(served_t2v_a14b, expert_loras):
    """A high-noise/low-noise adapter pair, as step-distillation LoRAs for A14B ship, each file on
    its expert: the frames of diffusers' `load_lora_weights(..., load_into_transformer_2=True)`."""
    from diffusers import WanPipeline

    from wan_triton.lora import AllowList

    client = Client(served_t2v_a14b.url)
    extra = {"guidance_scale_2": 3.0, "lora_names": ["pair"], "lora_scales": [0.8]}
    result = client.generate(PROMPT, frames=True, seed=42, **extra, **SMALL)
    files = AllowList.from_file(expert_loras).resolve("pair")
    pipe = WanPipeline.from_pretrained(served_t2v_a14b.checkpoint)
    pipe.load_lora_weights(str(files["transformer"]), adapter_name="pair")
    pipe.load_lora_weights(str(files["transformer_2"]), adapter_name="pair", load_into_transformer_2=True)
    pipe.set_adapters(["pair"], [0.8])
    assert_close(result.frames, diffusers_frames(pipe, small_request(guidance_scale_2=3.0)))
    low = client.generate(PROMPT, frames=True, seed=42, **{**extra, "lora_names": ["low"]}, **SMALL).frames
    assert np.abs(low.astype(int) - result.frames.astype(int)).max() > 1  # the high-noise file matters
    base = client.generate(PROMPT, frames=True, seed=42, guidance_scale_2=3.0, **SMALL).frames
    reference = WanPipeline.from_pretrained(served_t2v_a14b.checkpoint)
    assert_close(base, diffusers_frames(reference, small_request(guidance_scale_2=3.0)))  # nothing left on


def test_served_i2v_a14b_matches_diffusers_and_needs_the_image(served_i2v_a14b):
    from diffusers import WanImageToVideoPipeline

    client = Client(served_i2v_a14b.url)
    result = client.generate(PROMPT, frames=True, image=png(IMAGE), seed=42, guidance_scale_2=3.0, **SMALL)
    reference = WanImageToVideoPipeline.from_pretrained(served_i2v_a14b.checkpoint)
    request = small_request("i2v", image=b"png", guidance_scale_2=3.0)
    assert_close(result.frames, diffusers_frames(reference, request, Media(image=IMAGE)))
    with pytest.raises(ClientError) as missing:
        Client(served_i2v_a14b.url, model="wan_i2v").generate(PROMPT, **SMALL)
    assert missing.value.status == "INVALID_ARGUMENT" and "image" in str(missing.value)
    other = client.generate(PROMPT, frames=True, image=png(pixels((32, 48, 3), 3)), seed=42, **SMALL).frames
    assert np.abs(other.astype(int) - result.frames.astype(int)).max() > 1  # the image matters
