"""Shared fixtures: one tiny checkpoint and one export per test session (they take minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wan_triton.checkpoints import build_checkpoint
from wan_triton.contract import validate


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-t2v", seed=0)


@pytest.fixture(scope="session")
def exported_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    from wan_triton.export import export

    repository = tmp_path_factory.mktemp("repo") / "model_repository"
    export(tiny_checkpoint, repository)
    return repository


def small_request(**overrides):
    """A request small enough for the tiny checkpoint to run in well under a second."""
    values = {
        "prompt": "a red cat walking in the snow",
        "negative_prompt": "blurry",
        "height": 32,
        "width": 48,
        "num_frames": 9,
        "num_inference_steps": 4,
        "guidance_scale": 5.0,
        "seed": 42,
    }
    return validate({**values, **overrides})
