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

    def run(**given):
        names = ("hidden_states", "timestep", "encoder_hidden_states", "audio_features", "reference_latents")
        names += ("motion_latents", "pose_hidden_states")
        return ours(**dict(zip(names, given.values(), strict=True)))

    with torch.no_grad():
        expected = _theirs(theirs, **inputs)
        got = run(**inputs)
        silent = run(**{**inputs, "audio": torch.zeros_like(inputs["audio"])})  # the unconditional branch
        # the guidance branches as one batch of two: each row as it is alone
        rows = {name: None if value is None else torch.cat([value, value]) for name, value in inputs.items()}
        rows["timestep"] = inputs["timestep"].expand(2)
        rows["audio"] = torch.cat([inputs["audio"], torch.zeros_like(inputs["audio"])])
        batched = run(**rows)
    assert float((batched - torch.cat([got, silent])).abs().max()) < 1e-5
    assert got.shape == expected.shape == inputs["noisy"].shape
    error = float((got - expected).abs().max() / expected.abs().max())
    assert error < 1e-5, error  # measured: 2.5e-7
    assert (silent - got).abs().max() > 1e-2  # the audio drives it
    if inputs["motion"] is not None:
        with torch.no_grad():
            still = run(**{**inputs, "motion": torch.zeros_like(inputs["motion"])})
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

    from wan_triton.checkpoints.tiny import S2V_TINY
    from wan_triton.s2v import audio

    diffsynth_s2v_model()  # the package shim
    from diffsynth.models.wav2vec import WanS2VAudioEncoder

    torch.manual_seed(0)
    config = Wav2Vec2Config(**{**S2V_TINY["audio_encoder"], "num_hidden_layers": 3})
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


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory):
    """`tiny-checkpoint --variant s2v-2.2`, its pickles converted (`wan-triton convert-release`)."""
    from wan_triton.checkpoints.tiny import build_checkpoint
    from wan_triton.s2v import release

    root = build_checkpoint(tmp_path_factory.mktemp("s2v") / "Wan2.2-S2V-14B", "s2v-2.2")
    release.convert_pickles(root)
    return root


def _theirs_from_release(root: Path):
    """DiffSynth's text encoder, VAE, audio encoder and S2V model, loaded from the release's own files (the
    pickles included, as DiffSynth loads them)."""
    from safetensors.torch import load_file
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    from wan_triton.s2v import release

    diffsynth_s2v_model()
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import VideoVAE_, WanVideoVAE
    from diffsynth.models.wav2vec import WanS2VAudioEncoder

    text = torch.load(root / release.TEXT_ENCODER_PICKLE, weights_only=True)
    layout = release.t5_layout(text)
    t5 = WanTextEncoder(
        vocab=layout["vocab_size"],
        dim=layout["d_model"],
        dim_attn=layout["d_kv"] * layout["num_heads"],
        dim_ffn=layout["d_ff"],
        num_heads=layout["num_heads"],
        num_layers=layout["num_layers"],
        num_buckets=layout["relative_attention_num_buckets"],
    )
    t5.load_state_dict(text)
    weights = torch.load(root / release.VAE_PICKLE, weights_only=True)
    vae = WanVideoVAE()  # Wan2.1's, at full width; the tiny one's width replaces it
    vae.model = VideoVAE_(dim=release.vae_layout(weights)["base_dim"], z_dim=16).eval()
    vae.model.load_state_dict(weights)
    encoder = WanS2VAudioEncoder.__new__(WanS2VAudioEncoder)  # its __init__ builds the 300M-parameter model
    torch.nn.Module.__init__(encoder)
    encoder.model = Wav2Vec2ForCTC.from_pretrained(root / release.AUDIO_ENCODER, use_safetensors=True).eval()
    encoder.video_rate = 30
    processor = Wav2Vec2FeatureExtractor.from_pretrained(root / release.AUDIO_ENCODER)
    config = release.transformer_config(root)
    names = ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "cond_dim")
    dit = diffsynth_s2v_model()(
        eps=config.eps,
        patch_size=config.patch_size,
        audio_dim=config.audio_dim,
        num_audio_token=config.num_audio_token,
        audio_inject_layers=list(config.audio_inject_layers),
        **{name: getattr(config, name) for name in names},
    ).eval()
    dit.load_state_dict(load_file(root / f"{release.WEIGHTS}.safetensors"))
    return t5.eval(), vae, encoder, processor, dit


