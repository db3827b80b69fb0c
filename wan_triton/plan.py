"""A checkpoint's memory plan: the bytes of each part, where each goes, and whether it fits.

Computed from the checkpoint's configs alone: every part is instantiated on torch's meta device
(nothing is allocated, no weight is read), so a 14B plan takes seconds on any machine.

    wan-triton plan --checkpoint DIR [--gpus 1] [--gpu-memory 80GiB] [--parallel ulysses=N[,cfg=2]] [--json]

The rules, per GPU (Triton puts one instance of each GPU model on every visible GPU, so each GPU
holds the whole set):
- the denoiser's transformer(s) in bf16, both Wan2.2 A14B experts resident (they alternate every
  request), with an activation reserve for the largest request the limits admit;
- the VAE halves and the CLIP image encoder as the fp32 ONNX graphs they are served as;
- the UMT5 text encoder (fp32 ONNX) on the GPU when it fits beside the rest, else on the CPU (it
  runs once per request, so that costs seconds, not a GPU);
- every process that uses the GPU holds a CUDA context.
In parallel mode (serve --parallel) every rank holds the whole transformer(s) and its share of the
activations (the tokens split over the sequence degree; with cfg=2 one branch of the guidance pair);
the plan above is rank 0's GPU, which also holds the rest, and the other ranks' GPUs hold the
denoiser's part alone. Weights are counted exactly; working memory (activations, the VAE's workspace) is an estimate for
the largest request the limits admit. Weights that do not fit are a problem: `serve` refuses to start
and says why. Working memory past the GPU is a warning naming the limits to lower.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from wan_triton.contract import Limits, is_s2v_release
from wan_triton.parallel import Parallel
from wan_triton.repository import AUDIO_ENCODER, DENOISER, IMAGE_ENCODER, TEXT_ENCODER, VAE_DECODER, VAE_ENCODER

GIB = 1 << 30
BYTES = {"fp32": 4, "bf16": 2}
CUDA_CONTEXT_BYTES = GIB // 2  # torch's or ONNX Runtime's CUDA context and kernels, per process
# Deadlines scale with the transformer (the work per step): the default limits' deadline per 2B parameters.
DEADLINE_PER_PARAMETERS = 2e9


class PlanError(RuntimeError):
    """The checkpoint's weights do not fit the GPUs: the message is the plan."""


@dataclass(frozen=True)
class Part:
    model: str  # the Triton model that holds it
    component: str  # the checkpoint folder
    parameters: int
    dtype: str
    weight_bytes: int
    working_bytes: int  # activations and workspace at the limits' largest request (an estimate)
    device: str = "gpu"

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.working_bytes


@dataclass(frozen=True)
class Plan:
    checkpoint: str
    gpus: int
    gpu_memory: int
    parts: tuple[Part, ...]
    problems: tuple[str, ...] = ()  # what cannot fit: serve refuses to start
    warnings: tuple[str, ...] = ()  # estimates past the memory: serve says so and starts
    ranks: int = 1  # serve --parallel: the denoiser's ranks; the parts above are rank 0's

    @property
    def fits(self) -> bool:
        return not self.problems

    def gpu_bytes(self, working: bool = True) -> int:
        """Per GPU: the parts on it (with their working memory, or weights alone) and a CUDA context for
        each model holding any."""
        on_gpu = [p for p in self.parts if p.device == "gpu"]
        held = sum(p.bytes if working else p.weight_bytes for p in on_gpu)
        return held + CUDA_CONTEXT_BYTES * len({p.model for p in on_gpu})

    def worker_bytes(self) -> int:
        """Per GPU of ranks 1 and up (parallel mode): the transformer(s) and their activations."""
        return sum(p.bytes for p in self.parts if p.model == DENOISER) + CUDA_CONTEXT_BYTES

    def cpu_models(self) -> frozenset[str]:
        """Models the plan puts on the CPU of a GPU machine."""
        return frozenset(p.model for p in self.parts if p.device == "cpu" and self.gpus)

    def to_json(self) -> dict:
        workers = {"gpu_bytes_per_worker_gpu": self.worker_bytes()} if self.ranks > 1 else {}
        return {**asdict(self), "fits": self.fits, "gpu_bytes_per_gpu": self.gpu_bytes(), **workers}

    def table(self) -> str:
        rows = [f"{'model':<14}{'part':<15}{'parameters':>14}{'dtype':>7}{'weights':>11}{'working':>11}  device"]
        for p in self.parts:
            rows.append(
                f"{p.model:<14}{p.component:<15}{p.parameters:>14,}{p.dtype:>7}"
                f"{gib(p.weight_bytes):>11}{gib(p.working_bytes):>11}  {p.device}"
            )
        where = f"{self.gpus} GPU(s) of {gib(self.gpu_memory)}" if self.gpus else "the CPU"
        rows.append(f"per GPU: {gib(self.gpu_bytes())} with CUDA contexts, on {where}")
        if self.ranks > 1:
            rows.append(f"per GPU of ranks 1-{self.ranks - 1}: {gib(self.worker_bytes())} (the denoiser's part alone)")
        rows += [f"warning: {warning}" for warning in self.warnings]
        rows += [f"does not fit: {problem}" for problem in self.problems] or ["fits"]
        return "\n".join(rows)


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '141 GiB', '8589934592' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 80GiB)")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    return int(number * (1024 if binary or not unit else 1000) ** "_KMGT".index(unit or "_"))


