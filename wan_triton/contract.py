"""The request contract, defined once: names, dtypes, defaults, limits and validation.

Plain Python (numpy at most): the client, the Triton models, the export code and the tests all
import it, and gRPC users run it without torch. Names are diffusers' own call arguments.
Validation never rounds or clamps: each violation raises `RequestError` naming the field and
what is allowed.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

SEED_MAX = 2**63 - 1  # seeds travel as INT64 and feed torch.Generator.manual_seed


class RequestError(ValueError):
    """A request that breaks the contract. `field` names the offending input."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract as it crosses gRPC (shape [1] per request)."""

    name: str
    dtype: str  # Triton's dtype name: BYTES, INT32, INT64, FP32
    optional: bool
    doc: str

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.dtype]


NUMPY_DTYPES: dict[str, type] = {
    "BYTES": np.object_,
    "BOOL": np.bool_,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP32": np.float32,
}

INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("prompt", "BYTES", False, "UTF-8 text describing the video"),
    TensorSpec("negative_prompt", "BYTES", True, "UTF-8 text to steer away from (default: empty)"),
    TensorSpec("height", "INT32", True, "frame height in pixels"),
    TensorSpec("width", "INT32", True, "frame width in pixels"),
    TensorSpec("num_frames", "INT32", True, "frames in the video, 4k+1 (wan_s2v: any; by default the audio's)"),
    TensorSpec("num_inference_steps", "INT32", True, "denoising steps"),
    TensorSpec("guidance_scale", "FP32", True, "classifier-free guidance; <= 1 disables it"),
    TensorSpec("guidance_scale_2", "FP32", True, "guidance of the low-noise expert (Wan2.2 A14B)"),
    TensorSpec("flow_shift", "FP32", True, "scheduler flow shift (default: the checkpoint's)"),
    TensorSpec("seed", "INT64", True, "noise seed; absent means random, returned in `seed`"),
    TensorSpec("fps", "INT32", True, "frames per second of the MP4"),
    TensorSpec(
        "cache_method", "BYTES", True, "step cache: none (default), first_block, mag, taylorseer, faster, sea, pyramid"
    ),
    TensorSpec(
        "cache_threshold", "FP32", True, "first_block, mag, sea: the change a skipped step may hide; higher is faster"
    ),
    TensorSpec(
        "cache_interval",
        "INT32",
        True,
        "taylorseer, faster, pyramid: the blocks (faster, pyramid: the self-attention) run every N steps",
    ),
    TensorSpec("return_frames", "BOOL", True, "also return raw uint8 frames (large; off by default)"),
    TensorSpec("preview", "BOOL", True, "streaming entries: a low-resolution preview frame with each step"),
    TensorSpec("audio", "BYTES", True, "WAV, FLAC, MP3 or OGG bytes: muxed into the MP4 as its AAC track"),
    TensorSpec("frames_from_audio", "BOOL", True, "num_frames follows the audio's duration (4k+1, rounded up)"),
    # Lists (shape [1, N]): adapters by name from the server's allow-list, each with its scale.
    TensorSpec("lora_names", "BYTES", True, "LoRA adapters to apply, by name (the server's allow-list)"),
    TensorSpec("lora_scales", "FP32", True, "one scale per adapter in lora_names (default 1.0 each)"),
    # Conditioning media, each on its task's entry models only (TASK_INPUTS). Bytes, never URLs (R7).
    TensorSpec("image", "BYTES", True, "wan_i2v: PNG, JPEG or WebP bytes, the first frame (wan_s2v: the reference)"),
    TensorSpec("last_image", "BYTES", True, "wan_i2v: the last frame, as `image` (first-last-frame checkpoints)"),
    TensorSpec("video", "BYTES", True, "wan_v2v, wan_vace: MP4, WebM or MOV bytes, the video to transform or follow"),
    TensorSpec("strength", "FP32", True, "wan_v2v: how far from the input video, in (0, 1]"),
    # VACE (wan_vace): `video` is the control or source video there, and all three are optional.
    TensorSpec("mask", "BYTES", True, "wan_vace: MP4, WebM or MOV bytes, white where `video` is to be generated"),
    TensorSpec("reference_images", "BYTES", True, "wan_vace: PNG, JPEG or WebP bytes, each a reference (a list)"),
    TensorSpec("conditioning_scale", "FP32", True, "wan_vace: weight of the control signal"),
    # Animate (wan_animate): `image` is the character there.
    TensorSpec(
        "pose_video", "BYTES", True, "wan_animate, wan_s2v: MP4, WebM or MOV bytes, the driving pose (skeleton) video"
    ),
    TensorSpec(
        "face_video", "BYTES", True, "wan_animate: MP4, WebM or MOV bytes, the driving face crops, frame by frame"
    ),
    TensorSpec("mode", "BYTES", True, "wan_animate: `animate` (the character moves; default) or `replace`"),
    TensorSpec("background_video", "BYTES", True, "wan_animate, mode replace: the video the character enters"),
    TensorSpec("mask_video", "BYTES", True, "wan_animate, mode replace: white where the character goes"),
    TensorSpec("segment_frame_length", "INT32", True, "wan_animate: frames per generated segment, 4k+1"),
    TensorSpec(
        "prev_segment_conditioning_frames",
        "INT32",
        True,
        "wan_animate: frames each segment takes from the last, 1 or 5",
    ),
)
# Step caches (pipeline/step_cache.py), each with the one parameter it takes and that parameter's default
# (diffusers' for the thresholds; an interval of 2 halves the block work). Without `cache_method`, a
# `cache_threshold` above 0 means first_block, as before the other methods existed.
CACHE_METHODS: dict[str, tuple[str, float] | None] = {
    "none": None,
    "first_block": ("cache_threshold", 0.05),
    "mag": ("cache_threshold", 0.06),  # needs the checkpoint's calibrated ratios (`wan-triton calibrate-mag`)
    "taylorseer": ("cache_interval", 2),
    # FasterCache: the self-attention runs every this many steps; it also skips the unconditional branch
    # (needs guidance, guidance_scale > 1).
    "faster": ("cache_interval", 2),
    # SeaCache: like first_block, but judges the change on the latents filtered by their noise level
    "sea": ("cache_threshold", 0.25),
    # Pyramid Attention Broadcast: each self-attention runs every this many steps in the middle ones
    "pyramid": ("cache_interval", 2),
}
GUIDED_CACHES = ("faster",)  # step caches that approximate the unconditional branch from the conditional one
MAG_RATIOS = "mag_ratios.json"  # beside a checkpoint's model_index.json: its MagCache calibration
# The tasks, the inputs only their entry models take, and the one each requires.
TEXT_TO_VIDEO, IMAGE_TO_VIDEO, VIDEO_TO_VIDEO, VACE, ANIMATE = "t2v", "i2v", "v2v", "vace", "animate"
SPEECH_TO_VIDEO = "s2v"
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    TEXT_TO_VIDEO: (),
    IMAGE_TO_VIDEO: ("image", "last_image"),
    VIDEO_TO_VIDEO: ("video", "strength"),
    VACE: ("video", "mask", "reference_images", "conditioning_scale"),
    ANIMATE: (
        "image",
        "pose_video",
        "face_video",
        "mode",
        "background_video",
        "mask_video",
        "segment_frame_length",
        "prev_segment_conditioning_frames",
    ),
    SPEECH_TO_VIDEO: ("image", "pose_video"),  # and the audio, which drives it (REQUIRED_INPUTS)
}
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    IMAGE_TO_VIDEO: ("image",),
    VIDEO_TO_VIDEO: ("video",),
    ANIMATE: ("image", "pose_video", "face_video"),
    SPEECH_TO_VIDEO: ("image", "audio"),
}
# Shared inputs a task's entries do not take. Wan2.2-S2V: 16 fps and its length from the audio (the features
# are per video frame at the rate it was trained on), one transformer of its own (no step caches or
# adapters, which are written for diffusers' Wan transformers).
EXCLUDED_INPUTS: dict[str, tuple[str, ...]] = {
    SPEECH_TO_VIDEO: (
        "fps",
        "frames_from_audio",
        "guidance_scale_2",
        "cache_method",
        "cache_threshold",
        "cache_interval",
        "lora_names",
        "lora_scales",
    ),
}
# The release's own defaults where they differ from diffusers' WanPipeline's (wan/configs/wan_s2v_14B.py).
TASK_DEFAULTS: dict[str, dict[str, object]] = {SPEECH_TO_VIDEO: {"num_inference_steps": 40, "guidance_scale": 4.5}}
ANIMATE_MODES = ("animate", "replace")
_TASK_ONLY = {name for names in TASK_INPUTS.values() for name in names}
# File bytes (the CLI reads them from paths); reference_images is a list of them.
MEDIA_INPUTS = (
    "image",
    "last_image",
    "video",
    "audio",
    "mask",
    "reference_images",
    "pose_video",
    "face_video",
    "background_video",
    "mask_video",
)
LIST_INPUTS = ("lora_names", "lora_scales", "reference_images")  # shape [1, N]; every other input is one value


