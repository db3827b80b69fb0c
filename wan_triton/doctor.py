"""`wan-triton doctor`: can this environment serve? Exit status 0 when every required check passes.

It imports every runtime dependency (a broken import fails, with its error), and checks what broke
before: numpy 2 under a torch built for numpy 1, a missing peft or sentencepiece, no libx264, a
`tritonserver` that does not start. With a GPU expected (`--gpu` or WAN_TRITON_EXPECT_GPU=1) CUDA,
cuDNN and ONNX Runtime's CUDA provider are required too. The image runs it at build and at start.

Only the standard library is imported at module level, so `python -m wan_triton.doctor` reports
even when numpy itself does not import.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from packaging.requirements import Requirement

EXPECT_GPU_ENV = "WAN_TRITON_EXPECT_GPU"
DISTRIBUTION = "wan-triton"
SERVER_EXTRA, EXPORT_EXTRA = "server", "export"
# Import names where they differ from the distribution's (onnxruntime-gpu also installs `onnxruntime`,
# found through the installed files instead).
IMPORT_NAMES = {"pillow": "PIL", "nvidia-pytriton": "pytriton", "pyyaml": "yaml"}
# What the Triton models import, and the classes they resolve lazily: a dependency can import while
# the code that uses it does not (diffusers' lazy modules fail only when a class is looked up).
SERVING_MODULES = (
    "wan_triton.serving.text_encoder",
    "wan_triton.serving.denoiser",
    "wan_triton.serving.vae",
    "wan_triton.serving.image_encoder",
    "wan_triton.serving.audio_encoder",
    "wan_triton.serving.video_encoder",
    "wan_triton.serving.entry",
    "wan_triton.pipeline",
    "wan_triton.onnx_runtime",
    "wan_triton.media",
    "wan_triton.lora",
    "wan_triton.serving.configs",  # `serve` renders the configs with tritonclient's protobuf classes
)
LAZY_CLASSES = {
    "diffusers": ("WanPipeline", "WanImageToVideoPipeline", "WanTransformer3DModel", "AutoencoderKLWan"),
    "diffusers.hooks": ("FirstBlockCacheConfig",),
    "transformers": ("AutoTokenizer", "UMT5EncoderModel", "CLIPVisionModel", "CLIPImageProcessor"),
}
EXPORT_MODULES = ("wan_triton.export.to_onnx",)
NGC_BACKENDS = Path("/opt/tritonserver/backends")  # tritonserver's default --backend-directory

Status = Literal["ok", "info", "warn", "fail"]


class Problem(Exception):
    """What a check found wrong, and how to fix it; `status` overrides the check's severity."""

    def __init__(self, detail: str, hint: str = "", status: Status | None = None) -> None:
        super().__init__(detail)
        self.detail, self.hint, self.status = detail, hint, status


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[], str]  # returns the detail when fine; raises when not
    on_failure: Status = "fail"  # "fail": required; "warn" or "info": optional
    hint: str = ""


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    detail: str
    hint: str = ""
    required: bool = True


