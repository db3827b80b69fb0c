"""The Wan2.1 I2V and Wan2.2 TI2V tiny checkpoints, the image-conditioning stage and its export."""

import json

import numpy as np
import pytest
import torch
from test_checkpoint import EXPECTED

from wan_triton.checkpoints import build_checkpoint
from wan_triton.contract import Geometry
from wan_triton.export import TOLERANCE, export
from wan_triton.export.parts import PART_NAMES, VaePart, parts_of
from wan_triton.export.to_onnx import parity
from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.image import ImageEncoder, onnx_image_encoder, torch_image_encoder
from wan_triton.repository import IMAGE_ENCODER, MANIFEST, ONNX_FILES, version_dir

I2V, FLF2V, TI2V, T2V_A14B, I2V_A14B = "i2v-2.1", "flf2v-2.1", "ti2v-2.2", "t2v-a14b", "i2v-a14b"
VACE, ANIMATE = "vace-2.1", "animate-2.2"
CLIP = {"image_encoder/config.json", "image_encoder/model.safetensors", "image_processor/preprocessor_config.json"}
EXPERT = {"transformer_2/config.json", "transformer_2/diffusion_pytorch_model.safetensors"}
# Each variant's folders and files beyond the T2V ones, its index entries and the configs that
# make it that model (convert_wan_to_diffusers.py's values; only widths and depths shrink).
EXTRA_FILES = {
    I2V: CLIP,
    FLF2V: CLIP,
    TI2V: set(),
    T2V_A14B: EXPERT,
    I2V_A14B: EXPERT,
    VACE: set(),
    ANIMATE: CLIP,
}
INDEX = {
    I2V: {
        "_class_name": "WanImageToVideoPipeline",
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
        "expand_timesteps": False,
    },
    FLF2V: {
        "_class_name": "WanImageToVideoPipeline",
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
    },
    TI2V: {"_class_name": "WanPipeline", "expand_timesteps": True, "transformer_2": [None, None]},
    T2V_A14B: {
        "_class_name": "WanPipeline",
        "boundary_ratio": 0.875,
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
    },
    I2V_A14B: {
        "_class_name": "WanImageToVideoPipeline",
        "boundary_ratio": 0.9,
        "image_encoder": [None, None],
        "image_processor": [None, None],
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
    },
    VACE: {"_class_name": "WanVACEPipeline", "transformer": ["diffusers", "WanVACETransformer3DModel"]},
    ANIMATE: {
        "_class_name": "WanAnimatePipeline",
        "transformer": ["diffusers", "WanAnimateTransformer3DModel"],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
    },
}
CONFIGS = {
    I2V: {
        "transformer/config.json": {"in_channels": 36, "out_channels": 16, "image_dim": 32, "added_kv_proj_dim": 24},
        "vae/config.json": {"z_dim": 16, "is_residual": False, "patch_size": None},
        "scheduler/scheduler_config.json": {"flow_shift": 3.0, "use_flow_sigmas": True},
        "image_encoder/config.json": {"image_size": 224, "patch_size": 14, "hidden_size": 32},
        "image_processor/preprocessor_config.json": {"crop_size": {"height": 224, "width": 224}},
    },
    FLF2V: {
        "transformer/config.json": {"in_channels": 36, "image_dim": 32, "pos_embed_seq_len": 514},
        "scheduler/scheduler_config.json": {"flow_shift": 16.0, "use_flow_sigmas": True},
        "image_encoder/config.json": {"image_size": 224, "patch_size": 14},
    },
    TI2V: {
        "transformer/config.json": {"in_channels": 48, "out_channels": 48, "image_dim": None},
        "vae/config.json": {"z_dim": 48, "is_residual": True, "patch_size": 2, "scale_factor_spatial": 16},
        "scheduler/scheduler_config.json": {"flow_shift": 5.0, "use_flow_sigmas": True},
    },
    T2V_A14B: {
        "transformer/config.json": {"in_channels": 16, "out_channels": 16, "image_dim": None},
        "transformer_2/config.json": {"in_channels": 16, "out_channels": 16, "image_dim": None},
        "scheduler/scheduler_config.json": {"flow_shift": 12.0, "use_flow_sigmas": True},
    },
    I2V_A14B: {
        "transformer/config.json": {"in_channels": 36, "out_channels": 16, "image_dim": None},
        "transformer_2/config.json": {"in_channels": 36, "out_channels": 16, "added_kv_proj_dim": None},
        "scheduler/scheduler_config.json": {"flow_shift": 5.0, "use_flow_sigmas": True},
    },
    VACE: {
        "transformer/config.json": {"in_channels": 16, "vace_layers": [0], "vace_in_channels": 96},
        "scheduler/scheduler_config.json": {"flow_shift": 3.0, "use_flow_sigmas": True},
    },
    ANIMATE: {
        "transformer/config.json": {
            "in_channels": 36,
            "latent_channels": 16,
            "image_dim": 32,
            "motion_encoder_size": 16,
        },
        "scheduler/scheduler_config.json": {"flow_shift": 5.0, "use_flow_sigmas": True},
        "image_encoder/config.json": {"image_size": 224, "patch_size": 14},
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {variant: build_checkpoint(root / variant, variant=variant, seed=0) for variant in INDEX}


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((480, 832, 3), (200, 150, 3))]


@pytest.mark.parametrize("variant", list(INDEX))
def test_variant_has_the_real_layout_and_is_reproducible(built, tmp_path, variant):
    first = files(built[variant])
    assert set(first) == EXPECTED | EXTRA_FILES[variant]
    assert files(build_checkpoint(tmp_path / "again", variant=variant, seed=0)) == first
    index = json.loads(first["model_index.json"])
    assert INDEX[variant].items() <= index.items()
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    for name, expected in CONFIGS[variant].items():
        config = json.loads(first[name])
        assert {key: config[key] for key in expected} == expected, name
    if variant == TI2V:
        vae = json.loads(first["vae/config.json"])
        assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 48
        assert vae["temperal_downsample"] == [False, True, True] and len(vae["dim_mult"]) == 4


def test_a_seed_changes_the_image_encoder(built, tmp_path):
    other = build_checkpoint(tmp_path / "other", variant=I2V, seed=1)
    weights = "image_encoder/model.safetensors"
    assert (other / weights).read_bytes() != (built[I2V] / weights).read_bytes()


@pytest.mark.parametrize("variant", [I2V, TI2V])
def test_diffusers_generates_with_it(built, variant):
    from diffusers import WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    options = dict(height=64, width=64, num_frames=5, num_inference_steps=2, output_type="np", generator=generator)
    if variant == I2V:
        pipe = WanImageToVideoPipeline.from_pretrained(built[variant])
        # Embeddings given: diffusers 0.42.1's I2V prompt cleaning calls ftfy unguarded (absent here).
        embeds = torch.randn(1, 16, pipe.text_encoder.config.d_model, generator=generator)
        image = Image.fromarray(images()[0])
        video = pipe(image=image, prompt_embeds=embeds, negative_prompt_embeds=embeds, **options).frames
    else:
        video = WanPipeline.from_pretrained(built[variant])(prompt="a red cat", **options).frames
    assert video.shape == (1, 5, 64, 64, 3) and np.isfinite(video).all()


@pytest.mark.parametrize("variant, multiple", [(I2V, 16), (TI2V, 32)])
def test_our_loader_and_geometry(built, variant, multiple):
    checkpoint = Checkpoint.open(built[variant])
    assert Geometry.from_checkpoint(built[variant]).spatial_multiple == multiple
    assert checkpoint.has("image_encoder") == (variant == I2V)
    assert checkpoint.expand_timesteps == (variant == TI2V)
    assert checkpoint.scheduler_class.__name__ == "UniPCMultistepScheduler"
    transformer, vae = checkpoint.transformer(), checkpoint.vae()
    assert transformer.config.in_channels == (36 if variant == I2V else 48)
    assert vae.config.z_dim == (16 if variant == I2V else 48)
    assert set(parts_of(checkpoint)) == set(PART_NAMES) | ({IMAGE_ENCODER} if variant == I2V else set())


def test_image_encoder_equals_diffusers_encode_image(built):
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    pipe = WanImageToVideoPipeline.from_pretrained(built[I2V])
    checkpoint = Checkpoint.open(built[I2V])
    encoder = ImageEncoder(checkpoint.image_processor(), torch_image_encoder(checkpoint.image_encoder()))
    for image in images():
        with torch.inference_mode():
            reference = pipe.encode_image(Image.fromarray(image), torch.device("cpu")).numpy()
        ours = encoder(image)
        assert ours.dtype == np.float32 and ours.shape == reference.shape == (1, 257, 32)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="RGB uint8"):
        encoder(images()[0].astype(np.float32))


