"""ONNX Runtime sessions: the providers and options a session gets on a CPU and on a GPU instance.

No GPU here: the GPU cases check what `providers` hands ONNX Runtime (with the provider list a GPU
build reports); the sessions themselves are opened on the CPU, on the real exported graphs.
"""

from __future__ import annotations

import numpy as np
import pytest

from wan_triton import onnx_runtime as rt
from wan_triton.repository import ONNX_FILES, version_dir
from wan_triton.serving.settings import ServeSettings

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def gpu_build(monkeypatch):
    monkeypatch.setattr(rt.ort, "get_available_providers", lambda: GPU_BUILD)
    started_with(monkeypatch)


def started_with(monkeypatch, **settings) -> None:
    """What serve decided, as a stub reads it (serving/settings.py)."""
    monkeypatch.setattr(ServeSettings, "current", staticmethod(lambda: ServeSettings(**settings)))


def test_a_cpu_instance_runs_on_the_cpu_provider_alone():
    assert rt.providers("cpu") == ["CPUExecutionProvider"]


def test_a_gpu_instance_gets_its_device_heuristic_cudnn_and_a_bounded_arena(gpu_build, monkeypatch):
    chosen = rt.providers("cuda:3")
    assert chosen[-1] == "CPUExecutionProvider" and len(chosen) == 2  # TensorRT only when asked
    name, options = chosen[0]
    assert name == "CUDAExecutionProvider"
    assert options["device_id"] == "3"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"
    assert "gpu_mem_limit" not in options
    started_with(monkeypatch, ort_gpu_memory=8 << 30)
    assert rt.providers("cuda:0")[0][1]["gpu_mem_limit"] == str(8 << 30)


def test_a_gpu_instance_without_the_cuda_provider_fails_instead_of_running_on_the_cpu(monkeypatch):
    monkeypatch.setattr(rt.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(rt.ProviderUnavailable, match="onnxruntime-gpu"):
        rt.providers("cuda:0")


def test_tensorrt_when_asked_uses_an_engine_cache_fp32_and_the_manifest_profile(
    gpu_build, monkeypatch, tmp_path, exported_repository
):
    started_with(monkeypatch, tensorrt_cache=tmp_path)
    graph = version_dir(exported_repository, "text_encoder") / ONNX_FILES["text_encoder"]["model"]
    profile = rt.graph_profile(graph)
    assert profile is not None and set(profile) == {"input_ids", "attention_mask"}
    chosen = rt.providers("cuda:1", "text_encoder-model", profile)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == GPU_BUILD
    options = chosen[0][1]
    assert options["device_id"] == "1" and options["trt_fp16_enable"] == "False"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "text_encoder-model")
    assert (tmp_path / "text_encoder-model").is_dir()
    assert options["trt_profile_min_shapes"] == "attention_mask:1x1,input_ids:1x1"
    assert options["trt_profile_max_shapes"] == "attention_mask:4x512,input_ids:4x512"


def test_tensorrt_asked_of_a_build_without_it_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(rt.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    started_with(monkeypatch, tensorrt_cache=tmp_path)
    with pytest.raises(rt.ProviderUnavailable, match="--tensorrt"):
        rt.providers("cuda:0")


def test_every_exported_graph_has_a_profile_naming_its_inputs(exported_repository):
    for model, files in ONNX_FILES.items():
        folder = version_dir(exported_repository, model)
        for file in files.values():
            if (folder / file).is_file():
                session = rt.session(folder / file)
                profile = rt.graph_profile(folder / file)
                assert profile is not None and set(profile) == {i.name for i in session.get_inputs()}, file


def test_a_cpu_session_runs_the_exported_text_encoder(exported_repository):
    graph = version_dir(exported_repository, "text_encoder") / ONNX_FILES["text_encoder"]["model"]
    encode = rt.encoder_fn(rt.session(graph))
    ids = np.ones((1, 8), dtype=np.int64)
    out = encode(ids, np.ones_like(ids))
    assert out.shape[:2] == (1, 8) and np.isfinite(out).all()


def test_the_device_bound_vae_decoder_gives_todays_frames_exactly(exported_repository, tiny_checkpoint):
    """DeviceChunks (cache kept as OrtValues, uint8 made by the session) against the numpy round trip
    per chunk (run_chunks, then to_frames and to_uint8 on the host): the same bytes."""
    from wan_triton.pipeline.checkpoint import Checkpoint
    from wan_triton.pipeline.vae import chunked_decode, denormalize, to_frames
    from wan_triton.video import to_uint8

    folder, config = version_dir(exported_repository, "vae_decoder"), Checkpoint.open(tiny_checkpoint).config("vae")
    latents = np.random.default_rng(1).standard_normal((1, config["z_dim"], 3, 5, 7)).astype(np.float32)
    today = to_uint8(to_frames(chunked_decode(*rt.chunk_runners(folder, "vae_decoder"), latents, config)))[None]
    bound = rt.device_chunks(folder, "vae_decoder", to_uint8=True)("decoder", denormalize(latents, config))
    assert bound.dtype == np.uint8 and bound.shape == today.shape == (1, 9, 40, 56, 3)
    assert np.array_equal(bound, today)


def test_the_device_bound_vae_encoder_gives_todays_latents_exactly(exported_repository):
    from wan_triton.pipeline.vae import run_chunks

    folder = version_dir(exported_repository, "vae_encoder")
    video = np.random.default_rng(2).uniform(-1, 1, (1, 3, 9, 40, 56)).astype(np.float32)
    today = run_chunks("encoder", *rt.chunk_runners(folder, "vae_encoder"), video)
    bound = rt.device_chunks(folder, "vae_encoder")("encoder", video)
    assert bound.shape == today.shape and np.array_equal(bound, today)
