"""The text encoder stage (Python backend): the prompts of every request in a dynamic batch through the
exported UMT5 (ONNX Runtime), each request within the prompt byte limit.
"""

from __future__ import annotations

from wan_triton.contract import RequestError
from wan_triton.repository import ONNX_FILES, TEXT_ENCODER
from wan_triton.serving.glue import (
    ModelContext,
    check_caller,
    failure,
    inputs,
    response,
)
from wan_triton.serving.models import (
    NEGATIVE_EMBEDS,
    NEGATIVE_PROMPT,
    PROMPT,
    PROMPT_EMBEDS,
    limits_of,
)


class TextEncoderModel:
    """Encodes the prompts of every request in the dynamic batch as one encoder batch."""

    def initialize(self, args: dict) -> None:
        from wan_triton import onnx_runtime as rt
        from wan_triton.pipeline.layout import open_checkpoint
        from wan_triton.pipeline.text import PromptEncoder

        context = ModelContext(args)
        self.limits = limits_of(context.config)
        session = rt.session(context.folder / ONNX_FILES[TEXT_ENCODER]["model"], context.device)
        self.encoder = PromptEncoder(open_checkpoint(context.checkpoint()).tokenizer(), rt.encoder_fn(session))
        self.encoder(["warm-up", ""])

    def execute(self, requests: list) -> list:
        # The prompt pairs of every valid request go through the encoder as one batch; a request
        # that fails its checks (or, should the batch fail, its own encoding) fails alone (R5).
        answers: list = [None] * len(requests)
        pairs: dict[int, list[str]] = {}
        for index, request in enumerate(requests):
            try:
                pairs[index] = self._prompts(request)
            except Exception as exc:
                answers[index] = failure(exc)[1]
        try:
            embeds = self.encoder([t for texts in pairs.values() for t in texts]) if pairs else None
        except Exception:
            embeds = None  # encode each request alone below: the failure stays with its request
        start = 0
        for index, texts in pairs.items():
            try:
                if embeds is None:
                    mine = self.encoder(texts)
                else:
                    mine, start = embeds[start : start + len(texts)], start + len(texts)
                answers[index] = response({PROMPT_EMBEDS.name: mine[0::2], NEGATIVE_EMBEDS.name: mine[1::2]})
            except Exception as exc:
                answers[index] = failure(exc)[1]
        return answers

    def _prompts(self, request) -> list[str]:
        """A request's (prompt, negative) texts, interleaved, each within the prompt byte limit."""
        check_caller(request)
        given = inputs(request, (PROMPT.name, NEGATIVE_PROMPT.name))
        texts = []
        for prompt, negative in zip(
            given[PROMPT.name].reshape(-1), given[NEGATIVE_PROMPT.name].reshape(-1), strict=True
        ):
            for name, value in ((PROMPT.name, prompt), (NEGATIVE_PROMPT.name, negative)):
                if len(value) > self.limits.max_prompt_bytes:
                    raise RequestError(name, f"is {len(value)} bytes; at most {self.limits.max_prompt_bytes} allowed")
                texts.append(value.decode("utf-8"))
        return texts