def test_image_encoder_exports_with_parity(built, tmp_path):
    from wan_triton import onnx_runtime

    report = export(built[I2V], tmp_path, parts=[IMAGE_ENCODER], log=lambda _: None)[IMAGE_ENCODER]
    record = json.loads((version_dir(tmp_path, IMAGE_ENCODER) / MANIFEST).read_text())
    assert set(record["files"]) == set(ONNX_FILES[IMAGE_ENCODER].values())
    assert record["parity"] == report["parity"] and len(report["parity"]["cases"]) >= 2
    assert all(c["max_abs_error"] <= TOLERANCE for c in report["parity"]["cases"])
    model = record["graphs"]["model"]
    assert model["inputs"][0]["name"] == "pixel_values" and isinstance(model["inputs"][0]["shape"][0], str)
    # The stage through ONNX Runtime, on an image the parity cases did not use.
    checkpoint = Checkpoint.open(built[I2V])
    graph = version_dir(tmp_path, IMAGE_ENCODER) / ONNX_FILES[IMAGE_ENCODER]["model"]
    exported = ImageEncoder(checkpoint.image_processor(), onnx_image_encoder(onnx_runtime.session(graph)))
    reference = ImageEncoder(checkpoint.image_processor(), torch_image_encoder(checkpoint.image_encoder()))
    image = images()[1]
    np.testing.assert_allclose(exported(image), reference(image), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("half", ["decoder", "encoder"])
def test_ti2v_vae_chunks_equal_diffusers(built, half):
    """The chunk modules export traces, on Wan2.2's VAE (48 channels, 2x2 patches, residual
    blocks), against diffusers' own decode/encode on the export's parity cases."""
    part = VaePart(Checkpoint.open(built[TI2V]), half)

    def run(module):
        def call(*arrays):
            with torch.inference_mode():
                return [t.numpy() for t in module(*(torch.from_numpy(a) for a in arrays))]

        return call

    results = parity(list(part.cases()), {"first": run(part.first), "step": run(part.step)})
    assert max(r["max_abs_error"] for r in results) <= 1e-5, results
    # The exported graphs' parity: `serve` exports them for the TI2V server (test_tasks_served).