def tasks_of(inputs: Mapping[str, object]) -> list[str]:
    """The tasks whose entries take every task input among `inputs` and have those they require (S2V's
    audio included), in TASK_INPUTS order: a video alone suits both V2V and VACE, an image with audio both
    I2V and S2V (the server's checkpoint decides)."""
    given = {name for name in _TASK_ONLY if inputs.get(name) is not None}
    present = {name for name, value in inputs.items() if value is not None}
    return [
        task for task, own in TASK_INPUTS.items() if given <= set(own) and set(REQUIRED_INPUTS.get(task, ())) <= present
    ]


def task_of(inputs: Mapping[str, object]) -> str:
    """The task a set of inputs asks for: the first that fits (tasks_of); T2V when none does, where
    validation names the input that fits no task."""
    return next(iter(tasks_of(inputs)), TEXT_TO_VIDEO)


def list_limit(name: str, limits: Limits) -> int:
    """How many values a list input may hold."""
    return limits.max_reference_images if name == "reference_images" else limits.max_loras


def inputs_of(task: str) -> tuple[TensorSpec, ...]:
    """The inputs of a task's entry models, in contract order."""
    own, excluded = TASK_INPUTS[task], EXCLUDED_INPUTS.get(task, ())
    return tuple(s for s in INPUTS if (s.name not in _TASK_ONLY or s.name in own) and s.name not in excluded)


OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("video", "BYTES", False, "one MP4 (H.264, yuv420p, faststart)"),
    TensorSpec("seed", "INT64", False, "the seed used"),
)
# Streaming (`wan_t2v_stream`): one response with these per denoising step, then the OUTPUTS.
PROGRESS: tuple[TensorSpec, ...] = (
    TensorSpec("step", "INT32", False, "denoising steps done so far"),
    TensorSpec("total", "INT32", False, "denoising steps in all"),
    TensorSpec("elapsed_ms", "FP32", False, "milliseconds since the denoiser started this request"),
)
# With `preview=true`: the first frame of the current latents, decoded, at most PREVIEW_SIDE pixels a side.
PREVIEW = TensorSpec("preview", "UINT8", True, "[h, w, 3] preview frame (progress responses, when asked)")
PREVIEW_SIDE = 256
INPUT_NAMES = tuple(spec.name for spec in INPUTS)


@dataclass(frozen=True)
class Limits:
    """Server-side bounds; every one is checked before any compute."""

    max_area: int = 1280 * 720  # pixels per frame
    max_side: int = 1920
    max_frames: int = 161
    max_steps: int = 100
    max_guidance: float = 20.0
    max_flow_shift: float = 20.0
    max_cache_threshold: float = 1.0
    max_cache_interval: int = 8
    max_prompt_bytes: int = 2048
    min_fps: int = 1
    max_fps: int = 60
    # Outputs as estimated before any work: the raw frames (an upper bound for the MP4), twice
    # with return_frames. The default keeps a 720p, 161-frame video with its frames under 1 GiB.
    max_output_bytes: int = 1 << 30
    # Conditioning media (R8): bytes and pixels are checked before decoding, durations before
    # decoding any frame or sample.
    max_image_bytes: int = 20 << 20
    max_video_bytes: int = 200 << 20
    max_audio_bytes: int = 50 << 20
    # All media of one request together (VACE takes a video, a mask and references; Animate four
    # videos): what the ingress in front must let through (deploy/, R29), so the two agree.
    max_request_media_bytes: int = 200 << 20
    max_media_pixels: int = 4096 * 4096  # per image or video frame, as its header declares
    max_media_seconds: float = 600.0  # input video or audio
    # What the media would decode to at their own size, from their headers, before any decoding
    # (R28): frames x width x height x 3 of the frames used; seconds x rate x channels x 4 of audio.
    # Video frames are fitted to the output size one by one, so this bounds work, not what is kept.
    max_media_decoded_bytes: int = 2 << 30
    max_loras: int = 4  # adapters per request
    max_reference_images: int = 4  # VACE references per request
    max_conditioning_scale: float = 4.0
    max_lora_scale: float = 4.0  # |scale|
    deadline_s: float = 1800.0  # a job running longer is stopped (DEADLINE_EXCEEDED)
    max_queue_size: int = 16  # requests waiting at an entry model; more are rejected at once

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Limits:
        """Read overrides (e.g. Triton config parameters); unknown keys are ignored."""
        kinds = {f.name: f.type for f in fields(cls)}
        out = {}
        for key, raw in values.items():
            if key in kinds:
                out[key] = float(raw) if kinds[key] == "float" else int(raw)
        return cls(**out)

    @classmethod
    def from_file(cls, path: str | Path) -> Limits:
        """A JSON object of overrides (`serve --limits`, a ConfigMap); an unknown key is an error."""
        values = json.loads(Path(path).read_text())
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown limits {unknown}; known: {', '.join(known)}")
        return cls.from_mapping({key: str(value) for key, value in values.items()})


