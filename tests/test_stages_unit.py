"""The stages' own defences against a stand-in pb_utils (the live tests cover the real one): a bad
request in a text-encoder batch fails alone (R5), a final that cannot be sent still ends the
request (R11, R30), messages carry no host paths, and a cancel flag that cannot be written is
tried again."""

from __future__ import annotations

import numpy as np
import pytest
from fake_triton import FINAL, Logger, Request, Sender, install, started_with
from google.protobuf import json_format

from wan_triton.repository import TEXT_ENCODER
from wan_triton.serving.configs import all_configs


def prompts(prompt: bytes, negative: bytes = b"", **extra) -> Request:
    return Request(
        prompt=np.array([[prompt]], dtype=np.object_), negative_prompt=np.array([[negative]], dtype=np.object_), **extra
    )


def test_one_bad_request_in_a_text_encoder_batch_fails_alone(monkeypatch, tiny_checkpoint, exported_repository):
    install(monkeypatch)
    started_with(monkeypatch, checkpoint=tiny_checkpoint)
    from wan_triton.serving.text_encoder import TextEncoderModel

    model = TextEncoderModel()
    config = json_format.MessageToJson(all_configs()[TEXT_ENCODER], preserving_proto_field_name=True)
    folder = exported_repository / TEXT_ENCODER
    model.initialize(
        {"model_config": config, "model_name": TEXT_ENCODER, "model_repository": str(folder), "model_version": "1"}
    )
    alone = [model.execute([prompts(p, b"blurry")])[0] for p in (b"a red cat", b"a blue dog")]
    batch = model.execute(
        [
            prompts(b"a red cat", b"blurry"),
            prompts(b"no key", stage_key=None),
            prompts(b"wrong key", stage_key=np.array([[b"guess"]], dtype=np.object_)),
            prompts(b"x" * 5000),
            prompts(b"\xff\xfe not utf-8"),
            prompts(b"a blue dog", b"blurry"),
        ]
    )
    for index, expected in ((0, alone[0]), (5, alone[1])):
        assert not batch[index].has_error()
        for name, array in expected.outputs.items():
            np.testing.assert_allclose(batch[index].outputs[name], array, atol=1e-5)
    for index, words in ((1, "stage_key"), (2, "stage_key"), (3, "prompt: is 5000 bytes; at most 2048")):
        assert batch[index].has_error() and words in batch[index].error().message(), batch[index].error().message()
        assert batch[index].error().code() == "INVALID_ARG"
    assert batch[4].has_error() and "UnicodeDecodeError" in batch[4].error().message()


class Refusing(Sender):
    """A sender whose first send fails, as one does when the stub's shared memory is full."""

    def send(self, response=None, flags: int = 0) -> None:
        if not self.sent and response is not None:
            self.sent.append(("failed", flags))
            raise RuntimeError("Failed to increase the shared memory pool size")
        super().send(response, flags)


def test_a_final_that_cannot_be_sent_still_ends_the_request(monkeypatch):
    install(monkeypatch)
    from wan_triton.serving.glue import response, send_final

    sender = Refusing()
    send_final(sender, response({"video": np.zeros((1, 1), np.uint8)}))
    assert sender.sent == [("failed", FINAL), (None, FINAL)]
    assert "sending an empty one" in Logger.logged[0]


def test_failure_messages_carry_no_host_paths(monkeypatch):
    install(monkeypatch)
    from wan_triton.serving.glue import failure

    _, answer = failure(FileNotFoundError(2, "No such file", "/root/.cache/wan-triton/tiny/model.onnx"))
    message = answer.error().message()
    assert message.startswith("FileNotFoundError: ") and "/root" not in message and "<path>" in message
    assert "/root/.cache/wan-triton/tiny/model.onnx" in Logger.logged[0], "the server log keeps the detail"
    _, plain = failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (1024x48 and 40x32)"))
    assert plain.error().message() == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (1024x48 and 40x32)"


def test_a_cancel_flag_that_cannot_be_written_is_tried_again(monkeypatch):
    from wan_triton.serving import cancel

    class Gone:
        def is_cancelled(self) -> bool:
            return True

    attempts = []

    def full(job_id: str) -> None:
        attempts.append(job_id)
        if len(attempts) < 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(cancel, "cancel", full)
    watcher = cancel.Watcher(Gone(), deadline_s=60)
    assert not watcher.poll() and not watcher.poll()  # ENOSPC twice: not up yet, still trying
    assert watcher.poll() and len(attempts) == 3
    assert watcher.poll() and len(attempts) == 3  # up once, never raised again
    with pytest.raises(cancel.Cancelled):
        watcher.check()
