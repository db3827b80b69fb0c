"""What refuses a request before any stage runs, in one function for every front door.

The gRPC entries, `generate --checkpoint` (in-process) and the OpenAI API all call `admit`, so they
refuse the same requests with the same message (a RequestError naming the field): the contract's
validation, the checkpoint family's rules, what the served parallel degrees, acceleration and step-cache
calibration allow, the adapters, and the media decoded and capped. `Served` is what a server serves as
admission needs it; `serve` writes it into the entries' configs, so that a front end without the
checkpoint (the API) reads the same. Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from wan_triton import conditioning
from wan_triton.acceleration import Acceleration
from wan_triton.conditioning import Media
from wan_triton.contract import EXPERTS, MAG_RATIOS, Family, GenerationRequest, Geometry, Limits, RequestError, validate
from wan_triton.lora import FIELD as LORA_FIELD
from wan_triton.lora import AllowList, check_adapter
from wan_triton.parallel import Parallel


@dataclass(frozen=True)
class Served:
    """A served checkpoint as admission sees it. `adapters`: the allowed adapter names and the experts
    each loads into (None: the server takes no adapters); `allow_list`, where present (the entries'
    own), also checks each adapter's file. `family` None: not known (a repository `serve` did not write,
    seen from the API), so only the contract's own rules refuse."""

    geometry: Geometry
    family: Family | None
    limits: Limits = dataclasses.field(default_factory=Limits)
    parallel: Parallel = dataclasses.field(default_factory=Parallel)
    acceleration: Acceleration = dataclasses.field(default_factory=Acceleration)
    mag_calibrated: bool = False
    adapters: dict[str, tuple[str, ...]] | None = None
    allow_list: AllowList | None = None

    @classmethod
    def of_checkpoint(
        cls,
        checkpoint: str | Path,
        limits: Limits | None = None,
        parallel: Parallel | None = None,
        acceleration: Acceleration | None = None,
        allow_list: AllowList | None = None,
    ) -> Served:
        adapters = None
        if allow_list is not None:
            adapters = {name: tuple(files) for name, files in allow_list.adapters.items()}
        return cls(
            Geometry.from_checkpoint(checkpoint),
            Family.from_checkpoint(checkpoint),
            limits or Limits(),
            parallel or Parallel(),
            acceleration or Acceleration(),
            (Path(checkpoint) / MAG_RATIOS).is_file(),
            adapters,
            allow_list,
        )

    def to_json(self) -> str:
        """What the entries' configs carry beside their geometry and limits (which have their own
        parameters); no file names: a model's config is readable by anyone who reaches the port."""
        return json.dumps(
            {
                "family": None if self.family is None else dataclasses.asdict(self.family),
                "parallel": dataclasses.asdict(self.parallel),
                "acceleration": dataclasses.asdict(self.acceleration),
                "mag_calibrated": self.mag_calibrated,
                "adapters": None if self.adapters is None else {n: list(e) for n, e in self.adapters.items()},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, geometry: Geometry, limits: Limits) -> Served:
        values = json.loads(text)
        adapters = values["adapters"]
        return cls(
            geometry,
            None if values["family"] is None else Family(**values["family"]),
            limits,
            Parallel(**values["parallel"]),
            Acceleration(**values["acceleration"]),
            bool(values["mag_calibrated"]),
            None if adapters is None else {name: tuple(experts) for name, experts in adapters.items()},
        )

    def check(self, request: GenerationRequest) -> None:
        """What this server refuses of a valid request, beyond the contract."""
        if self.family is not None:
            self.family.check(request)
        frames, method = request.num_frames, request.cache_method
        self.parallel.check_request(request.height, request.width, frames, method, self.geometry)
        self.acceleration.check_request(request.cache_method)
        if request.cache_method == "mag" and not self.mag_calibrated:
            raise RequestError(
                "cache_method", "'mag' needs this checkpoint's calibrated ratios; this server has none (calibrate-mag)"
            )
        for name in request.lora_names:
            self._check_adapter(name)

    def _check_adapter(self, name: str) -> None:
        if self.adapters is None:
            raise RequestError(LORA_FIELD, "this server has no adapters (serve --loras)")
        experts = EXPERTS if self.family is None else self.family.experts
        if self.allow_list is not None:  # its files too
            self.allow_list.resolve(name, experts)
        else:
            check_adapter(self.adapters, name, experts)


def admit(raw: dict, task: str, served: Served) -> tuple[GenerationRequest, Media]:
    """A raw request (contract field -> value) for `task` -> the request and its decoded media, or a
    RequestError naming the field; nothing runs before it returns."""
    request = validate(raw, served.geometry, served.limits, task)
    served.check(request)
    return conditioning.prepare(request, served.geometry, served.limits)