@dataclass(frozen=True)
class Geometry:
    """What a checkpoint dictates about sizes, read from its configs (no torch needed)."""

    vae_spatial: int  # pixels per latent, each side
    vae_temporal: int  # frames per latent frame after the first: num_frames = 4k+1 for 4
    patch: int  # transformer patch size, each side
    face_side: int | None = None  # Wan2.2 Animate: the face video's frames are this square (motion encoder)

    @property
    def spatial_multiple(self) -> int:
        return self.vae_spatial * self.patch

    @property
    def temporal_factor(self) -> int:
        return self.vae_temporal

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> Geometry:
        root = Path(checkpoint)
        vae = json.loads((root / "vae" / "config.json").read_text())
        transformer = json.loads(_transformer_config(root).read_text())
        # Configs written by older diffusers (the published Wan2.1 ones) lack the factors.
        spatial = vae.get("scale_factor_spatial") or 2 ** (len(vae["dim_mult"]) - 1)
        temporal = vae.get("scale_factor_temporal") or 2 ** sum(vae["temperal_downsample"])
        face = transformer.get("motion_encoder_size") if transformer.get("_class_name") == ANIMATE_TRANSFORMER else None
        return cls(
            vae_spatial=int(spatial),
            vae_temporal=int(temporal),
            patch=int(transformer["patch_size"][1]),
            face_side=None if face is None else int(face),
        )


WAN21 = Geometry(vae_spatial=8, vae_temporal=4, patch=2)
ANIMATE_TRANSFORMER = "WanAnimateTransformer3DModel"
# Wan2.2-S2V ships in Wan's release layout only (wan_triton/s2v/release.py): the transformer's config.json at
# the folder's root names this class; the VAE's and T5's safetensors folders are converted beside it.
S2V_RELEASE_CLASS = "WanModel_S2V"


def is_s2v_release(root: Path) -> bool:
    config = Path(root) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == S2V_RELEASE_CLASS


def _transformer_config(root: Path) -> Path:
    return root / "config.json" if is_s2v_release(root) else root / "transformer" / "config.json"


# The diffusers pipelines whose checkpoints `Family` understands (model_index.json's `_class_name`).
# Others are refused, not served as the text-to-video model they may partly contain.
VACE_PIPELINE, ANIMATE_PIPELINE = "WanVACEPipeline", "WanAnimatePipeline"
SERVED_PIPELINES = (
    "WanPipeline",
    "WanImageToVideoPipeline",
    "WanVideoToVideoPipeline",
    VACE_PIPELINE,
    ANIMATE_PIPELINE,
)


class CheckpointError(ValueError):
    """A checkpoint this server cannot serve: the message says what it is and what is served."""


