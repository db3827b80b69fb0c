"""The exportable parts of a Wan checkpoint, each behind the same small interface.

A `Part` is one Triton model's worth of graphs: for each graph, the torch module, sample inputs,
input/output names, dynamic axes and the exporter that gives parity. It also knows how to run
its reference (torch) and its exported graphs on the same fixed cases, for the parity check.

Exporters are chosen by measurement, not trust: each part lists the exporters to try in order,
and the first whose graphs pass parity wins. Both silently miscompute UMT5 in some library
versions (torch 2.13: TorchScript off by ~4 with transformers 5.24, dynamo off by 1.7 with an
earlier transformers); the TorchScript exporter fails outright on the Wan VAE
(`aten::_upsample_nearest_exact2d`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from wan_triton.pipeline.checkpoint import Checkpoint
from wan_triton.pipeline.image import IMAGE_GRAPH_INPUT, IMAGE_GRAPH_OUTPUT, ImageEncoder
from wan_triton.pipeline.text import PromptEncoder
from wan_triton.pipeline.vae import Part as VaeHalf
from wan_triton.pipeline.vae import run_chunks, torch_chunks
from wan_triton.repository import (
    AUDIO_ENCODER,
    AUDIO_GRAPH_INPUT,
    AUDIO_GRAPH_OUTPUT,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    TEXT_GRAPH_INPUTS,
    TEXT_GRAPH_OUTPUT,
    VAE_DECODER,
    VAE_ENCODER,
)

Exporter = Literal["torchscript", "dynamo"]
# graph key -> runner of that exported graph (numpy in, list of numpy out)
Runners = dict[str, Callable[..., list[np.ndarray]]]


@dataclass
class Graph:
    key: str  # file key in repository.ONNX_FILES
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    # name -> {axis: label}; axes not named are fixed (each Part's docstring says why)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # the same axes in torch.export's form, structured like forward()'s arguments (dynamo only)
    dynamic_shapes: tuple | None = None

    def profile(self, scale: dict[str, tuple[int, int, int]]) -> dict[str, tuple]:
        """TensorRT (min, opt, max) shapes: each dynamic axis times its label's factors."""
        shapes = {}
        for name, tensor in zip(self.input_names, self.inputs, strict=True):
            axes = self.dynamic_axes.get(name, {})
            shapes[name] = tuple(
                tuple(
                    scale[axes[i]][k] * (1 if axes[i] in ("batch", "sequence") else size) if i in axes else size
                    for i, size in enumerate(tensor.shape)
                )
                for k in range(3)
            )
        return shapes


@dataclass
class Case:
    """One fixed parity input: what it is, and its reference output."""

    label: str
    reference: np.ndarray
    run: Callable[[Runners], np.ndarray]


class TextEncoderPart:
    """UMT5 encoder: input_ids, attention_mask [batch, sequence] -> last_hidden_state.

    Batch and sequence are dynamic. Padding and the zeroing past each prompt stay in Python
    (wan_triton.pipeline.text), the same for every backend.
    """

    model = TEXT_ENCODER
    exporters: tuple[Exporter, ...] = ("dynamo", "torchscript")

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.encoder = checkpoint.text_encoder()
        self.prompts = PromptEncoder(checkpoint.tokenizer(), encode=lambda ids, mask: ids)

    def graphs(self) -> Iterator[Graph]:
        ids, mask = (torch.from_numpy(a) for a in self.prompts.tokenize(["a cat", "a dog running in the snow"]))
        axes = {0: "batch", 1: "sequence"}
        auto = dict.fromkeys(axes, torch.export.Dim.AUTO)
        yield Graph(
            "model",
            _LastHiddenState(self.encoder).eval(),
            (ids, mask),
            list(TEXT_GRAPH_INPUTS),
            [TEXT_GRAPH_OUTPUT],
            {name: axes for name in (*TEXT_GRAPH_INPUTS, TEXT_GRAPH_OUTPUT)},
            (auto, auto),
        )

    def cases(self) -> Iterator[Case]:
        prompts = ["a cat", "a red bird flying over a dark forest at night, wide shot, slow camera"]
        for length in (self.prompts.max_sequence_length, 24):  # fully padded, and a short dynamic length
            ids, mask = self.prompts.tokenize(prompts, length)
            with torch.inference_mode():
                reference = self.encoder(torch.from_numpy(ids), torch.from_numpy(mask)).last_hidden_state.numpy()
            yield Case(
                f"2 padded prompts, sequence {length}",
                reference,
                lambda run, ids=ids, mask=mask: run["model"](ids, mask)[0],
            )