def first_line(exc: BaseException) -> str:
    """The root cause in one line: lazy importers (diffusers, transformers) wrap the real error in
    "Failed to import X because of the following error (look up to see its traceback):"."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return f"{type(exc).__name__}: {text}"


def raising(exc: Exception) -> Callable[[], str]:
    """A check that fails with what went wrong while building the table."""

    def run() -> str:
        raise exc

    return run


def evaluate(check: Check) -> Result:
    required = check.on_failure == "fail"
    try:
        return Result(check.name, "ok", check.run(), required=required)
    except Problem as problem:
        status = problem.status or check.on_failure
        return Result(check.name, status, problem.detail, problem.hint or check.hint, required)
    except Exception as exc:  # a broken install raises anything: ImportError, OSError for a .so, AttributeError...
        return Result(check.name, check.on_failure, first_line(exc), check.hint, required)


# -- what wan-triton declares ------------------------------------------------------------------------


def source_pyproject() -> Path | None:
    """pyproject.toml when running from a checkout (an editable install's metadata goes stale when it changes)."""
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata only
        return None
    if not path.is_file() or tomllib.loads(path.read_text()).get("project", {}).get("name") != DISTRIBUTION:
        return None
    return path


def pyproject_requirements(path: Path) -> list[str]:
    """The project's requirements in the installed metadata's form (extras as `extra == "x"` markers)."""
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads(path.read_text())["project"]
    lines = list(project.get("dependencies", []))
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for text in requirements:
            requirement = Requirement(text)
            bare = str(requirement).split(";")[0].strip()
            marker = f"({requirement.marker}) and " if requirement.marker else ""
            lines.append(f'{bare}; {marker}extra == "{extra}"')
    return lines


@cache
def declared() -> tuple[list[str], str]:
    """wan-triton's requirements and where they were read."""
    path = source_pyproject()
    if path is not None:
        return pyproject_requirements(path), str(path)
    return metadata.requires(DISTRIBUTION) or [], "installed metadata"


def requirements_of(lines: Sequence[str], extra: str) -> dict[str, Requirement]:
    """What `pip install 'wan-triton[extra]'` installs directly on this platform: name -> Requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name != DISTRIBUTION and (requirement.marker is None or requirement.marker.evaluate({"extra": extra})):
            found[name] = requirement
    return found


def optional_packages() -> dict[str, tuple[Status, str]]:
    """Requirements the code works without: the status when absent, and why."""
    found: dict[str, tuple[Status, str]] = {"decord": ("warn", "media.py decodes video with PyAV without it")}
    if shutil.which("tritonserver"):  # NGC's container: its server is used, the wheel's is not needed
        found["nvidia-pytriton"] = ("info", "the tritonserver on PATH is used")
    return found


def extra_hint(extra: str) -> str:
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def install_hint(requirement: Requirement) -> str:
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    return f"pip install '{requirement.name}{extras}{requirement.specifier}'"


# -- checks --------------------------------------------------------------------------------------------


def python_version() -> str:
    return f"{platform.python_version()} {sys.executable}"


def wan_triton_install() -> str:
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise Problem("not installed: the Triton models import wan_triton", "pip install -e . (or the wheel)") from None
    lines, source = declared()
    if source == "installed metadata":
        return version
    installed = metadata.requires(DISTRIBUTION) or []

    def pinned(source: Sequence[str], extra: str) -> set[str]:
        return {f"{name}{requirement.specifier}" for name, requirement in requirements_of(source, extra).items()}

    stale = sorted(
        set().union(*(pinned(lines, extra) - pinned(installed, extra) for extra in ("", SERVER_EXTRA, EXPORT_EXTRA)))
    )
    if stale:
        raise Problem(
            f"{version}; installed metadata predates pyproject.toml (differs in {', '.join(stale)})",
            "reinstall: pip install -e '.[dev]'",
            status="warn",
        )
    return f"{version} ({Path(source).parent})"


@cache
def module_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def package(requirement: Requirement) -> Callable[[], str]:
    """Import the requirement's module and compare the installed version with the declared range."""
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    name = canonicalize_name(requirement.name)
    module_name = IMPORT_NAMES.get(name, name.replace("-", "_"))

    def run() -> str:
        module = importlib.import_module(module_name)
        owners = sorted({canonicalize_name(owner) for owner in module_owners().get(module_name, [])})
        if len(owners) > 1:  # e.g. onnxruntime and onnxruntime-gpu: each overwrites the other's files
            raise Problem(
                f"{', '.join(owners)} all install `{module_name}`",
                f"pip uninstall -y {' '.join(owners)}, then install one",
            )
        owner = owners[0] if owners else name
        try:
            version = metadata.version(owner)
        except metadata.PackageNotFoundError:  # installed without metadata (a system or container package)
            version = str(getattr(module, "__version__", "unknown"))
        try:
            parsed = Version(version)
        except InvalidVersion:
            return f"{version} (not comparable with {requirement.specifier})"
        if not requirement.specifier.contains(parsed, prereleases=True):
            raise Problem(f"{version} installed, {requirement.specifier} required")
        return version if owner == name else f"{version} ({owner})"

    return run


def numpy_torch(hint: str) -> Check:
    """A torch built against numpy 1 imports under numpy 2 but cannot exchange arrays with it."""

    def run() -> str:
        import numpy as np
        import torch

        values = np.arange(4, dtype=np.float32)
        doubled = torch.from_numpy(values).mul(2).numpy()
        if not np.array_equal(doubled, values * 2) or torch.tensor([1.5]).numpy().tolist() != [1.5]:
            raise Problem("arrays change between numpy and torch")
        return f"numpy {np.__version__} <-> torch {torch.__version__}"

    return Check("numpy/torch", run, hint=hint)


def serving_code(modules: Sequence[str], classes: dict[str, Sequence[str]]) -> Callable[[], str]:
    def run() -> str:
        for name in modules:
            importlib.import_module(name)
        for module, names in classes.items():
            for attribute in names:
                getattr(importlib.import_module(module), attribute)
        if classes:
            from diffusers.utils import USE_PEFT_BACKEND

            if not USE_PEFT_BACKEND:  # LoRA per request loads adapters through it
                raise Problem("diffusers' PEFT backend is off (peft or transformers too old)")
        return f"modules: {len(modules)}, classes: {sum(map(len, classes.values()))}"

    return run


def mp4_encode() -> str:
    """Encode and decode a tiny MP4 with the project's own settings (libx264 options, AAC audio)."""
    import av
    import numpy as np

    from wan_triton.video import decode_mp4, encode_mp4

    frames = np.zeros((2, 16, 16, 3), np.uint8)
    data = encode_mp4(frames, 16, np.zeros(2000, np.float32), 16000)
    decoded, _ = decode_mp4(data)
    if decoded.shape != frames.shape:
        raise Problem(f"decoded {decoded.shape}, encoded {frames.shape}")
    with av.open(io.BytesIO(data)) as container:
        codecs = [stream.codec_context.name for stream in container.streams]
    x264 = re.search(rb"x264 - core (\d+)", data)
    encoder = f" (x264 core {x264.group(1).decode()})" if x264 else ""
    return f"{' + '.join(codecs)}{encoder}, PyAV {av.__version__}, FFmpeg {getattr(av, 'ffmpeg_version_info', '?')}"


def media_decode() -> str:
    """Decoders for every input format the contract accepts (media.py's allow-lists)."""
    import av
    import soundfile

    from wan_triton.media import OGG_CODECS, SOUNDFILE_FORMATS, VIDEO_CODECS

    absent = []
    for codec in VIDEO_CODECS:
        try:
            av.codec.Codec(codec, "r")
        except Exception:  # PyAV's UnknownCodecError
            absent.append(codec)
    absent += sorted(set(SOUNDFILE_FORMATS.values()) - set(soundfile.available_formats()))
    absent += [codec for codec in OGG_CODECS if codec not in soundfile.available_subtypes("OGG")]
    if absent:
        raise Problem(f"cannot decode {', '.join(absent)} (libsndfile {soundfile.__libsndfile_version__})")
    return f"video {' '.join(VIDEO_CODECS)}; audio {' '.join(sorted(set(SOUNDFILE_FORMATS.values())))}"


def cuda() -> str:
    import torch

    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise Problem(f"torch {torch.__version__} is a CPU build", "install a CUDA build of torch")
        raise Problem(
            f"no GPU visible (torch built for CUDA {torch.version.cuda})", "check nvidia-smi; docker run --gpus all"
        )
    (torch.ones(2, device="cuda") + 1).sum().item()  # a kernel runs: this torch was built for this GPU
    names = sorted({torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())})
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.device_count()}x {', '.join(names)} (sm_{major}{minor}), CUDA {torch.version.cuda}"


