"""What `serve` decides for its stubs (serving/settings.py): one object, every refused combination named in
its check, and the same object read back by a stub from the environment tritonserver gives it."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan_triton.acceleration import Acceleration, AccelerationError
from wan_triton.contract import CheckpointError, Family
from wan_triton.parallel import Parallel
from wan_triton.serving.settings import ENVIRONMENT, ServeSettings, SettingsError

T2V = Family(concat_condition=False, image_tokens=False, expand_timesteps=False)
S2V = Family(concat_condition=False, image_tokens=False, expand_timesteps=False, s2v=True)


def test_a_stub_reads_back_what_serve_decided(tmp_path):
    settings = ServeSettings(
        parallel=Parallel(ulysses=2, cfg=2),
        acceleration=Acceleration(quantize="int8"),
        gguf={"transformer": tmp_path / "high.gguf", "transformer_2": tmp_path / "low.gguf"},
        loras=tmp_path / "loras.json",
        lora_cache=3,
        fuse_loras="a:0.7",
        tensorrt_cache=tmp_path / "trt",
        ort_gpu_memory=8 << 30,
    )
    env = settings.to_environment()
    assert set(env) == set(ENVIRONMENT)  # every setting travels, under a name defined once
    assert ServeSettings.from_environment(env) == settings
    assert ServeSettings().to_environment() == {}  # the defaults add nothing to tritonserver's environment
    assert ServeSettings.from_environment({}) == ServeSettings()


@pytest.mark.parametrize(
    ("settings", "family", "error", "message"),
    [
        (
            ServeSettings(acceleration=Acceleration(compile=True), parallel=Parallel(ulysses=2)),
            T2V,
            AccelerationError,
            "--compile does not combine with --parallel",
        ),
        (
            ServeSettings(acceleration=Acceleration(quantize="int8"), loras=Path("l.json")),
            T2V,
            AccelerationError,
            "--quantize does not combine with --loras",
        ),
        (ServeSettings(loras=Path("l.json")), S2V, CheckpointError, "Wan2.2-S2V is served without --loras"),
        (
            ServeSettings(gguf={"transformer": Path("a.gguf")}, loras=Path("l.json")),
            T2V,
            SettingsError,
            "--gguf does not combine",
        ),
        (ServeSettings(gguf={"transformer_2": Path("a.gguf")}), T2V, SettingsError, "transformer_2"),
        (ServeSettings(fuse_loras="a:1"), T2V, SettingsError, "--fuse-lora needs --loras"),
        (ServeSettings(loras=Path("l.json"), lora_cache=0), T2V, SettingsError, "--lora-cache is 0"),
    ],
)
def test_every_refused_combination_is_named(settings, family, error, message):
    with pytest.raises(error, match=message):
        settings.check(family)
    ServeSettings().check(family)  # nothing asked: nothing refused
