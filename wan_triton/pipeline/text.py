"""Stage 1: tokenize and encode prompts into the embeddings the transformer attends to."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

# (input_ids, attention_mask) -> last_hidden_state, all int64 / float32 numpy arrays. Torch and
# the exported ONNX graph both fit, so the stage runs the same with either.
EncodeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

MAX_SEQUENCE_LENGTH = 512  # WanPipeline's default; UMT5 pads every prompt to it


def torch_encoder(model) -> EncodeFn:
    """Wrap a transformers UMT5EncoderModel as an EncodeFn."""
    import torch

    device = next(model.parameters()).device

    def encode(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(device)
            mask = torch.from_numpy(attention_mask).to(device)
            return model(ids, mask).last_hidden_state.float().cpu().numpy()

    return encode


class PromptEncoder:
    """Tokenizer plus encoder; zeroes every position past a prompt's own length, as diffusers does."""

    def __init__(self, tokenizer, encode: EncodeFn, max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.encode = encode
        self.max_sequence_length = max_sequence_length

    def tokenize(self, prompts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Prompts -> (input_ids, attention_mask) int64 [B, length], padded to `length`."""
        tokens = self.tokenizer(
            [prompt_clean(p) for p in prompts],
            padding="max_length",
            max_length=length or self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="np",
        )
        return tokens["input_ids"].astype(np.int64), tokens["attention_mask"].astype(np.int64)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> [B, max_sequence_length, d_model] float32 embeddings."""
        input_ids, attention_mask = self.tokenize(prompts)
        hidden = np.array(self.encode(input_ids, attention_mask), dtype=np.float32)
        lengths = attention_mask.sum(axis=1)
        hidden[np.arange(hidden.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return hidden