@torch.no_grad()
def _reference_video(root, request, image, speech, pose, clips):
    """The release's clip loop (wan/speech2video.py, as DiffSynth's multi-clip example runs it) on DiffSynth's
    parts, with the release's sampler (UniPC on flow sigmas, shift 3: diffusers' port of it)."""
    from transformers import AutoTokenizer

    from wan_triton.s2v import release

    t5, vae, encoder, processor, dit = _theirs_from_release(root)
    tokens = AutoTokenizer.from_pretrained(root / release.TOKENIZER)(
        [request.prompt, request.negative_prompt],
        padding="max_length",
        max_length=512,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    context = t5(tokens.input_ids, tokens.attention_mask)
    for row, length in enumerate(tokens.attention_mask.sum(dim=1)):
        context[row, length:] = 0
    audio = encoder.get_audio_feats_per_inference(speech, 16_000, processor, fps=16, batch_frames=80)
    unit = 2 * torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[:, None].float() / 255 - 1
    reference = vae.encode([unit], device="cpu")
    poses = 2 * torch.from_numpy(pose).permute(3, 0, 1, 2)[None].float() / 255 - 1
    poses = torch.cat([poses, -torch.ones(1, 3, 80 * clips - poses.shape[2], *poses.shape[3:])], dim=2)
    release_root = release.Release.open(root)
    outputs, motion = [], None
    for clip in range(clips):
        chunk = poses[:, :, 80 * clip : 80 * (clip + 1)]
        pose_latents = vae.encode(torch.cat([chunk[:, :, :1], chunk], dim=2), device="cpu")[:, :, 1:]
        generator = torch.Generator().manual_seed(request.seed + clip)
        latents = torch.randn(1, 16, 20, *reference.shape[3:], generator=generator)
        scheduler = release_root.scheduler_class.from_config(release_root.scheduler_config)
        scheduler.set_timesteps(request.num_inference_steps)
        for t in scheduler.timesteps:
            step = t[None].float()
            cond = _theirs(dit, latents, step, context[:1], audio[clip], reference, motion, pose_latents)
            uncond = _theirs(dit, latents, step, context[1:], 0 * audio[clip], reference, motion, pose_latents)
            prediction = uncond + request.guidance_scale * (cond - uncond)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        before = reference if motion is None else motion
        video = vae.decode(torch.cat([before, latents], dim=2), device="cpu")[:, :, -80:]
        video = video[:, :, 3:] if clip == 0 else video
        outputs.append(video)
        motion = vae.encode(video[:, :, -73:], device="cpu")
    return (torch.cat(outputs, dim=2)[0].permute(1, 2, 3, 0) * 0.5 + 0.5).clamp(0, 1).numpy()


def test_the_pipeline_matches_the_releases_clip_loop_on_diffsynths_parts(tiny_release):
    """Two clips (the second driven across the cut by the first's last 73 frames), a pose video, guidance: our
    pipeline (converted VAE and T5, our audio features and transformer, the denoising loop the server runs)
    against the release's loop on DiffSynth's parts loaded from the release's own files."""
    from wan_triton.conditioning import AUDIO_RATE, Media
    from wan_triton.contract import GenerationRequest
    from wan_triton.pipeline import Pipeline
    from wan_triton.s2v.audio import at_sample_rate
    from wan_triton.s2v.clips import frames_of

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pose = rng.integers(0, 256, (100, 64, 64, 3), dtype=np.uint8)  # shorter than 2 clips: padded black
    t = np.arange(int(5.3 * AUDIO_RATE)) / AUDIO_RATE  # as requests carry it; the release takes 16 kHz
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    request = GenerationRequest(
        prompt="a woman is singing",
        negative_prompt="dark",
        height=64,
        width=64,
        num_frames=frames_of(2),  # two whole clips
        num_inference_steps=3,
        guidance_scale=4.5,
        seed=7,
    )
    steps = []
    ours = Pipeline.from_checkpoint(tiny_release).frames(
        request,
        media=Media(image=image, audio=speech, pose_video=pose),
        callback=lambda step, total, latents: steps.append((step, total)),
    )
    expected = _reference_video(tiny_release, request, image, at_sample_rate(speech, AUDIO_RATE), pose, clips=2)
    assert ours.shape == expected.shape == (frames_of(2), 64, 64, 3)
    error = float(np.abs(ours - expected).max())
    # measured 1.4e-5 over the first clip, 5.7e-5 over the second (mean 8e-7): float32 rounding of equivalent
    # arithmetic (the VAE's normalisation, T5, guidance as one batch), which the random VAE amplifies through
    # the re-encoded motion frames
    assert error < 1e-4, error
    assert steps == [(step, 6) for step in range(6)]  # progress over both clips
    assert np.abs(ours[:77] - ours[77:154]).max() > 1e-2  # the clips differ


def test_the_tiny_release_is_the_same_bytes_per_seed_and_converts_once_through_the_cli(tmp_path, capsys):
    """`tiny-checkpoint --variant s2v-2.2` twice with one seed: the same files, byte for byte (the pickles
    too); another seed: other weights. The server refuses the folder until `convert-release` has turned the
    pickles into safetensors, which a second run leaves alone."""
    import hashlib

    from wan_triton import cli
    from wan_triton.s2v import release

    def digests(root: Path) -> dict[str, str]:
        return {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = str(tmp_path / name)
        assert cli.main(["tiny-checkpoint", "--variant", "s2v-2.2", "--out", out, "--seed", str(seed)]) == 0
    first, second, other = (digests(tmp_path / name) for name in "abc")
    assert first == second
    assert {release.VAE_PICKLE, release.TEXT_ENCODER_PICKLE, release.CONFIG} <= set(first)
    assert first[release.VAE_PICKLE] != other[release.VAE_PICKLE] and first.keys() == other.keys()
    with pytest.raises(release.ReleaseError, match="convert-release"):
        release.Release.open(tmp_path / "a")
    assert cli.main(["convert-release", str(tmp_path / "a")]) == 0
    assert "text_encoder" in capsys.readouterr().out
    release.Release.open(tmp_path / "a")
    assert cli.main(["convert-release", str(tmp_path / "a")]) == 0
    assert "nothing to convert" in capsys.readouterr().out
    assert cli.main(["convert-release", str(tmp_path)]) == 2  # not a release


def test_the_converted_vae_and_text_encoder_compute_what_the_pickles_do(tiny_release):
    """The safetensors folders convert-release writes, loaded by diffusers and transformers, against the
    release's pickles loaded into DiffSynth's copies of Wan's own modules."""
    from wan_triton.s2v import release

    t5, vae, *_ = _theirs_from_release(tiny_release)
    ours = release.Release.open(tiny_release)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        expected, got = t5(ids, mask), ours.text_encoder()(ids, mask).last_hidden_state
        assert float((got - expected).abs().max()) < 1e-5
        video = torch.rand(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        latents = vae.encode([video[0]], device="cpu")
        from wan_triton.pipeline.vae import torch_encode

        assert float(np.abs(torch_encode(ours.vae(), video.numpy()) - latents.numpy()).max()) < 1e-5
