"""The committed trained checkpoint (`train-tiny`, wan_triton/checkpoints/trained/): what its weights do in
process, its step caches against its exact output, and `serve`'s embedded default over gRPC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import serve, stop

from wan_triton.checkpoints import clips
from wan_triton.checkpoints.train import MANIFEST, TRAINED, prompt_accuracy, vae_psnr
from wan_triton.client import Client, ClientError
from wan_triton.contract import MAG_RATIOS

RED_RIGHT = clips.Caption("circle", "red", "right", "blue")
CAPTIONS = (
    RED_RIGHT,
    clips.Caption("square", "yellow", "left", "black"),
    clips.Caption("circle", "green", "up", "white"),
    clips.Caption("square", "blue", "down", "white"),
)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((TRAINED / MANIFEST).read_text())


def test_the_committed_checkpoint_reconstructs_clips_it_never_saw(manifest):
    psnr = vae_psnr(TRAINED, count=4)
    assert psnr >= VAE_PSNR_DB
    assert abs(psnr - manifest["vae_psnr_db"]) < 2.0  # the manifest's figure (16 clips) is what these weights give


def test_the_committed_checkpoint_shows_the_prompted_colour_and_direction(manifest):
    accuracy = prompt_accuracy(TRAINED, seeds=2, captions=list(CAPTIONS))
    assert accuracy["share"] >= SHOWN_SHARE, accuracy
    assert manifest["prompt_accuracy"]["share"] >= SHOWN_SHARE
