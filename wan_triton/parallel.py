"""One generation over several ranks: sequence parallel (Ulysses, ring) and guidance parallel.

On torch.distributed and diffusers' own context parallelism, never a transport of our own. The
mesh has three dimensions, ("cfg", "ring", "ulysses"). Ulysses and ring split each step's latent
tokens over their ranks (diffusers' `ContextParallelConfig` on the transformer: the all-to-all of
the attention heads, or ring attention). `cfg=2` runs the positive prompt on one half of the ranks
and the negative prompt on the other; the two noise predictions are gathered every step. Every
rank holds the whole transformer: parallel mode buys time per step, not memory.

    spec = Parallel.parse("ulysses=2,cfg=2")   # 4 ranks
    spec.check(transformer.config, "cpu")       # before any process starts
    group = Group.join(spec, rank, init, "cpu") # in every rank
    group.apply(denoiser)                        # then the same loop on every rank, in lockstep
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from unittest import mock

if TYPE_CHECKING:
    from wan_triton.contract import Geometry

DEGREES = ("ulysses", "ring", "cfg")
MAX_RANKS = 8  # one node: every peer stops at 8 GPUs per generation


class ParallelError(ValueError):
    """A parallel setting that cannot work; the message names the value and what is allowed."""


@dataclass(frozen=True)
class Parallel:
    ulysses: int = 1
    ring: int = 1
    cfg: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Parallel:
        """`ulysses=N[,ring=N][,cfg=2]`; empty or None: one rank."""
        degrees: dict[str, int] = {}
        for part in (text or "").replace(" ", "").split(","):
            if not part:
                continue
            name, _, value = part.partition("=")
            if name not in DEGREES:
                raise ParallelError(f"--parallel: unknown degree {name!r}; allowed: {', '.join(DEGREES)}")
            if name in degrees:
                raise ParallelError(f"--parallel: {name} given twice")
            try:
                degrees[name] = int(value)
            except ValueError:
                raise ParallelError(f"--parallel: {name}={value!r} is not a whole number") from None
        spec = cls(**degrees)
        for name in DEGREES:
            if getattr(spec, name) < 1:
                raise ParallelError(f"--parallel: {name}={getattr(spec, name)}; 1 or more allowed")
        if spec.cfg > 2:
            raise ParallelError(f"--parallel: cfg={spec.cfg}; 1 or 2 allowed (a positive and a negative branch)")
        if spec.world > MAX_RANKS:
            raise ParallelError(f"--parallel: {spec} is {spec.world} ranks; at most {MAX_RANKS} allowed")
        return spec

    def __str__(self) -> str:
        return ",".join(f"{name}={getattr(self, name)}" for name in DEGREES if getattr(self, name) > 1) or "none"

    @property
    def world(self) -> int:
        return self.ulysses * self.ring * self.cfg

    @property
    def sequence(self) -> int:
        """Ranks that one branch's latent tokens are split over."""
        return self.ulysses * self.ring

    def check(self, config, device_type: str, devices: int | None = None) -> None:
        """Before any rank starts: the degrees against the transformer's `config` and the devices."""
        heads = config.num_attention_heads
        if heads % self.ulysses:
            raise ParallelError(
                f"--parallel: ulysses={self.ulysses} does not divide the transformer's {heads} attention heads;"
                f" allowed: a divisor of {heads}"
            )
        if self.ring > 1 and device_type != "cuda":
            # Ring attention merges partial results with their log-sum-exp; PyTorch's native SDPA,
            # the only attention backend on a CPU, does not return it.
            raise ParallelError(
                f"--parallel: ring={self.ring} needs a GPU attention backend that returns the log-sum-exp"
                " (flash, cuDNN); use ulysses on a CPU"
            )
        if devices is not None and device_type == "cuda" and self.world > devices:
            raise ParallelError(f"--parallel: {self} needs {self.world} GPUs, one per rank; {devices} visible")

    def check_request(self, height: int, width: int, num_frames: int, cache_method: str, geometry: Geometry) -> None:
        """What one request asks that this parallel mode cannot run, refused naming the input (by
        the entry before any stage, and by the denoiser again). Its latent tokens must split evenly
        over the sequence ranks: refused, not padded (padding tokens would join the attention and
        change the video). A step cache decides on each rank's own tokens whether to skip the
        blocks, and ranks that decide differently would wait on each other's all-to-all for ever."""
        from wan_triton.contract import GUIDED_CACHES, RequestError

        if self.cfg > 1 and cache_method in GUIDED_CACHES:  # each rank runs one branch: no batch to split
            raise RequestError("cache_method", f"{cache_method!r} is not supported with --parallel {self}")
        if self.sequence == 1:
            return
        if cache_method != "none":
            raise RequestError("cache_method", f"step caching is not supported with --parallel {self}")
        side = geometry.spatial_multiple
        tokens = ((num_frames - 1) // geometry.vae_temporal + 1) * (height // side) * (width // side)
        if tokens % self.sequence:
            raise RequestError(
                "height",
                f"{height}x{width} with num_frames {num_frames} makes {tokens} latent tokens, which do not split"
                f" over this server's {self.sequence} sequence ranks ({self}); allowed: sizes whose token count"
                f" is a multiple of {self.sequence}",
            )


@contextlib.contextmanager
def _cpu_counts_as_one_device() -> Iterator[None]:
    """diffusers places rank r on device `r % torch.accelerator.device_count()`, which is 0 on a
    machine without an accelerator; for the CPU ranks of one process group, one device."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", lambda: 1):
        yield


@dataclass
class Group:
    """This rank's place in the job: its process groups and its coordinates in the mesh."""

    spec: Parallel
    rank: int
    mesh: object  # torch.distributed.device_mesh.DeviceMesh, dims ("cfg", "ring", "ulysses")
    control: object  # a gloo group on the CPU: jobs and stop flags, never blocking a GPU stream

    @classmethod
    def join(cls, spec: Parallel, rank: int, init_method: str, device_type: str, timeout_s: float = 600.0) -> Group:
        """Join the process group of `spec.world` ranks (NCCL on GPUs, gloo on the CPU).
        `timeout_s` bounds one collective: a rank that stops answering fails the job after it."""
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=spec.world, timeout=timeout)
        mesh = init_device_mesh(
            device_type, (spec.cfg, spec.ring, spec.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
        )
        # Rank 0 waits here between jobs for as long as the server is idle: no timeout that an idle
        # night would reach (a dead rank 0 ends the workers anyway: they die with their parent).
        control = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=365))
        return cls(spec, rank, mesh, control)

    @property
    def cfg_rank(self) -> int:
        return self.mesh.get_local_rank("cfg")

    def apply(self, denoiser) -> None:
        """Split `denoiser`'s transformers over the sequence ranks and its guidance over the cfg
        ranks; the loop itself (denoise.Denoiser) stays the same."""
        if self.spec.sequence > 1:
            from diffusers.models._modeling_parallel import ContextParallelConfig

            for model in denoiser.transformers():
                config = ContextParallelConfig(
                    ulysses_degree=self.spec.ulysses, ring_degree=self.spec.ring, mesh=self.mesh["ring", "ulysses"]
                )
                with _cpu_counts_as_one_device():
                    model.enable_parallelism(config=config)
        if self.spec.cfg > 1:
            denoiser.guidance_split = GuidanceSplit(self.cfg_rank, self.mesh.get_group("cfg"))

    def broadcast(self, value: object | None) -> object:
        """Rank 0's `value` (any picklable object) on every rank, over the control group."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def stop_flag(self, stop: bool) -> bool:
        """Rank 0 says whether the job stops after this step; every rank returns its word."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.control)
        return bool(flag.item())

    def close(self) -> None:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()


@dataclass
class GuidanceSplit:
    """cfg=2: this rank's branch (0 the prompt, 1 the negative prompt) and the group the two
    predictions are gathered over each step."""

    branch: int
    group: object

    def gather(self, mine):
        """(positive, negative) noise predictions (torch tensors), from this rank's and its peer's."""
        import torch
        import torch.distributed as dist

        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine.contiguous(), group=self.group)
        return both[0], both[1]