class _LastHiddenState(torch.nn.Module):
    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ImageEncoderPart:
    """CLIP vision tower (Wan2.1 I2V): pixel_values [batch, 3, 224, 224] -> penultimate hidden states.

    Batch is dynamic. The 224x224 input is fixed: the checkpoint's processor always crops to it,
    and the tower's position embeddings fix its token count. Preprocessing stays in Python
    (wan_triton.pipeline.image), the same for every backend.
    """

    model = IMAGE_ENCODER
    exporters: tuple[Exporter, ...] = ("dynamo", "torchscript")

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.encoder = checkpoint.image_encoder()
        self.images = ImageEncoder(checkpoint.image_processor(), encode=lambda pixels: pixels)

    def pixels(self, sizes: list[tuple[int, int]], seed: int) -> np.ndarray:
        """Preprocessed random images of these (height, width): real pixel statistics, one batch."""
        rng = np.random.default_rng(seed)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        return np.concatenate([self.images.preprocess(image) for image in images])

    def graphs(self) -> Iterator[Graph]:
        pixels = torch.from_numpy(self.pixels([(480, 832), (300, 200)], seed=0))  # batch 2: not specialised
        yield Graph(
            "model",
            _PenultimateHiddenState(self.encoder).eval(),
            (pixels,),
            [IMAGE_GRAPH_INPUT],
            [IMAGE_GRAPH_OUTPUT],
            {IMAGE_GRAPH_INPUT: {0: "batch"}, IMAGE_GRAPH_OUTPUT: {0: "batch"}},
            ({0: torch.export.Dim.AUTO},),
        )

    def cases(self) -> Iterator[Case]:
        for sizes in ([(480, 832)], [(832, 480), (224, 224), (97, 131)]):
            pixels = self.pixels(sizes, seed=1)
            with torch.inference_mode():
                reference = _PenultimateHiddenState(self.encoder)(torch.from_numpy(pixels)).numpy()
            yield Case(f"{len(sizes)} image(s) {sizes}", reference, lambda run, pixels=pixels: run["model"](pixels)[0])


class _PenultimateHiddenState(torch.nn.Module):
    """What WanImageToVideoPipeline.encode_image takes: hidden_states[-2], not the pooled output."""

    def __init__(self, encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2]


class AudioEncoderPart:
    """wav2vec2 (Wan2.2-S2V): normalised 16 kHz samples [1, samples] -> every hidden state, stacked,
    [layers + 1, frames, dim] (s2v/audio.py's StackedHiddenStates).

    The sample count is dynamic (frames follow it: one per 320 samples); the batch is one recording. The
    resampling and normalisation before it and the per-frame picking after it stay in Python.
    """

    model = AUDIO_ENCODER
    exporters: tuple[Exporter, ...] = ("dynamo", "torchscript")

    def __init__(self, checkpoint) -> None:
        from wan_triton.s2v.audio import StackedHiddenStates

        self.encoder = StackedHiddenStates(checkpoint.audio_encoder()).eval()

    @staticmethod
    def speech(seconds: float, seed: int) -> np.ndarray:
        """Speech-like normalised samples: a voiced tone with a syllable rhythm, and noise."""
        from wan_triton.s2v.audio import SAMPLE_RATE, normalised

        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        rng = np.random.default_rng(seed)
        voiced = np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t)) + 0.1 * rng.standard_normal(t.size)
        return normalised(voiced.astype(np.float32))[None]

    def graphs(self) -> Iterator[Graph]:
        yield Graph(
            "model",
            self.encoder,
            (torch.from_numpy(self.speech(1.3, seed=0)),),
            [AUDIO_GRAPH_INPUT],
            [AUDIO_GRAPH_OUTPUT],
            {AUDIO_GRAPH_INPUT: {1: "samples"}, AUDIO_GRAPH_OUTPUT: {1: "frames"}},
            ({1: torch.export.Dim.AUTO},),
        )

    def cases(self) -> Iterator[Case]:
        for seconds in (0.5, 3.7):
            values = self.speech(seconds, seed=1)
            with torch.inference_mode():
                reference = self.encoder(torch.from_numpy(values)).numpy()
            yield Case(f"{seconds} s of speech", reference, lambda run, values=values: run["model"](values)[0])


