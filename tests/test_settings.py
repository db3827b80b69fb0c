"""What `serve` decides for its stubs (serving/settings.py): one object, every refused combination named in
its check, written into the server's run folder and read back from there by a stub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wan_triton.acceleration import Acceleration, AccelerationError
from wan_triton.contract import CheckpointError, Family
from wan_triton.parallel import Parallel
from wan_triton.serving.settings import RUN_DIR_ENV, SETTINGS_FILE, ServeSettings, SettingsError

T2V = Family(concat_condition=False, image_tokens=False, expand_timesteps=False)
S2V = Family(concat_condition=False, image_tokens=False, expand_timesteps=False, s2v=True)


def test_a_stub_reads_back_what_serve_decided(tmp_path):
    settings = ServeSettings(
        checkpoint=tmp_path / "checkpoint",
        stage_key="a-secret",
        parallel=Parallel(ulysses=2, cfg=2),
        acceleration=Acceleration(quantize="int8"),
        gguf={"transformer": tmp_path / "high.gguf", "transformer_2": tmp_path / "low.gguf"},
        loras=tmp_path / "loras.json",
        lora_cache=3,
        fuse_loras="a:0.7",
        tensorrt_cache=tmp_path / "trt",
        ort_gpu_memory=8 << 30,
    )
    path = settings.write(tmp_path)
    assert path == tmp_path / SETTINGS_FILE and path.stat().st_mode & 0o077 == 0  # the stage key: its owner only
    assert ServeSettings.read(tmp_path) == settings
    assert "a-secret" not in repr(settings)
    ServeSettings().write(tmp_path)
    assert ServeSettings.read(tmp_path) == ServeSettings()


def test_a_stub_process_finds_its_settings_through_the_run_folder_alone(tmp_path):
    """The one variable tritonserver passes on names the folder; the rest is read from the file."""
    ServeSettings(checkpoint=tmp_path / "ckpt", stage_key="k", parallel=Parallel(ulysses=2)).write(tmp_path)
    code = "from wan_triton.serving.settings import ServeSettings as S; s = S.current()"
    code += "; print(s.checkpoint, s.stage_key, s.parallel)"
    env = {"PATH": os.environ["PATH"], RUN_DIR_ENV: str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(tmp_path / "ckpt"), "k", "ulysses=2"]


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
