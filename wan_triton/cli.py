"""`wan-triton`: the one command line. Heavy imports happen inside each subcommand."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _tiny_checkpoint(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.shape:
        from wan_triton.checkpoints.shapes import SHAPES, write_shape

        path = write_shape(args.out, args.shape)
        print(f"wrote the configs of {SHAPES[args.shape].repository} (no weights) to {path}")
        return 0
    from wan_triton.checkpoints.tiny import build_checkpoint

    path = build_checkpoint(args.out, args.variant, args.size, args.seed)
    print(f"wrote {args.variant} ({args.size}, seed {args.seed}) to {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _train_tiny(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from wan_triton.checkpoints.recipe import Recipe
    from wan_triton.checkpoints.train import MANIFEST, finetune_decoder, prompt_accuracy, train_tiny, vae_psnr

    fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.decoder_only:
        manifest = finetune_decoder(args.out, recipe.decoder_steps)
    else:
        manifest = train_tiny(args.out, recipe, vae_from=args.vae_from)
    if args.evaluate:
        manifest["vae_psnr_db"] = round(vae_psnr(args.out), 2)
        manifest["prompt_accuracy"] = prompt_accuracy(args.out, seeds=args.evaluate)
        (Path(args.out) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from wan_triton.contract import Limits
    from wan_triton.plan import make_plan, parse_bytes

    limits = Limits.from_file(args.limits) if args.limits else None
    from wan_triton.parallel import Parallel, ParallelError

    try:
        parallel = Parallel.parse(args.parallel)
    except ParallelError as exc:
        print(f"wan-triton plan: {exc}", file=sys.stderr)
        return 2
    plan = make_plan(args.checkpoint, args.gpus, parse_bytes(args.gpu_memory), limits, parallel)
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.table())
    return 0 if plan.fits else 1


def _export(args: argparse.Namespace) -> int:
    from wan_triton.export import ExportError, export

    try:
        parts = args.parts.split(",") if args.parts else None
        export(args.checkpoint, args.repository, parts, args.force)
    except (ExportError, FileNotFoundError, ValueError) as exc:
        print(f"wan-triton export: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import signal
    import threading

    from wan_triton.acceleration import Acceleration, AccelerationError
    from wan_triton.checkpoints import gguf
    from wan_triton.contract import CheckpointError, Limits
    from wan_triton.parallel import Parallel, ParallelError
    from wan_triton.plan import PlanError
    from wan_triton.serving.server import (
        BACKEND_CACHE,
        Ports,
        TritonServer,
        default_repository,
        prepare,
        served_checkpoint,
    )
    from wan_triton.serving.settings import ServeSettings, SettingsError

    limits = Limits.from_file(args.limits) if args.limits else None
    given = set(json.loads(Path(args.limits).read_text())) if args.limits else set()
    if args.repository is None:
        args.repository = default_repository(args.checkpoint)
        print(f"wan-triton serve: model repository {args.repository}", file=sys.stderr)
    try:
        from wan_triton.contract import Family

        family = Family.from_checkpoint(served_checkpoint(args.checkpoint))  # before anything is built
        settings = ServeSettings(
            parallel=Parallel.parse(args.parallel),
            acceleration=Acceleration(args.compile, args.quantize),
            gguf=gguf.for_checkpoint(args.gguf, family.experts) if args.gguf else {},
            loras=Path(args.loras) if args.loras else None,
            lora_cache=args.lora_cache,
            fuse_loras=args.fuse_lora,
            tensorrt_cache=BACKEND_CACHE / "tensorrt" if args.tensorrt else None,  # engines depend on the GPU
            ort_gpu_memory=args.ort_gpu_memory,
        )
        settings.check(family)
        allow_list = settings.allow_list()
        checkpoint = prepare(
            args.repository,
            args.checkpoint,
            limits=limits,
            denoiser_batch=args.denoiser_batch,
            verify=args.verify,
            deadline_given="deadline_s" in given,
            parallel=settings.parallel,
            acceleration=settings.acceleration,
            allow_list=allow_list,
        )
    except PlanError as exc:
        print(f"wan-triton serve: the checkpoint does not fit this machine's GPUs:\n{exc}", file=sys.stderr)
        return 2
    except (ParallelError, CheckpointError, AccelerationError, gguf.GGUFError, SettingsError) as exc:
        print(f"wan-triton serve: {exc}", file=sys.stderr)
        return 2
    ports = Ports(args.grpc_port, args.http_port, args.metrics_port)
    settings = dataclasses.replace(settings, checkpoint=checkpoint)
    if allow_list is not None:
        for name, problem in allow_list.problems(family.experts).items():  # kept in the list, refused when asked for
            print(f"wan-triton serve: adapter {name!r} cannot load: {problem}", file=sys.stderr)
    server = TritonServer(
        args.repository,
        ports,
        settings=settings,
        log=args.log,
        watchdog_grace_s=args.watchdog_grace_s,
        drain_s=args.drain_s,
    )

    # SIGTERM/SIGINT: drain (running jobs finish, new ones are refused with UNAVAILABLE), then
    # tritonserver unloads every model (stopping their stubs) and exits. While it is loading, or
    # on a second signal, the signal goes straight on to tritonserver.
    stopping = threading.Event()

    def on_signal(number: int, _frame) -> None:
        if server.process is not None and (stopping.is_set() or not server.ready()):
            server.process.send_signal(number)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    def say(message: str) -> None:
        print(f"wan-triton serve: {message}", file=sys.stderr, flush=True)

    api = None
    try:
        server.start()
        print(f"ready: gRPC {server.grpc_url}, HTTP :{ports.http}, metrics :{ports.metrics} ({checkpoint})", flush=True)
        if args.api_port:
            api = _start_api(server.grpc_url, args)
        return server.supervise(stopping, say) or 0
    except (RuntimeError, TimeoutError) as exc:  # it exited or never got ready: signalled, a model failed to load
        say(str(exc))
        return 1
    finally:
        if api is not None:  # after the drain: the API's running jobs have finished on Triton
            api.terminate()
            api.wait(30)
        server.close()


def _start_api(triton: str, args: argparse.Namespace):
    """`wan-triton api` beside tritonserver (serve --api-port): its own process, so that a slow HTTP
    client never holds the supervisor; ended when serve ends."""
    import subprocess

    command = [sys.executable, "-m", "wan_triton.cli", "api", "--triton", triton, "--port", str(args.api_port)]
    for name, flag in {"api_host": "--host", "api_keys": "--api-keys", "api_data_dir": "--data-dir"}.items():
        if getattr(args, name) is not None:
            command += [flag, str(getattr(args, name))]
    process = subprocess.Popen(command)
    print(f"ready: OpenAI Videos API and playground on :{args.api_port}", flush=True)
    return process


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from wan_triton.api.app import Settings, create_app, read_keys

    keys = read_keys(args.api_keys) if args.api_keys else ()
    host = args.host or ("0.0.0.0" if keys else "127.0.0.1")  # no keys: reachable from this machine only
    if not keys and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"wan-triton api: no --api-keys: anyone who reaches {host}:{args.port} can use it", file=sys.stderr)
    settings = Settings(args.triton, args.data_dir, keys, args.workers, args.max_queued, args.keep)
    print(f"wan-triton api: http://{host}:{args.port} in front of Triton at {args.triton}", file=sys.stderr)
    uvicorn.run(create_app(settings), host=host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from wan_triton.contract import INPUTS, MEDIA_INPUTS, RequestError

    raw = {spec.name: getattr(args, spec.name) for spec in INPUTS if getattr(args, spec.name, None) is not None}
    if getattr(args, "lora", None):
        from wan_triton.lora import parse_adapters

        raw["lora_names"], raw["lora_scales"] = parse_adapters(",".join(args.lora))
    for name in MEDIA_INPUTS:  # files: sent as their bytes, never as paths or URLs (R7)
        if isinstance(raw.get(name), list):  # reference_images
            raw[name] = [Path(path).read_bytes() for path in raw[name]]
        elif name in raw:
            raw[name] = Path(raw[name]).read_bytes()
    started = time.perf_counter()
    try:
        if args.checkpoint:
            from wan_triton.admission import Served, admit
            from wan_triton.contract import task_of, tasks_of

            # refused as a server refuses it, before any weight loads (adapters run on a server: serve --loras)
            served = Served.of_checkpoint(args.checkpoint)
            # a video alone: V2V or VACE, as the checkpoint serves
            task = next((t for t in tasks_of(raw) if t in served.family.tasks), task_of(raw))
            request, media = admit(raw, task, served)
            from wan_triton.pipeline import Pipeline
            from wan_triton.pipeline.denoise import DTYPES, default_device, default_dtype

            device = args.device or default_device()
            dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
            pipeline = Pipeline.from_checkpoint(args.checkpoint, args.onnx_repository, device, dtype)
            video, seed = pipeline.video(request, media), request.seed
        else:
            from wan_triton.client import Client, ClientError

            try:
                client = Client(args.url, timeout_s=args.timeout)
                if args.wait:
                    client.wait_ready(args.wait)
                result = client.generate(**raw) if args.no_stream else _stream(client, raw)
            except KeyboardInterrupt:
                print("wan-triton generate: cancelled", file=sys.stderr)  # the stream was cancelled on the server
                return 130
            except ClientError as exc:
                print(f"wan-triton generate: {exc.status}: {exc}", file=sys.stderr)
                return 2 if exc.status == "INVALID_ARGUMENT" else 1
            video, seed = result.video, result.seed
    except RequestError as exc:
        print(f"wan-triton generate: {exc}", file=sys.stderr)
        return 2
    Path(args.output).write_bytes(video)
    print(f"wrote {args.output} ({len(video)} bytes, seed {seed}) in {time.perf_counter() - started:.1f} s")
    if args.contact_sheet:
        from wan_triton.client.sheet import contact_sheet

        contact_sheet(video, args.contact_sheet)
        print(f"wrote {args.contact_sheet}")
    return 0


def _stream(client, raw: dict):
    """Generate through the streaming entry with a progress bar (steps and ETA)."""
    from tqdm import tqdm

    with tqdm(unit="step", desc="denoising", file=sys.stderr) as bar:

        def show(progress) -> None:
            bar.total = progress.total
            bar.update(progress.step - bar.n)

        return client.generate_stream(on_progress=show, **raw)


def _calibrate_mag(args: argparse.Namespace) -> int:
    from wan_triton.contract import GenerationRequest
    from wan_triton.pipeline import Pipeline
    from wan_triton.pipeline.denoise import default_device
    from wan_triton.pipeline.step_cache import calibrate_mag_ratios, write_mag_ratios

    started = time.perf_counter()
    pipeline = Pipeline.from_checkpoint(args.checkpoint, device=args.device or default_device())
    request = GenerationRequest(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        num_inference_steps=args.num_inference_steps,
        seed=0,
    )
    steps = request.num_inference_steps
    ratios = calibrate_mag_ratios(lambda: pipeline.frames(request), pipeline.denoiser.transformers(), steps)
    path = write_mag_ratios(args.checkpoint, ratios, request)
    print(f"wrote {len(ratios)} ratios to {path} in {time.perf_counter() - started:.1f} s")
    return 0


def _gguf(args: argparse.Namespace) -> int:
    from wan_triton.checkpoints import gguf

    try:
        counts = gguf.write(Path(args.checkpoint) / args.expert, args.out, args.type)
    except gguf.GGUFError as exc:
        print(f"wan-triton gguf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: " + ", ".join(f"{n} tensors {kind}" for kind, n in counts.items()))
    return 0


def _convert_release(args: argparse.Namespace) -> int:
    from wan_triton.s2v import release

    if not release.is_release(args.release):
        print(f"wan-triton convert-release: {args.release} is not a Wan2.2-S2V release folder", file=sys.stderr)
        return 2
    try:
        written = release.convert_pickles(args.release)
    except release.ReleaseError as exc:
        print(f"wan-triton convert-release: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(path) for path in written) if written else "nothing to convert: done before")
    return 0


def add_contract_options(command: argparse.ArgumentParser) -> None:
    """One option per contract input, named and typed by the contract itself."""
    from wan_triton.contract import DEFAULTS, INPUTS, LIST_INPUTS, MEDIA_INPUTS

    kinds = {"BYTES": str, "INT32": int, "INT64": int, "FP32": float}
    command.add_argument("prompt", help="what the video shows")
    for spec in INPUTS[1:]:
        if spec.name in MEDIA_INPUTS:
            flag, doc = f"--{spec.name.replace('_', '-')}", spec.doc.replace("bytes", "file")
            listed = {"nargs": "+"} if spec.name in LIST_INPUTS else {}
            command.add_argument(flag, dest=spec.name, type=Path, metavar="FILE", help=doc, **listed)
            continue
        if spec.name == "lora_names":
            command.add_argument("--lora", action="append", metavar="NAME[:SCALE]", help=f"{spec.doc}; repeatable")
            continue
        if spec.name == "lora_scales":
            continue
        if spec.name == "frames_from_audio":
            command.add_argument("--frames-from-audio", action="store_true", default=None, help=spec.doc)
            continue
        if spec.dtype not in kinds:  # return_frames, preview: the CLI writes MP4s
            continue
        default = getattr(DEFAULTS, spec.name, None) if spec.name != "seed" else None
        hint = f"{spec.doc} (default: {default})" if default not in (None, "") else spec.doc
        command.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, type=kinds[spec.dtype], help=hint)


def add_api_arguments(command: argparse.ArgumentParser) -> None:
    from wan_triton.api.jobs import DEFAULT_DATA_DIR

    command.add_argument("--triton", default="127.0.0.1:8001", help="Triton's gRPC address (default %(default)s)")
    command.add_argument("--port", type=int, default=8080, help="HTTP port (default %(default)s)")
    command.add_argument(
        "--host", help="address to bind (default: 0.0.0.0 with --api-keys, else 127.0.0.1: this machine only)"
    )
    command.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="job records and videos (default %(default)s)"
    )
    command.add_argument("--api-keys", type=Path, help="file of API keys, one per line: callers need one (Bearer)")
    command.add_argument("--workers", type=int, default=2, help="jobs sent to Triton at once (default %(default)s)")
    command.add_argument(
        "--max-queued", type=int, default=32, help="jobs waiting beyond these are refused, 429 (default %(default)s)"
    )
    command.add_argument(
        "--keep", type=int, default=200, help="finished jobs kept with their videos; older go (default %(default)s)"
    )


def _recipe_defaults() -> dict:
    import dataclasses

    from wan_triton.checkpoints.recipe import Recipe

    return {f.name: f.default for f in dataclasses.fields(Recipe)}


def parser() -> argparse.ArgumentParser:
    from wan_triton.acceleration import QUANTIZE
    from wan_triton.checkpoints import SIZES, VARIANTS
    from wan_triton.checkpoints.shapes import SHAPES
    from wan_triton.repository import ONNX_FILES
    from wan_triton.serving.server import DRAIN_TIMEOUT_S
    from wan_triton.serving.supervisor import WATCHDOG_GRACE_S

    top = argparse.ArgumentParser(prog="wan-triton", description="Serve Wan video diffusion models on Triton.")
    commands = top.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser(
        "tiny-checkpoint", help="write a random Wan checkpoint in diffusers format (S2V: the release's layout)"
    )
    tiny.add_argument("--out", required=True, help="folder to write")
    tiny.add_argument("--variant", default="t2v-2.1", choices=sorted(VARIANTS))
    tiny.add_argument("--size", default="tiny", choices=sorted(SIZES))
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--shape", choices=sorted(SHAPES), help="configs only, of this published checkpoint (no weights)")
    tiny.set_defaults(run=_tiny_checkpoint)

    train = commands.add_parser(
        "train-tiny", help="train a small Wan2.1 T2V checkpoint on synthetic captioned shapes, on this CPU"
    )
    train.add_argument("--out", required=True, help="folder to write (diffusers format, plus training.json)")
    for name, default in sorted(_recipe_defaults().items()):
        train.add_argument(f"--{name.replace('_', '-')}", type=type(default), help=f"default {default}")
    train.add_argument(
        "--evaluate",
        type=int,
        default=0,
        metavar="SEEDS",
        help="then measure: VAE PSNR, prompts shown in 32 x SEEDS videos",
    )
    train.add_argument(
        "--decoder-only",
        action="store_true",
        help="only the decoder stage (--decoder-steps), on the checkpoint already in --out",
    )
    train.add_argument("--vae-from", type=Path, help="reuse the VAE an earlier run of this recipe trained first")
    train.set_defaults(run=_train_tiny)

    calibrate = commands.add_parser(
        "calibrate-mag",
        help="measure a checkpoint's MagCache ratios (diffusers' calibration, one generation) and write them"
        " beside it, where serve finds them for cache_method mag",
    )
    calibrate.add_argument("--checkpoint", required=True, help="diffusers-format Wan checkpoint (written into)")
    calibrate.add_argument("prompt", help="what the calibrating video shows: one typical of the traffic")
    from wan_triton.contract import DEFAULTS

    for name in ("height", "width", "num_frames", "num_inference_steps"):
        calibrate.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(DEFAULTS, name))
    calibrate.add_argument("--device", help="torch device (default: cuda when there is one, else cpu)")
    calibrate.set_defaults(run=_calibrate_mag)

    from wan_triton.checkpoints.gguf import QUANT_TYPES
    from wan_triton.contract import EXPERTS

    to_gguf = commands.add_parser(
        "gguf", help="write a checkpoint's transformer as a GGUF file (Wan's original names, block-quantized)"
    )
    to_gguf.add_argument("--checkpoint", required=True, help="diffusers-format Wan checkpoint")
    to_gguf.add_argument("--expert", default="transformer", choices=EXPERTS, help="which transformer (%(default)s)")
    to_gguf.add_argument("--type", default="Q8_0", choices=QUANT_TYPES, help="quantization (%(default)s)")
    to_gguf.add_argument("--out", required=True, type=Path, help="file to write")
    to_gguf.set_defaults(run=_gguf)

    convert = commands.add_parser(
        "convert-release",
        help="convert a Wan2.2-S2V release's pickled VAE and T5 encoder (.pth) to safetensors folders beside them,"
        " once: only safetensors load when serving",
    )
    convert.add_argument("release", type=Path, help="the release folder (Wan-AI/Wan2.2-S2V-14B), written into")
    convert.set_defaults(run=_convert_release)

    plan = commands.add_parser(
        "plan", help="a checkpoint's memory plan: each part's bytes, device, and whether it fits"
    )
    plan.add_argument("--checkpoint", required=True, help="diffusers-format Wan checkpoint (configs are enough)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs per server (0: the CPU); each holds every GPU model")
    plan.add_argument("--gpu-memory", default="80GiB", help="memory of each GPU (default %(default)s)")
    plan.add_argument("--limits", type=Path, help="the serve --limits file: the largest request sizes the activations")
    plan.add_argument("--parallel", help="serve --parallel's value: each rank's share (ulysses=N[,cfg=2])")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_plan)

    export = commands.add_parser("export", help="export the text encoder and VAE to ONNX, verified")
    export.add_argument("--checkpoint", required=True, help="diffusers-format Wan checkpoint folder")
    export.add_argument("--repository", default="model_repository", help="Triton model repository to fill")
    export.add_argument(
        "--parts", help=f"comma-separated subset of {','.join(ONNX_FILES)} (default: every part the checkpoint has)"
    )
    export.add_argument("--force", action="store_true", help="rebuild even if the manifest says current")
    export.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="export what is stale, then run tritonserver until signalled")
    serve.add_argument("--checkpoint", help="diffusers-format Wan checkpoint (default: a tiny random one)")
    serve.add_argument(
        "--repository",
        type=Path,
        help="model repository to build and serve (default: one per checkpoint under $WAN_TRITON_CACHE/repositories)",
    )
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--log", type=Path, help="write tritonserver's log here (default: discard)")
    serve.add_argument("--limits", type=Path, help="JSON object of request limits (README: Limits); default: built in")
    serve.add_argument(
        "--denoiser-batch",
        type=int,
        default=1,
        help="run up to N compatible requests as one denoiser batch (throughput; outputs then depend slightly on "
        "their batch neighbours)",
    )
    serve.add_argument(
        "--parallel",
        help="one generation over several ranks: ulysses=N (sequence), ring=N (GPU), cfg=2 (guidance), e.g. "
        "ulysses=2,cfg=2; one GPU per rank (gloo ranks on a CPU)",
    )
    serve.add_argument("--loras", type=Path, help="LoRA allow-list: JSON {'root': DIR, 'adapters': {name: file}}")
    serve.add_argument("--lora-cache", type=int, default=4, help="adapters kept loaded at once (least recent go first)")
    serve.add_argument("--fuse-lora", help="NAME:SCALE,...: merge these adapters into the weights at load")
    serve.add_argument(
        "--watchdog-grace-s",
        type=float,
        default=WATCHDOG_GRACE_S,
        help="a job this long past its deadline is stuck: its processes are ended and reloaded (%(default)s)",
    )
    serve.add_argument(
        "--drain-s",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help="on SIGTERM, how long running jobs may finish before they are ended (UNAVAILABLE: retry elsewhere); "
        "keep it under the pod's grace period minus ~75 s (%(default)s)",
    )
    serve.add_argument(
        "--verify",
        action="store_true",
        help="hash every weight and exported file again (default: files unchanged in size, mtime and inode "
        "keep the hashes their manifests recorded)",
    )
    serve.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer's repeated blocks (warmed up at load; step caches are then refused)",
    )
    serve.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="quantize the transformer's blocks with torchao, compiled: int8 (weights and activations), int8-weights, "
        "fp8 (GPUs with float8)",
    )
    serve.add_argument(
        "--gguf",
        action="append",
        metavar="FILE",
        help="the transformer's weights from this GGUF file (Wan's original names, as the community ships "
        "them), kept quantized; twice for Wan2.2 A14B: the high-noise expert, then the low-noise one",
    )
    serve.add_argument(
        "--tensorrt",
        action="store_true",
        help="GPU: run the exported graphs on ONNX Runtime's TensorRT provider (fp32 engines, cached)",
    )
    serve.add_argument(
        "--ort-gpu-memory", type=int, metavar="BYTES", help="GPU: cap each ONNX Runtime session's CUDA arena"
    )
    serve.add_argument("--api-port", type=int, help="also run `wan-triton api` on this port, in front of this server")
    serve.add_argument("--api-host", help="with --api-port: the address it binds (api --host)")
    serve.add_argument("--api-keys", type=Path, help="with --api-port: its file of API keys (api --api-keys)")
    serve.add_argument("--api-data-dir", type=Path, help="with --api-port: its jobs and videos (api --data-dir)")
    serve.set_defaults(run=_serve)

    api = commands.add_parser("api", help="the OpenAI Videos API and a playground page, in front of Triton")
    add_api_arguments(api)
    api.set_defaults(run=_api)

    generate = commands.add_parser("generate", help="generate one video to an MP4 file")
    add_contract_options(generate)
    generate.add_argument("-o", "--output", required=True, help="MP4 file to write")
    generate.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default %(default)s)")
    generate.add_argument(
        "--timeout",
        type=float,
        help="seconds before a plain request, or a stream without any answer, is abandoned "
        "(default: the server's deadline for the entry plus 120 s)",
    )
    generate.add_argument("--wait", type=float, default=0.0, help="first wait this long for the server to be ready")
    generate.add_argument("--contact-sheet", help="also write a PNG grid of sampled frames")
    generate.add_argument("--no-stream", action="store_true", help="call the plain entry: no progress, one response")
    generate.add_argument("--checkpoint", help="no server: run in-process on this checkpoint folder")
    generate.add_argument("--onnx-repository", help="with --checkpoint: use the exported graphs in this repository")
    generate.add_argument(
        "--device", help="with --checkpoint: torch device (default: cuda when there is one, else cpu)"
    )
    generate.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        help="with --checkpoint: torch stages' dtype (default: bf16 on cuda)",
    )
    generate.set_defaults(run=_generate)

    from wan_triton import doctor

    # main() runs doctor before building this parser; the entry is here for --help.
    checkup = commands.add_parser("doctor", help="check the dependencies, GPU and tritonserver; list what is missing")
    doctor.add_arguments(checkup)
    checkup.set_defaults(run=doctor.run)

    from wan_triton.benchmarks.run import add_arguments, bench

    benchmarks = commands.add_parser("bench", help="run the benchmarks: JSON results and docs/PERFORMANCE.md")
    add_arguments(benchmarks)
    benchmarks.set_defaults(run=bench)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:  # before parser() imports numpy: doctor reports a broken numpy, not crash on it
        from wan_triton import doctor

        return doctor.main(argv[1:])
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
