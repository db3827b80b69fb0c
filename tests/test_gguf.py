"""GGUF transformers (wan_triton/checkpoints/gguf.py): written in Wan's original names as the community
ships them, read back through diffusers' GGUF loader as `serve --gguf` loads them. The trained
checkpoint's GGUF, in process and served: tests/test_trained.py."""

from __future__ import annotations

import pytest
import torch

from wan_triton.checkpoints import gguf
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.denoise import Denoiser


def _dequantized(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    return {
        name: dequantize_gguf_tensor(p).float() if isinstance(p, GGUFParameter) else p.float()
        for name, p in model.state_dict().items()
    }


@pytest.mark.parametrize(
    "fixture", ["tiny_checkpoint", "i2v_checkpoint", "vace_checkpoint", "two_experts", "ti2v_checkpoint"]
)
def test_every_layout_goes_to_gguf_and_back_to_its_own_weights(fixture, request, tmp_path):
    """Each checkpoint layout's transformers (T2V, CLIP image tokens, VACE blocks, Wan2.2's two experts,
    TI2V) written in Wan's original names, loaded as `serve --gguf` loads them: every parameter lands
    under its own name, the quantized ones within Q8_0's rounding, the rest bit for bit."""
    checkpoint = Checkpoint.open(request.getfixturevalue(fixture))
    exact = Denoiser.from_checkpoint(checkpoint)
    files = {}
    for expert in exact.experts():
        files[expert] = tmp_path / f"{expert}.gguf"
        counts = gguf.write(checkpoint.root / expert, files[expert], "Q8_0")
        assert counts["Q8_0"] > 0 and counts["F32"] > 0, counts
    loaded = Denoiser.from_checkpoint(checkpoint, gguf=files)
    quantized = 0
    for expert, model in loaded.experts().items():
        original = exact.experts()[expert].state_dict()
        weights = _dequantized(model)
        assert set(weights) == set(original), expert
        for name, weight in weights.items():
            if torch.equal(weight, original[name]):
                continue
            quantized += 1
            error = (weight - original[name]).norm() / original[name].norm()
            assert error < 0.01, (expert, name, float(error))
    assert quantized > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--gguf", "missing.gguf"), "--gguf missing.gguf: no such file"),
        (("--gguf", "not.gguf"), "--gguf not.gguf: not a GGUF file"),
        (("--gguf", "a.gguf", "--gguf", "a.gguf"), "--gguf given 2 times; this checkpoint has 1 transformer(s)"),
        (("--gguf", "a.gguf", "--quantize", "int8"), "--gguf does not combine with --compile, --quantize"),
    ],
)
def test_serve_refuses_a_gguf_it_cannot_load_before_starting(flags, message, tmp_path, monkeypatch, capsys):
    from wan_triton.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 a zip, not a GGUF file")
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert main(["serve", "--repository", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything was built