def _meta_parameters(build) -> int:
    import torch

    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def parameters(root: Path, component: str) -> int:
    """A component's parameter count from its config alone (meta device)."""
    folder = root / component
    if component == "transformer" and is_s2v_release(root):
        from wan_triton.s2v.release import transformer_config
        from wan_triton.s2v.transformer import S2VTransformer

        return _meta_parameters(lambda: S2VTransformer(transformer_config(root)))
    if component == "audio_encoder":  # Wan2.2-S2V's wav2vec2, beside the release
        from transformers import Wav2Vec2Config, Wav2Vec2Model

        from wan_triton.s2v.release import AUDIO_ENCODER as FOLDER

        config = Wav2Vec2Config.from_pretrained(root / FOLDER)
        return _meta_parameters(lambda: Wav2Vec2Model(config))
    if component.startswith("transformer"):
        import diffusers

        from wan_triton.pipeline.checkpoint import TRANSFORMERS

        kind = json.loads((folder / "config.json").read_text()).get("_class_name")
        model = getattr(diffusers, kind if kind in TRANSFORMERS else TRANSFORMERS[0])  # VACE: its control blocks too
        config = model.load_config(folder)
        return _meta_parameters(lambda: model.from_config(config))
    if component == "vae":
        from diffusers import AutoencoderKLWan

        config = AutoencoderKLWan.load_config(folder)
        return _meta_parameters(lambda: AutoencoderKLWan.from_config(config))
    if component == "text_encoder":
        from transformers import UMT5Config, UMT5EncoderModel

        config = UMT5Config.from_pretrained(folder)
        return _meta_parameters(lambda: UMT5EncoderModel(config))
    if component == "image_encoder":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig.from_pretrained(folder)
        return _meta_parameters(lambda: CLIPVisionModel(config))
    raise ValueError(f"no parameter count for {component!r}")


def _present(root: Path, component: str) -> bool:
    if is_s2v_release(root):  # one transformer, wav2vec2, the converted VAE and T5
        return component in ("transformer", "audio_encoder")
    index = json.loads((root / "model_index.json").read_text())
    entry = index.get(component)
    return bool(entry and entry[0]) and (root / component / "config.json").is_file()


