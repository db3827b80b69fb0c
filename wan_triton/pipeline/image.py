"""Stage 1b (Wan2.1 I2V): the conditioning image to the CLIP embeddings the transformer attends to.

diffusers' `WanImageToVideoPipeline.encode_image`, split in two: the checkpoint's
CLIPImageProcessor turns the image into `pixel_values` once, in Python, the same for every
backend; the vision tower (torch or `image_encoder/1/model.onnx`) maps them to its penultimate
hidden states, which is what Wan2.1 I2V was trained on (not the pooled or projected output).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# pixel_values float32 [B, 3, 224, 224] -> penultimate hidden states float32 [B, tokens, dim].
# Torch and the exported ONNX graph both fit, so the stage runs the same with either.
ImageEncodeFn = Callable[[np.ndarray], np.ndarray]

# Tensor names inside the exported image-encoder graph.
IMAGE_GRAPH_INPUT = "pixel_values"
IMAGE_GRAPH_OUTPUT = "image_embeds"


def torch_image_encoder(model) -> ImageEncodeFn:
    """Wrap a transformers CLIPVisionModel as an ImageEncodeFn."""
    import torch

    device = next(model.parameters()).device

    def encode(pixel_values: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            pixels = torch.from_numpy(pixel_values).to(device)
            # The model casts the pixels to its own dtype (CLIPVisionEmbeddings), as in diffusers.
            hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
            return hidden.float().cpu().numpy()

    return encode


def onnx_image_encoder(session) -> ImageEncodeFn:
    """Wrap an ONNX Runtime session of `image_encoder/1/model.onnx` as an ImageEncodeFn."""
    return lambda pixel_values: session.run([IMAGE_GRAPH_OUTPUT], {IMAGE_GRAPH_INPUT: pixel_values})[0]


class ImageEncoder:
    """CLIP preprocessing plus the vision tower: one RGB image -> [1, tokens, dim] float32 embeddings."""

    def __init__(self, processor, encode: ImageEncodeFn) -> None:
        self.processor = processor
        self.encode = encode

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 [H, W, 3] -> pixel_values float32 [1, 3, 224, 224] (the checkpoint's crop size)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        # Channels-last said outright: a 3-pixel-high image would otherwise read as channels-first.
        pixels = self.processor(images=image, return_tensors="np", input_data_format="channels_last")
        return np.ascontiguousarray(pixels["pixel_values"], dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(self.encode(self.preprocess(image)), dtype=np.float32)
