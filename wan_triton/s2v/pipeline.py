"""Wan2.2-S2V composed in-process: the release's clip loop (`wan/speech2video.py`, s2v/clips.py) on our stages.

Per clip, the transformer sees, besides the noise and the prompt: the reference image's latent frame, the
clip's audio features (silence for the unconditional branch), the pose video's latents for the clip if one
is given, and from the second clip on the latents of the last `motion_frames` frames generated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wan_triton.contract import GenerationRequest
from wan_triton.pipeline import DecodeFn, EncodeVideoFn
from wan_triton.pipeline.denoise import Denoiser, Guide, StepCallback
from wan_triton.pipeline.latents import initial_latents
from wan_triton.pipeline.text import PromptEncoder, torch_encoder
from wan_triton.pipeline.vae import to_frames, to_video, torch_decode, torch_encode
from wan_triton.s2v import audio
from wan_triton.s2v.clips import CLIP_FRAMES, FIRST_CLIP_DROPPED, MOTION_FRAMES, clip_seed, clips_for
from wan_triton.s2v.release import Release

# 16 kHz mono samples, fps -> the transformer's audio input per clip (s2v/audio.py)
AudioFeaturesFn = Callable[[np.ndarray, int], list[torch.Tensor]]


@dataclass
class S2VPipeline:
    prompt_encoder: PromptEncoder
    denoiser: Denoiser
    audio_features: AudioFeaturesFn
    encode_video: EncodeVideoFn
    decode: DecodeFn
    motion_frames: int = MOTION_FRAMES  # pixel frames handed from one clip to the next
    device: str = "cpu"

    @classmethod
    def from_release(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> S2VPipeline:
        """Torch for every stage, from a release folder whose pickles are converted (s2v/release.py)."""
        release = Release.open(path)
        vae = release.vae(torch.float32, device)
        wav2vec = release.audio_encoder(torch.float32, device)
        transformer = release.transformer(dtype=dtype, device=device)
        return cls(
            prompt_encoder=PromptEncoder(release.tokenizer(), torch_encoder(release.text_encoder(dtype, device))),
            denoiser=Denoiser(
                transformer=transformer,
                scheduler_class=release.scheduler_class,
                scheduler_config=release.scheduler_config,
            ),
            audio_features=lambda samples, fps: audio.clips(wav2vec, samples, fps),
            encode_video=lambda video: torch_encode(vae, video),
            decode=lambda latents: torch_decode(vae, latents),
            motion_frames=transformer.config.motion_frames,
            device=device,
        )

    def pose_latents(self, pose_video: np.ndarray, clips: int) -> list[torch.Tensor]:
        """uint8 [F, H, W, 3] -> per clip [1, C, 20, h, w]: its 80 frames (black past the end) behind a copy of
        the first, encoded, the copy's latent frame dropped (the release's `load_pose_cond`)."""
        video = to_video(pose_video)[:, :, : clips * CLIP_FRAMES]
        missing = clips * CLIP_FRAMES - video.shape[2]
        video = np.concatenate([video, np.full((*video.shape[:2], missing, *video.shape[3:]), -1.0, np.float32)], 2)
        chunks = np.split(video, clips, axis=2)
        return [torch.from_numpy(self.encode_video(np.concatenate([c[:, :, :1], c], axis=2))[:, :, 1:]) for c in chunks]

    def frames(
        self,
        request: GenerationRequest,
        image: np.ndarray,
        speech: np.ndarray,
        pose_video: np.ndarray | None = None,
        callback: StepCallback | None = None,
        clips: int | None = None,
    ) -> np.ndarray:
        """Frames [num_frames, H, W, 3] float32 in [0, 1] for the reference `image` (uint8 [H, W, 3] at the
        request's size) driven by `speech` (float32 mono at 16 kHz). `callback` sees the steps of all clips as
        one count; `clips` (default: enough for num_frames) runs that many whole clips, untrimmed."""
        trim = clips is None
        clips = clips_for(request.num_frames) if clips is None else clips
        cfg = request.do_classifier_free_guidance
        embeds = torch.from_numpy(self.prompt_encoder([request.prompt, request.negative_prompt][: 1 + cfg]))
        features = self.audio_features(speech, request.fps)
        silence = torch.zeros_like(features[0])
        features += [silence] * (clips - len(features))  # frames past the audio: silent
        reference = self.encode_video(to_video(image[None]))
        poses = None if pose_video is None else self.pose_latents(pose_video, clips)
        channels = self.denoiser.latent_channels
        shape = (1, channels, CLIP_FRAMES // 4, *reference.shape[3:])
        motion_pixels, motion, outputs = None, None, []
        for clip in range(clips):
            if motion_pixels is not None:
                motion = self.encode_video(motion_pixels)
            guide = Guide(
                audio_features=features[clip],
                reference_latents=torch.from_numpy(reference),
                motion_latents=None if motion is None else torch.from_numpy(motion),
                pose_latents=None if poses is None else poses[clip],
            )
            latents = self.denoiser(
                initial_latents(clip_seed(request.seed, clip), shape, self.device),
                embeds[:1],
                embeds[1:] if cfg else None,
                request.num_inference_steps,
                request.guidance_scale,
                flow_shift=request.flow_shift,
                callback=_over_clips(callback, clip, clips),
                guide=guide,
            )
            before = reference if motion is None else motion
            video = self.decode(np.concatenate([before, latents.float().cpu().numpy()], axis=2))[:, :, -CLIP_FRAMES:]
            if clip == 0:
                video = video[:, :, FIRST_CLIP_DROPPED:]
            outputs.append(video)
            motion_pixels = video[:, :, -self.motion_frames :]
        video = np.concatenate(outputs, axis=2)
        return to_frames(video[:, :, : request.num_frames] if trim else video)


def _over_clips(callback: StepCallback | None, clip: int, clips: int) -> StepCallback | None:
    """A clip's step callback counting the steps of all clips."""
    if callback is None:
        return None
    return lambda step, total, latents: callback(clip * total + step, clips * total, latents)