def largest_request(limits: Limits) -> tuple[int, int]:
    """(pixels x frames, pixels of one frame) of the largest request the limits admit: max_side square
    and max_frames, as far as max_output_bytes (3 bytes a pixel of every frame) allows."""
    pixel_frames = min(limits.max_side**2 * limits.max_frames, limits.max_output_bytes // 3)
    return pixel_frames, min(limits.max_side**2, pixel_frames)


def make_plan(
    checkpoint: str | Path,
    gpus: int = 1,
    gpu_memory: int = 80 * GIB,
    limits: Limits | None = None,
    parallel: Parallel | None = None,
) -> Plan:
    from wan_triton.contract import Geometry

    root, limits, parallel = Path(checkpoint), limits or Limits(), parallel or Parallel()
    s2v = is_s2v_release(root)
    transformer = json.loads((root / ("config.json" if s2v else "transformer/config.json")).read_text())
    vae = json.loads((root / "vae" / "config.json").read_text())
    geometry = Geometry.from_checkpoint(root)
    pixel_frames, frame_pixels = largest_request(limits)
    tokens = pixel_frames // (geometry.spatial_multiple**2 * geometry.vae_temporal)
    dim = transformer["dim"] if s2v else transformer["num_attention_heads"] * transformer["attention_head_dim"]
    # One block's live tensors for the guidance pair (batch 2) in bf16: q, k, v, attention out and the
    # residual (5 x dim) and the feed-forward's hidden (ffn_dim), with attention computed in tiles.
    # Parallel mode: a rank holds its share of the tokens, and with cfg=2 one branch of the pair.
    activations = 2 * tokens * (5 * dim + transformer["ffn_dim"]) * BYTES["bf16"] // (parallel.sequence * parallel.cfg)
    # The chunked VAE decode: one latent frame at a time, its largest feature map (full resolution,
    # base_dim channels, the temporal upsampling's 4 frames) in fp32, three times (input, output, cache).
    base = vae.get("decoder_base_dim") or vae["base_dim"]
    decode = 3 * geometry.vae_temporal * frame_pixels * base * BYTES["fp32"]
    on_gpu = "gpu" if gpus else "cpu"

    parts = []
    for component in ("transformer", "transformer_2"):
        if _present(root, component):
            count = parameters(root, component)
            dtype = "bf16" if gpus else "fp32"
            working = activations if component == "transformer" else 0  # the experts alternate
            parts.append(Part(DENOISER, component, count, dtype, count * BYTES[dtype], working, on_gpu))
    count = parameters(root, "vae")
    parts.append(Part(VAE_DECODER, "vae", count, "fp32", count * BYTES["fp32"], decode, on_gpu))
    parts.append(Part(VAE_ENCODER, "vae", count, "fp32", count * BYTES["fp32"], decode // 2, on_gpu))
    if _present(root, "image_encoder"):
        count = parameters(root, "image_encoder")
        parts.append(Part(IMAGE_ENCODER, "image_encoder", count, "fp32", count * BYTES["fp32"], GIB // 4, on_gpu))
    if _present(root, "audio_encoder"):
        count = parameters(root, "audio_encoder")
        parts.append(Part(AUDIO_ENCODER, "audio_encoder", count, "fp32", count * BYTES["fp32"], GIB // 4, on_gpu))
    count = parameters(root, "text_encoder")
    text = Part(TEXT_ENCODER, "text_encoder", count, "fp32", count * BYTES["fp32"], GIB // 2, on_gpu)

    problems, warnings = [], []
    if gpus:
        if Plan(str(root), gpus, gpu_memory, (*parts, text)).gpu_bytes() > gpu_memory:
            text = dataclasses.replace(text, device="cpu")  # the text encoder gives way first
        plan = Plan(str(root), gpus, gpu_memory, (*parts, text), ranks=parallel.world)
        weights = plan.gpu_bytes(working=False)
        experts = " and ".join(f"{p.component} ({gib(p.weight_bytes)})" for p in parts if p.model == DENOISER)
        if weights > gpu_memory:
            problems.append(
                f"the weights alone need {gib(weights)} per GPU > {gib(gpu_memory)} (the denoiser's {experts}, "
                "the VAE and the CUDA contexts): use GPUs with more memory (offloading an idle expert is not "
                "supported yet)"
            )
        elif plan.gpu_bytes() > gpu_memory:
            warnings.append(
                f"the largest request the limits admit ({pixel_frames:,} pixel-frames, {tokens:,} tokens) is "
                f"estimated at {gib(plan.gpu_bytes())} per GPU > {gib(gpu_memory)}: lower max_side, max_frames "
                "or max_output_bytes (serve --limits) so that such a request cannot run out of memory"
            )
    return Plan(str(root), gpus, gpu_memory, (*parts, text), tuple(problems), tuple(warnings), parallel.world)


def default_deadline_s(checkpoint: str | Path) -> float:
    """The job deadline `serve` uses when the limits name none: the default limits' 1800 s per 2B
    parameters of the transformer that runs each step, never less (a 14B job runs tens of minutes)."""
    count = parameters(Path(checkpoint), "transformer")
    return Limits().deadline_s * max(1, math.ceil(count / DEADLINE_PER_PARAMETERS))
