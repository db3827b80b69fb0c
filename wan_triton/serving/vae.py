"""The VAE stages (Python backend): latents to uint8 frames and frames to latents, through the exported
chunk graphs (ONNX Runtime), each bounding what it is given as a request is bounded (R27).
"""

from __future__ import annotations

import numpy as np

from wan_triton.contract import RequestError
from wan_triton.repository import VAE_DECODER, VAE_ENCODER
from wan_triton.s2v.clips import MOTION_FRAMES
from wan_triton.serving.glue import (
    ModelContext,
    from_entry,
    inputs,
    per_request,
    response,
)
from wan_triton.serving.models import (
    CANVAS,
    CLIP_FRAMES,
    FRAMES,
    HEAD,
    LATENTS,
    TAIL,
    TAIL_FRAMES,
    VACE_MASK,
    limits_of,
)
from wan_triton.stage_io import VaeInput


class VaeDecoderModel:
    """Latents to uint8 frames through the exported chunk graphs (ONNX Runtime); with TAIL_FRAMES, the
    last frames as floats too (Wan2.2 Animate's next segment starts from them, S2V's next clip's motion)."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        self.decode = rt.device_chunks(context.folder, VAE_DECODER, context.device, to_uint8=True)
        self.config = open_checkpoint(context.checkpoint()).config("vae")
        self._decode(np.zeros((1, self.config["z_dim"], 2, 2, 2), np.float32))

    def _decode(self, latents: np.ndarray, tail: int = 0) -> dict[str, np.ndarray]:
        """[1, F, H, W, 3] uint8: the cache and the conversion stay on the device (DeviceChunks)."""
        from wan_triton.pipeline.vae import denormalize

        frames, last = self.decode.with_tail("decoder", denormalize(latents, self.config), tail)
        return {FRAMES.name: frames} if not tail else {FRAMES.name: frames, TAIL.name: last}

    def execute(self, requests: list) -> list:
        def one(request):
            given = inputs(request, [LATENTS.name, TAIL_FRAMES.name])
            tail = int(given[TAIL_FRAMES.name].reshape(-1)[0]) if TAIL_FRAMES.name in given else 0
            if not 0 <= tail <= MOTION_FRAMES:  # what Animate (1 or 5 frames) and S2V (73) hand over
                raise RequestError(TAIL_FRAMES.name, f"is {tail}; 0 to {MOTION_FRAMES} allowed")
            return response(self._decode(given[LATENTS.name], tail))

        return per_request(requests, from_entry(one))


class VaeEncoderModel:
    """uint8 frames to normalised latents through the exported chunk graphs (ONNX Runtime); with
    CLIP_FRAMES, the frames padded with blank ones to that length first (Wan I2V's condition); for
    VACE, a reference letterboxed onto CANVAS, a blank clip, or a clip encoded apart around its
    mask (models.VACE_MASK); for Animate, the previous segment's last frames (HEAD, floats) first."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.contract import Geometry
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        self.encode = rt.device_chunks(context.folder, VAE_ENCODER, context.device)
        checkpoint = open_checkpoint(context.checkpoint())
        self.config = checkpoint.config("vae")
        side = Geometry.from_checkpoint(checkpoint.root).vae_spatial
        self._latents(np.zeros((1, 3, 1, side, side), np.float32))

    def _latents(self, video: np.ndarray) -> np.ndarray:
        from wan_triton.pipeline.vae import normalize

        moments = self.encode("encoder", video)  # the cache stays on the device
        return normalize(moments[:, : self.config["z_dim"]], self.config)

    def _bounded(self, given: VaeInput) -> VaeInput:
        """Whatever the caller, the clip within the size and length a request may have (R27)."""
        limits = self.limits
        if given.canvas is not None:  # the output's size
            height, width = given.canvas
            if not (0 < height <= limits.max_side and 0 < width <= limits.max_side):
                raise RequestError(CANVAS.name, f"is {height}x{width}; sides 1 to {limits.max_side} allowed")
            if height * width > limits.max_area:
                raise RequestError(CANVAS.name, f"{height}x{width} is over {limits.max_area} pixels")
        if given.head is not None:  # float frames given as they are
            frames, height, width = given.head.shape[2:]
            if not (frames <= limits.max_frames and height * width <= limits.max_area):
                raise RequestError(HEAD.name, f"{frames} frames of {height}x{width} is over the limits")
        blank = given.frames is None and (given.head is None or given.canvas is not None)
        clip = given.clip_frames
        if blank and (given.canvas is None or clip is None or not 1 <= clip <= limits.max_frames):
            raise RequestError(FRAMES.name, f"absent: a blank clip needs {CANVAS.name} and {CLIP_FRAMES.name}")
        return given

    def execute(self, requests: list) -> list:
        from wan_triton.pipeline.vae import encode_input

        def one(request):
            given = inputs(request, [FRAMES.name, CLIP_FRAMES.name, VACE_MASK.name, CANVAS.name, HEAD.name])
            return response({LATENTS.name: encode_input(self._latents, self._bounded(VaeInput.from_tensors(given)))})

        return per_request(requests, from_entry(one))