# The transformers' folders in a checkpoint: Wan2.2 A14B has a high-noise expert (`transformer`)
# and a low-noise one (`transformer_2`); every other checkpoint only the first.
EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class Family:
    """What a checkpoint can do, read from its configs (no torch needed): how it is conditioned
    on an image, and its experts."""

    concat_condition: bool  # Wan I2V (2.1, 2.2 A14B): mask + image latents join the input channels
    image_tokens: bool  # Wan2.1 I2V: CLIP image tokens join the cross-attention (image_encoder)
    expand_timesteps: bool  # Wan2.2 TI2V: the image's latents replace the first frame, timestep 0 there
    two_experts: bool = False  # Wan2.2 A14B: a low-noise expert, `transformer_2`
    # Wan2.1 FLF2V: CLIP tokens of a first and a last frame, told apart by a learnt positional
    # embedding (`pos_embed_seq_len`), so it needs both frames and others take no last one.
    last_frame: bool = False
    # VACE: control latents (video, mask, references) join the transformer's VACE blocks.
    vace: bool = False
    # Wan2.2 Animate: a character image driven by pose and face videos, segment by segment.
    animate: bool = False
    # Wan2.2-S2V: a reference image driven by speech, clip by clip (wan_triton/s2v/).
    s2v: bool = False

    @property
    def experts(self) -> tuple[str, ...]:
        """The transformers' folders, which adapters load into (lora.py)."""
        return EXPERTS if self.two_experts else EXPERTS[:1]

    @property
    def tasks(self) -> tuple[str, ...]:
        if self.vace:
            return (VACE,)
        if self.animate:
            return (ANIMATE,)
        if self.s2v:
            return (SPEECH_TO_VIDEO,)
        if self.concat_condition:
            return (IMAGE_TO_VIDEO,)
        if self.expand_timesteps:
            return (TEXT_TO_VIDEO, IMAGE_TO_VIDEO)
        return (TEXT_TO_VIDEO, VIDEO_TO_VIDEO)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path) -> Family:
        """What the checkpoint can do; CheckpointError for a pipeline not served."""
        root = Path(checkpoint)
        if is_s2v_release(root):
            for part in ("vae", "text_encoder"):
                if not (root / part / "config.json").is_file():
                    raise CheckpointError(
                        f"{root} is a Wan2.2-S2V release whose {part} is still a torch pickle: only safetensors"
                        f" load; convert it once with `wan-triton convert-release {root}`"
                    )
            return cls(concat_condition=False, image_tokens=False, expand_timesteps=False, s2v=True)
        index = json.loads((root / "model_index.json").read_text())
        pipeline = index.get("_class_name")
        if pipeline not in SERVED_PIPELINES:
            served = ", ".join(SERVED_PIPELINES)
            raise CheckpointError(f"{root} is a {pipeline} checkpoint; served are {served} checkpoints")
        transformer = json.loads((root / "transformer" / "config.json").read_text())
        vae = json.loads((root / "vae" / "config.json").read_text())
        return cls(
            concat_condition=transformer["in_channels"] != vae["z_dim"],
            image_tokens=transformer.get("image_dim") is not None and bool((index.get("image_encoder") or [None])[0]),
            expand_timesteps=bool(index.get("expand_timesteps", False)),
            two_experts=bool((index.get("transformer_2") or [None])[0]),
            last_frame=transformer.get("pos_embed_seq_len") is not None,
            vace=pipeline == VACE_PIPELINE,
            animate=pipeline == ANIMATE_PIPELINE,
        )

    def check(self, request: GenerationRequest) -> None:
        """What this checkpoint refuses of a valid request (RequestError naming the input)."""
        if self.last_frame and request.image is not None and request.last_image is None:
            raise RequestError("last_image", "is required by this first-last-frame checkpoint (Wan2.1 FLF2V)")
        if not self.last_frame and request.last_image is not None:
            raise RequestError("last_image", "this checkpoint takes no last frame; Wan2.1 FLF2V checkpoints do")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request; defaults are diffusers' WanPipeline defaults (fps: Wan's 16)."""

    prompt: str
    negative_prompt: str = ""
    height: int = 480
    width: int = 832
    num_frames: int = 81
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int = field(default_factory=lambda: secrets.randbelow(SEED_MAX + 1))
    fps: int = 16
    cache_method: str = "none"
    cache_threshold: float = 0.0  # the method's, when it has one
    cache_interval: int = 0
    return_frames: bool = False
    preview: bool = False
    audio: bytes | None = field(default=None, repr=False)
    frames_from_audio: bool = False
    image: bytes | None = field(default=None, repr=False)
    last_image: bytes | None = field(default=None, repr=False)
    video: bytes | None = field(default=None, repr=False)
    strength: float = 0.8
    mask: bytes | None = field(default=None, repr=False)
    reference_images: tuple[bytes, ...] = field(default=(), repr=False)
    conditioning_scale: float = 1.0
    pose_video: bytes | None = field(default=None, repr=False)
    face_video: bytes | None = field(default=None, repr=False)
    mode: str = "animate"
    background_video: bytes | None = field(default=None, repr=False)
    mask_video: bytes | None = field(default=None, repr=False)
    segment_frame_length: int = 77
    prev_segment_conditioning_frames: int = 1
    lora_names: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    # The inputs the client set: where it left size, frames or fps open, conditioning media
    # decide them (conditioning.py).
    given: frozenset[str] = frozenset()
    task: str = TEXT_TO_VIDEO  # the entry's, which validated it

    @property
    def output_bytes(self) -> int:
        """Bytes the answer may take, known before any work: the raw frames bound the MP4."""
        frames = self.num_frames * self.height * self.width * 3
        return frames * (2 if self.return_frames else 1)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0


DEFAULTS = GenerationRequest(prompt="", seed=0)


def _text(name: str, value: object, limits: Limits, allow_empty: bool) -> str:
    if isinstance(value, str):
        value = value.encode("utf-8", errors="surrogatepass")
    if not isinstance(value, bytes | bytearray | np.bytes_):
        raise RequestError(name, f"must be UTF-8 bytes or str, got {type(value).__name__}")
    raw = bytes(value)
    if len(raw) > limits.max_prompt_bytes:
        raise RequestError(name, f"is {len(raw)} bytes; at most {limits.max_prompt_bytes} bytes allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(name, f"is not valid UTF-8 (byte {exc.start})") from None
    if "\x00" in text:
        raise RequestError(name, "must not contain NUL characters")
    if not allow_empty and not text.strip():
        raise RequestError(name, "must not be empty or whitespace only")
    return text


def _integer(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RequestError(name, f"must be an integer, got {type(value).__name__}")
    number = int(value)
    if not low <= number <= high:
        raise RequestError(name, f"is {number}; allowed range is [{low}, {high}]")
    return number


def _real(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise RequestError(name, f"must be a number, got {type(value).__name__}")
    number = float(value)
    ok = math.isfinite(number) and (low < number if low_open else low <= number) and number <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise RequestError(name, f"is {number}; allowed range is {bracket}{low}, {high}] (finite)")
    return number


def _media(name: str, value: object, max_bytes: int) -> bytes:
    if not isinstance(value, bytes | bytearray | np.bytes_):
        raise RequestError(name, f"must be the file's bytes, got {type(value).__name__}")
    if not value:
        raise RequestError(name, "is empty")
    if len(value) > max_bytes:
        raise RequestError(name, f"is {len(value)} bytes; at most {max_bytes} allowed")
    return bytes(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise RequestError(name, f"must be a boolean, got {type(value).__name__}")
    return bool(value)


def _step_cache(raw: Mapping[str, object], limits: Limits) -> dict[str, object]:
    """`cache_method` and its one parameter; the other method's parameter is refused, not ignored."""
    threshold, interval = raw.get("cache_threshold"), raw.get("cache_interval")
    if threshold is not None:
        threshold = _real("cache_threshold", threshold, 0.0, limits.max_cache_threshold)
    if interval is not None:
        interval = _integer("cache_interval", interval, 2, limits.max_cache_interval)
    if raw.get("cache_method") is None:
        method = "first_block" if threshold else "none"
    else:
        method = _text("cache_method", raw["cache_method"], limits, allow_empty=False)
        if method not in CACHE_METHODS:
            raise RequestError("cache_method", f"is {method!r}; choose from {', '.join(CACHE_METHODS)}")
    parameter = CACHE_METHODS[method]
    for name, value in (("cache_threshold", threshold), ("cache_interval", interval)):
        if value and (parameter is None or parameter[0] != name):
            takes = f"takes {parameter[0]}" if parameter else "takes no parameter"
            raise RequestError(name, f"does not apply to cache_method {method!r}, which {takes}")
    if parameter is None:
        return {"cache_method": method}
    name, default = parameter
    given = {"cache_threshold": threshold, "cache_interval": interval}[name]
    if name == "cache_threshold" and given == 0.0:
        raise RequestError(
            name, f"is 0 with cache_method {method!r}; allowed range is (0, {limits.max_cache_threshold}]"
        )
    return {"cache_method": method, name: default if given is None else given}


