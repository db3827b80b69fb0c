"""The image encoder stage (Python backend): Wan2.1 I2V's CLIP image tokens (ONNX Runtime)."""

from __future__ import annotations

import numpy as np

from wan_triton.repository import IMAGE_ENCODER, ONNX_FILES
from wan_triton.serving.glue import (
    ModelContext,
    from_entry,
    inputs,
    per_request,
    response,
)
from wan_triton.serving.models import (
    IMAGE_EMBEDS,
    IMAGE_PIXELS,
)


class ImageEncoderModel:
    """Wan2.1 I2V: the image to CLIP image tokens (the checkpoint's processor, then ONNX Runtime)."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.image import ImageEncoder, onnx_image_encoder
        from wan_triton.pipeline.layout import open_checkpoint

        context = ModelContext(args)
        session = rt.session(context.folder / ONNX_FILES[IMAGE_ENCODER]["model"], context.device)
        processor = open_checkpoint(context.checkpoint()).image_processor()
        self.encoder = ImageEncoder(processor, onnx_image_encoder(session))
        self.encoder(np.zeros((16, 16, 3), np.uint8))

    def execute(self, requests: list) -> list:
        return per_request(
            requests,
            from_entry(
                lambda r: response(
                    {IMAGE_EMBEDS.name: self.encoder(inputs(r, [IMAGE_PIXELS.name])[IMAGE_PIXELS.name][0])}
                )
            ),
        )