class VaePart:
    """A Wan VAE half as two chunk graphs (see wan_triton.pipeline.vae.CausalChunk).

    Batch, height and width are dynamic. The frame axis of a chunk is fixed (1 latent frame for
    the decoder; 1 then 4 video frames for the encoder): that is the VAE's own causal chunking,
    and any video length is a loop over chunks, so one pair of graphs serves every frame count.
    """

    exporters: tuple[Exporter, ...] = ("dynamo",)

    def __init__(self, checkpoint: Checkpoint, part: VaeHalf) -> None:
        self.vae = checkpoint.vae()
        self.part = part
        self.model = VAE_DECODER if part == "decoder" else VAE_ENCODER
        z = self.vae.config.z_dim
        generator = torch.Generator().manual_seed(0)
        # Odd latent sizes (5x7) keep every spatial axis distinct, so none is specialised.
        if part == "decoder":
            self.sample = torch.randn(1, z, 2, 5, 7, generator=generator)
        else:
            f = self.vae.config.scale_factor_spatial
            self.sample = torch.rand(1, 3, 5, 5 * f, 7 * f, generator=generator) * 2 - 1
        self.first, self.step = torch_chunks(self.vae, part, self.sample)

    def graphs(self) -> Iterator[Graph]:
        n = len(self.first.cache_frames)
        x_name, out_name = ("latent", "video") if self.part == "decoder" else ("video", "moments")
        cache_in = [f"cache_in_{i}" for i in range(n)]
        cache_out = [f"cache_out_{i}" for i in range(n)]
        axes = {0: "batch", 3: "height", 4: "width"}
        auto = dict.fromkeys(axes, torch.export.Dim.AUTO)
        with torch.inference_mode():
            # Contiguous, as run_chunks passes them: a strided slice makes the exporter trace the
            # input's stride as a symbol (aten.sym_stride, which has no ONNX lowering) at patchify's view.
            first_chunk, second_chunk = (self.sample[:, :, s].contiguous() for s in _first_two(self.part))
            cache = self.first(first_chunk)[1:]
        yield Graph(
            "first",
            self.first,
            (first_chunk,),
            [x_name],
            [out_name, *cache_out],
            {name: axes for name in (x_name, out_name, *cache_out)},
            (auto,),
        )
        yield Graph(
            "step",
            self.step,
            (second_chunk, *cache),
            [x_name, *cache_in],
            [out_name, *cache_out],
            {name: axes for name in (x_name, out_name, *cache_in, *cache_out)},
            (auto, tuple(auto for _ in cache)),
        )

    def cases(self) -> Iterator[Case]:
        generator = torch.Generator().manual_seed(1)
        if self.part == "decoder":
            shapes = [(1, self.vae.config.z_dim, t, h, w) for t, h, w in ((1, 4, 6), (3, 5, 7), (5, 6, 4))]
            inputs = [torch.randn(*s, generator=generator) for s in shapes]
        else:
            f = self.vae.config.scale_factor_spatial
            shapes = [(1, 3, t, h * f, w * f) for t, h, w in ((1, 4, 6), (5, 5, 7), (9, 6, 4))]
            inputs = [torch.rand(*s, generator=generator) * 2 - 1 for s in shapes]
        for x in inputs:
            with torch.inference_mode():
                if self.part == "decoder":
                    reference = self.vae.decode(x, return_dict=False)[0].numpy()
                else:
                    reference = self.vae.encode(x).latent_dist.parameters.numpy()
            array = x.numpy()
            yield Case(
                f"{self.part} input {tuple(x.shape)}",
                reference,
                lambda run, array=array: run_chunks(self.part, run["first"], run["step"], array),
            )


def _first_two(part: VaeHalf) -> tuple[slice, slice]:
    return (slice(0, 1), slice(1, 2)) if part == "decoder" else (slice(0, 1), slice(1, 5))


PART_NAMES = (TEXT_ENCODER, VAE_DECODER, VAE_ENCODER)  # every Wan checkpoint has these
# Only checkpoints with the part: Wan2.1 I2V's CLIP tower, Wan2.2-S2V's wav2vec2.
OPTIONAL_PART_NAMES = (IMAGE_ENCODER, AUDIO_ENCODER)
# The checkpoint folder whose configs and weights define each part (its manifest's source hash).
SOURCE_FOLDERS = {
    TEXT_ENCODER: "text_encoder",
    IMAGE_ENCODER: "image_encoder",
    AUDIO_ENCODER: "audio_encoder",
    VAE_DECODER: "vae",
    VAE_ENCODER: "vae",
}


def parts_of(checkpoint: Checkpoint) -> tuple[str, ...]:
    """The parts a checkpoint has: PART_NAMES, plus the image encoder where there is one."""
    return PART_NAMES + tuple(name for name in OPTIONAL_PART_NAMES if checkpoint.has(SOURCE_FOLDERS[name]))


def load_part(checkpoint: Checkpoint, name: str) -> TextEncoderPart | ImageEncoderPart | AudioEncoderPart | VaePart:
    if name in OPTIONAL_PART_NAMES and not checkpoint.has(SOURCE_FOLDERS[name]):
        raise ValueError(
            f"{checkpoint.root} has no {SOURCE_FOLDERS[name]}; its parts: {', '.join(parts_of(checkpoint))}"
        )
    if name == TEXT_ENCODER:
        return TextEncoderPart(checkpoint)
    if name == IMAGE_ENCODER:
        return ImageEncoderPart(checkpoint)
    if name == AUDIO_ENCODER:
        return AudioEncoderPart(checkpoint)
    if name in (VAE_DECODER, VAE_ENCODER):
        return VaePart(checkpoint, "decoder" if name == VAE_DECODER else "encoder")
    raise ValueError(f"unknown part {name!r}; choose from {', '.join(PART_NAMES + OPTIONAL_PART_NAMES)}")