def _listed(value: object) -> list:
    return list(value) if isinstance(value, list | tuple | np.ndarray) else [value]


def _loras(names: object, scales: object, limits: Limits) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if names is None:
        raise RequestError("lora_scales", "given without lora_names")
    listed = _listed(names)
    if not 1 <= len(listed) <= limits.max_loras:
        raise RequestError("lora_names", f"has {len(listed)} names; 1 to {limits.max_loras} allowed")
    texts = tuple(_text("lora_names", name, limits, allow_empty=False) for name in listed)
    if len(set(texts)) != len(texts):
        raise RequestError("lora_names", "names an adapter twice")
    if scales is None:
        return texts, (1.0,) * len(texts)
    values = _listed(scales)
    if len(values) != len(texts):
        raise RequestError("lora_scales", f"has {len(values)} values for {len(texts)} adapters; one per adapter")
    bound = limits.max_lora_scale
    return texts, tuple(_real("lora_scales", scale, -bound, bound) for scale in values)


def validate(
    raw: Mapping[str, object], geometry: Geometry = WAN21, limits: Limits | None = None, task: str = TEXT_TO_VIDEO
) -> GenerationRequest:
    """Turn raw client values (Python or numpy scalars, absent = default) into a request of `task`.

    Raises RequestError for the first violation; never changes a value to make it fit. Media
    inputs are checked for size here and decoded later (media.py), before any model runs.
    """
    limits = limits or Limits()
    defaults = TASK_DEFAULTS.get(task, {})
    names = [spec.name for spec in inputs_of(task)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise RequestError(unknown[0], f"is not an input of this task ({task}); known inputs: {', '.join(names)}")
    for required in REQUIRED_INPUTS.get(task, ()):
        if raw.get(required) is None:
            raise RequestError(required, f"is required for {task}")
    if raw.get("prompt") is None:
        raise RequestError("prompt", "is required")
    values: dict[str, object] = {"prompt": _text("prompt", raw["prompt"], limits, allow_empty=False)}
    if raw.get("negative_prompt") is not None:
        values["negative_prompt"] = _text("negative_prompt", raw["negative_prompt"], limits, allow_empty=True)

    multiple = geometry.spatial_multiple
    for side in ("height", "width"):
        value = raw.get(side, getattr(DEFAULTS, side))
        number = _integer(side, value, multiple, limits.max_side)
        if number % multiple:
            raise RequestError(
                side, f"is {number}; must be a multiple of {multiple} in [{multiple}, {limits.max_side}]"
            )
        values[side] = number
    area = values["height"] * values["width"]  # type: ignore[operator]
    if area > limits.max_area:
        raise RequestError(
            "height", f"height x width is {area} pixels; at most {limits.max_area} allowed (e.g. 720x1280)"
        )

    k = geometry.temporal_factor
    frames = _integer("num_frames", raw.get("num_frames", DEFAULTS.num_frames), 1, limits.max_frames)
    if (frames - 1) % k and task != SPEECH_TO_VIDEO:  # S2V makes whole clips and trims them
        raise RequestError(
            "num_frames", f"is {frames}; must be {k}k+1 (1, {k + 1}, {2 * k + 1}, ...) up to {limits.max_frames}"
        )
    values["num_frames"] = frames
    steps = defaults.get("num_inference_steps", DEFAULTS.num_inference_steps)
    values["num_inference_steps"] = _integer(
        "num_inference_steps", raw.get("num_inference_steps", steps), 1, limits.max_steps
    )
    guidance = defaults.get("guidance_scale", DEFAULTS.guidance_scale)
    values["guidance_scale"] = _real("guidance_scale", raw.get("guidance_scale", guidance), 0.0, limits.max_guidance)
    if raw.get("guidance_scale_2") is not None:
        values["guidance_scale_2"] = _real("guidance_scale_2", raw["guidance_scale_2"], 0.0, limits.max_guidance)
    if raw.get("flow_shift") is not None:
        values["flow_shift"] = _real("flow_shift", raw["flow_shift"], 0.0, limits.max_flow_shift, low_open=True)
    if raw.get("seed") is not None:
        values["seed"] = _integer("seed", raw["seed"], 0, SEED_MAX)
    values["fps"] = _integer("fps", raw.get("fps", DEFAULTS.fps), limits.min_fps, limits.max_fps)
    values.update(_step_cache(raw, limits))
    if values["cache_method"] in GUIDED_CACHES and values["guidance_scale"] <= 1.0:
        raise RequestError(
            "cache_method",
            f"{values['cache_method']!r} approximates the unconditional branch, which guidance_scale"
            f" {values['guidance_scale']} does not run; allowed with guidance_scale > 1",
        )
    for flag in ("return_frames", "preview", "frames_from_audio"):
        if raw.get(flag) is not None:
            values[flag] = _flag(flag, raw[flag])
    caps = {
        "image": limits.max_image_bytes,
        "last_image": limits.max_image_bytes,
        "video": limits.max_video_bytes,
        "audio": limits.max_audio_bytes,
        "mask": limits.max_video_bytes,
        "pose_video": limits.max_video_bytes,
        "face_video": limits.max_video_bytes,
        "background_video": limits.max_video_bytes,
        "mask_video": limits.max_video_bytes,
    }
    for name, cap in caps.items():
        if raw.get(name) is not None:
            values[name] = _media(name, raw[name], cap)
    if values.get("frames_from_audio") and "audio" not in values:
        raise RequestError("frames_from_audio", "needs an audio input")
    if raw.get("mask") is not None and raw.get("video") is None:
        raise RequestError("mask", "needs a video: the mask says which of its pixels to generate")
    if raw.get("reference_images") is not None:
        listed = _listed(raw["reference_images"])
        if not 1 <= len(listed) <= limits.max_reference_images:
            raise RequestError(
                "reference_images", f"has {len(listed)} images; 1 to {limits.max_reference_images} allowed"
            )
        values["reference_images"] = tuple(_media("reference_images", i, limits.max_image_bytes) for i in listed)
    sizes = {n: sum(map(len, v)) if isinstance(v, tuple) else len(v) for n, v in values.items() if n in MEDIA_INPUTS}
    if sum(sizes.values()) > limits.max_request_media_bytes:  # named by its largest input
        raise RequestError(
            max(sizes, key=sizes.__getitem__),
            f"the request's media take {sum(sizes.values())} bytes together;"
            f" at most {limits.max_request_media_bytes} allowed",
        )
    if raw.get("conditioning_scale") is not None:
        bound = limits.max_conditioning_scale
        values["conditioning_scale"] = _real("conditioning_scale", raw["conditioning_scale"], 0.0, bound)
    if task == ANIMATE:
        _animate(raw, values, limits, geometry)
    if raw.get("strength") is not None:
        values["strength"] = _real("strength", raw["strength"], 0.0, 1.0, low_open=True)
    if task == VIDEO_TO_VIDEO:  # the steps run are int(steps x strength), as in diffusers
        strength, steps = values.get("strength", DEFAULTS.strength), values["num_inference_steps"]
        if int(steps * strength) < 1:  # type: ignore[operator]
            raise RequestError("strength", f"is {strength}; with {steps} steps it must be at least {1 / steps:.4g}")
    if raw.get("lora_names") is not None or raw.get("lora_scales") is not None:
        values["lora_names"], values["lora_scales"] = _loras(raw.get("lora_names"), raw.get("lora_scales"), limits)
    values["given"] = frozenset(name for name, value in raw.items() if value is not None)
    values["task"] = task
    request = GenerationRequest(**values)  # type: ignore[arg-type]
    check_output(request, limits)
    return request


def _animate(raw: Mapping[str, object], values: dict, limits: Limits, geometry: Geometry) -> None:
    """Animate's own controls: the mode and what it needs, the segments (diffusers' rules)."""
    if raw.get("mode") is not None:
        values["mode"] = _text("mode", raw["mode"], limits, allow_empty=False)
        if values["mode"] not in ANIMATE_MODES:
            raise RequestError("mode", f"is {values['mode']!r}; one of {', '.join(ANIMATE_MODES)}")
    replace = values.get("mode") == "replace"
    for name in ("background_video", "mask_video"):
        if replace and name not in values:
            raise RequestError(name, "is required with mode replace")
        if not replace and name in values:
            raise RequestError(name, "only with mode replace (the character enters that video)")
    k = geometry.temporal_factor
    if raw.get("segment_frame_length") is not None:
        length = _integer("segment_frame_length", raw["segment_frame_length"], 1, limits.max_frames)
        if (length - 1) % k:
            raise RequestError("segment_frame_length", f"is {length}; must be {k}k+1 up to {limits.max_frames}")
        values["segment_frame_length"] = length
    if raw.get("prev_segment_conditioning_frames") is not None:
        overlap = _integer("prev_segment_conditioning_frames", raw["prev_segment_conditioning_frames"], 1, 5)
        if overlap not in (1, 5):
            raise RequestError("prev_segment_conditioning_frames", f"is {overlap}; 1 or 5 allowed")
        values["prev_segment_conditioning_frames"] = overlap
    length = values.get("segment_frame_length", DEFAULTS.segment_frame_length)
    overlap = values.get("prev_segment_conditioning_frames", DEFAULTS.prev_segment_conditioning_frames)
    if 2 * overlap >= length:  # each segment adds more new frames than it takes (else diffusers runs past the end)
        raise RequestError(
            "prev_segment_conditioning_frames", f"is {overlap}; under half of segment_frame_length ({length}) allowed"
        )


def check_output(request: GenerationRequest, limits: Limits) -> None:
    """R4: the answer's size, known before any work (again once media have settled the size)."""
    if request.output_bytes > limits.max_output_bytes:
        twice = ", twice with return_frames" if request.return_frames else ""
        raise RequestError(
            "num_frames",
            f"the output would take up to {request.output_bytes} bytes (frames x height x width x 3{twice});"
            f" at most {limits.max_output_bytes} allowed",
        )
