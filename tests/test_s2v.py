"""Wan2.2-S2V (wan_triton/s2v/): our transformer against DiffSynth-Studio's, the parity reference, on the
same tiny random weights in the release's names."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_triton.s2v.transformer import S2VConfig, S2VTransformer

# Small, with what the release's arithmetic needs: a head dimension Wan's rotary split divides evenly (24),
# latents whose sides divide by 8 (the coarsest FramePack scale), 5 blocks (audio after blocks 0 and 4).
TINY = S2VConfig(
    dim=48, ffn_dim=64, freq_dim=32, num_heads=2, num_layers=5, text_dim=32, audio_dim=16, num_audio_token=4
)


def diffsynth_s2v_model():
    """DiffSynth-Studio's `WanS2VModel`, imported without the package's __init__ (which imports
    torchvision, pandas and modelscope, none of which the model needs: see docs/ARCHITECTURE.md)."""
    if "diffsynth.models" not in sys.modules:  # the shim, once (find_spec refuses a shimmed module)
        spec = importlib.util.find_spec("diffsynth")
        if spec is None:
            pytest.fail("diffsynth is not installed: `make setup` installs it (--no-deps), the S2V parity reference")
        root = Path(spec.origin).parent
        for name in ("diffsynth", "diffsynth.core", "diffsynth.models"):
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel

    return WanS2VModel


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = {k: getattr(TINY, k) for k in ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "in_dim")}
    config |= {k: getattr(TINY, k) for k in ("out_dim", "text_dim", "cond_dim", "audio_dim", "num_audio_token")}
    theirs = diffsynth_s2v_model()(eps=TINY.eps, patch_size=TINY.patch_size, **config).eval()
    with torch.no_grad():  # the release zero-initialises some layers; random everywhere tests every path
        for parameter in theirs.parameters():
            parameter.normal_(0.0, 0.2)
    ours = S2VTransformer.from_release_state_dict(TINY, theirs.state_dict())
    return theirs, ours


def _theirs(model, noisy, timestep, text, audio, reference, motion, pose):
    """DiffSynth's forward. It always drops the motion frames (its pipeline calls `model_fn_wans2v`, which
    passes `drop_motion_frames`, instead): with `motion` given, they are kept, as that function keeps them."""
    latents = torch.cat([reference, noisy], dim=2)
    motion_given = motion is not None
    motion = torch.zeros(1, 16, 19, *noisy.shape[3:]) if motion is None else motion
    inject = model.inject_motion
    model.inject_motion = lambda *args, **kwargs: inject(*args, **{**kwargs, "drop_motion_frames": not motion_given})
    try:
        return model(latents, timestep, text, audio, motion, pose)[:, :, 1:]
    finally:
        del model.inject_motion


@pytest.mark.parametrize("clip", ["first", "later, with motion frames and pose"])
def test_the_transformer_matches_diffsynths_on_the_release_weights(models, clip):
    """The same weights (the release's names, loaded through diffusers' mapping of Wan's), the same inputs:
    the flow prediction agrees to float32 rounding, for the first clip (no motion frames) and for a later
    one (the previous clip's 19 latent frames, a pose video)."""
    theirs, ours = models
    generator = torch.Generator().manual_seed(1)
    frames, height, width = 3, 8, 16

    def noise(*shape):
        return torch.randn(*shape, generator=generator)

    inputs = {
        "noisy": noise(1, 16, frames, height, width),
        "timestep": torch.tensor([703.0]),
        "text": noise(1, 7, TINY.text_dim),
        "audio": noise(1, TINY.audio_layers, TINY.audio_dim, 4 * frames),  # 4 video frames per latent frame
        "reference": noise(1, 16, 1, height, width),
        "motion": noise(1, 16, 19, height, width) if clip != "first" else None,
        "pose": noise(1, 16, frames, height, width) if clip != "first" else None,
    }
    with torch.no_grad():
        expected = _theirs(theirs, **inputs)
        got = ours(**inputs)
        silent = ours(**{**inputs, "audio": torch.zeros_like(inputs["audio"])})  # the unconditional branch
    assert got.shape == expected.shape == inputs["noisy"].shape
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error < 1e-5, error  # measured: 2.5e-7
    assert (silent - got).abs().max() > 1e-2  # the audio drives it
    if inputs["motion"] is not None:
        with torch.no_grad():
            still = ours(**{**inputs, "motion": torch.zeros_like(inputs["motion"])})
        assert (still - got).abs().max() > 1e-2  # and the motion frames do


def test_the_release_config_loads_and_unbuilt_variants_are_refused():
    release = {
        "dim": 5120,
        "num_layers": 40,
        "audio_inject_layers": [0, 4, 8],
        "enable_adain": True,
        "model_type": "s2v",
    }
    config = S2VConfig.from_release(release)
    assert config.audio_inject_layers == (0, 4, 8) and config.head_dim == 128
    with pytest.raises(ValueError, match="enable_motioner=True is not supported"):
        S2VConfig.from_release({**release, "enable_motioner": True})


def test_audio_features_match_diffsynths_per_clip():
    """A small random wav2vec2 (the release's layer layout: conv stride 320, stable layer norm) on 5.3 s of
    speech-like audio: every hidden state stacked, resampled to 30 a second, one per video frame at 16 fps,
    in clips of 80 frames; the same as DiffSynth's `WanS2VAudioEncoder.get_audio_feats_per_inference`."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from wan_triton.s2v import audio

    diffsynth_s2v_model()  # the package shim
    from diffsynth.models.wav2vec import WanS2VAudioEncoder

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=[8] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        vocab_size=8,
    )
    model = Wav2Vec2ForCTC(config).eval()
    theirs = WanS2VAudioEncoder.__new__(WanS2VAudioEncoder)  # its own __init__ builds the 300M-parameter model
    torch.nn.Module.__init__(theirs)
    theirs.model, theirs.video_rate = model, 30
    processor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True)
    seconds = 5.3
    t = np.arange(int(seconds * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    with torch.no_grad():
        expected = theirs.get_audio_feats_per_inference(samples, 16_000, processor, fps=16, batch_frames=80)
    got = audio.clips(model.wav2vec2, samples, fps=16)
    assert len(got) == len(expected) == 2  # 5.3 s at 16 fps: 85 frames, a clip and a partial one
    for ours, reference in zip(got, expected, strict=True):
        assert ours.shape == reference.shape == (1, 4, 16, audio.CLIP_FRAMES)
        assert torch.allclose(ours, reference, atol=1e-6), float((ours - reference).abs().max())
    assert got[1][..., 5:].abs().max() == 0 and got[1][..., :5].abs().max() > 0  # zeros past the audio


def test_the_release_layout_writes_the_releases_names_and_reads_back(models, tmp_path):
    """Written twice, the same bytes; under exactly the names DiffSynth's model (the release's, by its key
    hash at 14B) has; read back, the same model."""
    from safetensors.torch import load_file

    from wan_triton.s2v import release

    theirs, ours = models
    first, second = release.write_transformer(ours, tmp_path / "a"), release.write_transformer(ours, tmp_path / "b")
    for name in (release.CONFIG, f"{release.WEIGHTS}.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert release.is_release(first) and release.transformer_config(first) == TINY
    assert set(load_file(first / f"{release.WEIGHTS}.safetensors")) == set(theirs.state_dict())
    loaded = release.load_transformer(first)
    mine = ours.state_dict()
    assert all(torch.equal(tensor, mine[name]) for name, tensor in loaded.state_dict().items())