def cudnn() -> str:
    import torch

    if not torch.cuda.is_available():
        raise Problem("no CUDA")
    version = torch.backends.cudnn.version()
    if not torch.backends.cudnn.is_available() or version is None:
        raise Problem("torch finds no cuDNN", "install the nvidia-cudnn wheel of torch's CUDA (cu12 or cu13)")
    scale = 10000 if version >= 90000 else 1000  # cuDNN 9 encodes major * 10000, earlier ones major * 1000
    return f"{version // scale}.{version % scale // 100}.{version % 100}"


def onnx_session_providers(wanted: Sequence[str]) -> list[str]:
    """The providers a one-node session really got: ONNX Runtime falls back to the CPU (logging an error)
    when a listed provider's libraries (cuDNN, CUDA) do not load."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "doctor", tensor[:1], tensor[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=list(wanted)).get_providers()


def onnxruntime_providers(expect_gpu: bool) -> Callable[[], str]:
    cuda_provider = "CUDAExecutionProvider"

    def run() -> str:
        import onnxruntime as ort

        available = ort.get_available_providers()
        shown = ", ".join(name.removesuffix("ExecutionProvider") for name in available)
        if not expect_gpu:
            return shown
        if cuda_provider not in available:
            raise Problem(f"no CUDA provider ({shown})", "install onnxruntime-gpu in place of onnxruntime (never both)")
        try:
            opened = onnx_session_providers([cuda_provider, "CPUExecutionProvider"])
        except ImportError:
            return f"{shown} (no session tried: onnx is not installed)"
        if cuda_provider not in opened:
            raise Problem(
                f"{shown}, but a session falls back to {', '.join(opened)}",
                "ONNX Runtime's CUDA libraries do not load (cuDNN, CUDA version)",
            )
        return f"{shown} (a CUDA session opens)"

    return run


def nvenc() -> str:
    """Informational only: the project encodes with libx264, and data-centre Hopper GPUs (H100, H200) have
    no NVENC. It opens only on a GPU with encoders whose driver exposes the video capability."""
    from fractions import Fraction

    import av

    context = av.CodecContext.create("h264_nvenc", "w")
    context.width, context.height, context.pix_fmt, context.time_base = 256, 256, "yuv420p", Fraction(1, 16)
    try:
        context.open()
    except Exception as exc:
        raise Problem(f"h264_nvenc does not open: {getattr(exc, 'strerror', None) or first_line(exc)}") from exc
    return "h264_nvenc opens"


def tritonserver() -> str:
    """The binary `serve` would start: it must run (its libraries load) and have a Python backend."""
    from wan_triton.serving.server import find_tritonserver

    binary = find_tritonserver()
    python = (binary.backend_directory or NGC_BACKENDS) / "python"
    if not (python / "libtriton_python.so").is_file() or not (python / "triton_python_backend_stub").is_file():
        raise Problem(f"no Python backend in {python}")
    # With a missing repository it prints its options table (version included) and exits at once.
    with tempfile.TemporaryDirectory() as folder:
        command = [str(binary.path), f"--model-repository={Path(folder) / 'none'}", "--allow-http=false"]
        command += ["--allow-grpc=false", "--allow-metrics=false"]
        if binary.backend_directory is not None:
            command.append(f"--backend-directory={binary.backend_directory}")
        env = {**os.environ, **binary.env}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    version = re.search(r"server_version\s*\|\s*(\S+)", done.stdout + done.stderr)
    if version is None:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Problem(f"{binary.path} does not start: {lines[-1] if lines else f'exit {done.returncode}'}")
    origin = "nvidia-pytriton" if binary.backend_directory is not None else "PATH"
    return f"{version.group(1)} {binary.path} ({origin})"


# -- the table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    gpu: bool = False  # CUDA, cuDNN and ONNX Runtime's CUDA provider required
    export: bool = False  # the export extra's packages required (`serve` exports stale parts at start)


def checks(mode: Mode) -> list[Check]:
    table = [Check("python", python_version), Check("wan-triton", wan_triton_install)]
    try:
        lines, _ = declared()
        serving = requirements_of(lines, SERVER_EXTRA)
        extras = requirements_of(lines, EXPORT_EXTRA) if mode.export else {}
    except ImportError as exc:  # packaging reads them (transformers, peft, accelerate all need it too)
        table.append(Check("packaging", raising(exc)))
        serving, extras = {}, {}
    optional = optional_packages()
    for name, requirement in [*serving.items(), *((n, r) for n, r in extras.items() if n not in serving)]:
        on_failure, why = optional.get(name, ("fail", ""))
        hint = install_hint(requirement) + (f" ({why})" if why else "")
        table.append(Check(name, package(requirement), on_failure, hint))
    numpy = serving.get("numpy")
    table += [
        numpy_torch(install_hint(numpy) if numpy else "install the numpy this torch was built against"),
        Check("serving code", serving_code(SERVING_MODULES, LAZY_CLASSES), hint=extra_hint(SERVER_EXTRA)),
    ]
    if mode.export:
        table.append(Check("export code", serving_code(EXPORT_MODULES, {}), hint=extra_hint(EXPORT_EXTRA)))
    gpu: Status = "fail" if mode.gpu else "info"
    table += [
        Check("mp4 encode", mp4_encode, hint="PyAV's wheels bundle FFmpeg with libx264: reinstall av"),
        Check("media decode", media_decode, hint="the av and soundfile wheels bundle FFmpeg and libsndfile: reinstall"),
        Check("cuda", cuda, gpu),
        Check("cudnn", cudnn, gpu),
        Check("onnxruntime providers", onnxruntime_providers(mode.gpu), gpu),
        Check("nvenc", nvenc, "info"),
        Check("tritonserver", tritonserver, hint="use NGC's tritonserver image, or pip install nvidia-pytriton"),
    ]
    return table


def report(results: Sequence[Result]) -> str:
    width = max(len(result.name) for result in results)
    lines = [f"{'check':<{width}}  status  detail"]
    lines += [f"{result.name:<{width}}  {result.status:<6}  {result.detail}" for result in results]
    hinted = [result for result in results if result.status in ("warn", "fail") and result.hint]
    if hinted:
        lines += ["", "hints:", *(f"  {result.name:<{width}}  {result.hint}" for result in hinted)]
    missing = [result.name for result in results if result.status == "fail"]
    lines.append(f"missing: {', '.join(missing)}" if missing else "every required check passed")
    return "\n".join(lines)


def expect_gpu(args: argparse.Namespace, environ: dict[str, str] | os._Environ = os.environ) -> bool:
    if args.build:  # the image build has no GPU, whatever the image's environment says about its nodes
        return False
    return args.gpu or environ.get(EXPECT_GPU_ENV, "").strip().lower() in ("1", "true", "yes")


def run(args: argparse.Namespace) -> int:
    mode = Mode(gpu=expect_gpu(args), export=args.export)
    results = [evaluate(check) for check in checks(mode)]
    missing = [result.name for result in results if result.status == "fail"]
    if args.json:
        rows = [asdict(result) for result in results]
        print(json.dumps({"ok": not missing, **asdict(mode), "missing": missing, "checks": rows}))
    else:
        print(report(results))
    return 1 if missing else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    gpu_help = f"require CUDA, cuDNN and ONNX Runtime's CUDA provider (also {EXPECT_GPU_ENV}=1)"
    target.add_argument("--gpu", action="store_true", help=gpu_help)
    target.add_argument("--build", action="store_true", help=f"image build: no GPU required, {EXPECT_GPU_ENV} ignored")
    parser.add_argument("--export", action="store_true", help="also require the export extra (onnx, onnxscript)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wan-triton doctor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
