import json
import subprocess
import sys

import pytest

from wan_triton.checkpoints import build_checkpoint

# The folders and files of Wan-AI/Wan2.1-T2V-1.3B-Diffusers that loading code reads.
EXPECTED = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_the_diffusers_layout_reproducibly(tmp_path):
    for name in ("a", "b"):
        subprocess.run(
            [sys.executable, "-m", "wan_triton.cli", "tiny-checkpoint", "--out", str(tmp_path / name), "--seed", "3"],
            check=True,
            capture_output=True,
        )
    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert set(first) == EXPECTED
    assert first == second, "the same seed must give byte-identical files"
    index = json.loads(first["model_index.json"])
    assert index["_class_name"] == "WanPipeline"
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]


def test_seed_changes_weights(tmp_path, tiny_checkpoint):
    other = build_checkpoint(tmp_path / "other", seed=1)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (other / weights).read_bytes() != (tiny_checkpoint / weights).read_bytes()


def test_diffusers_loads_it(tiny_checkpoint):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = WanPipeline.from_pretrained(tiny_checkpoint)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.scheduler.config.flow_shift == 3.0
    ids = pipe.tokenizer(["a red cat"], padding="max_length", max_length=512).input_ids[0]
    assert ids[:4] != [2, 2, 2, 2] and ids.count(1) == 1  # real pieces, then exactly one </s>


def test_bench_size_makes_the_denoiser_dominate(tmp_path):
    import torch
    from diffusers import WanTransformer3DModel

    path = build_checkpoint(tmp_path / "bench", size="bench")
    transformer = WanTransformer3DModel.from_pretrained(path, subfolder="transformer")
    params = sum(p.numel() for p in transformer.parameters())
    assert params > 20_000_000, params
    assert not any(path.rglob("*.bin")) and torch.is_tensor(next(transformer.parameters()))


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"t2v-2\.1"):
        build_checkpoint(tmp_path, variant="nope")
