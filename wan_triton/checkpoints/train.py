"""`wan-triton train-tiny`: a small Wan2.1 T2V checkpoint that really denoises, trained on this CPU.

Random weights make every speed option look free (a random VAE saturates most pixels; a random
transformer has no step-to-step smoothness to cache), and `make demo` would show noise. This trains
the real classes in the real format on `clips`' captioned shapes, in two stages:

1. the VAE (`AutoencoderKLWan`) on clips of 5, then 9, then 17 frames (`train_vae`'s stages),
   reconstruction loss on the decoder's output before the [-1, 1] clamp diffusers applies (so a pixel
   past the range still learns); then its latent statistics
   become the config's `latents_mean`/`latents_std`, as for the published VAEs;
2. the transformer (`WanTransformer3DModel`) by flow matching on the frozen VAE's latents of 17-frame
   clips, attending to the (frozen, random) UMT5 encoder's embeddings of the captions through the
   pipeline's own prompt encoder, with 10% of captions dropped to the empty prompt, so classifier-free
   guidance has an unconditional branch to steer from. Its timesteps follow the scheduler's shift.

`evaluate` reports what it learned: VAE PSNR on held-out clips, and how many generated videos show
their prompt (`clips.shows`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from wan_triton.checkpoints import clips
from wan_triton.checkpoints.recipe import Recipe
from wan_triton.checkpoints.tiny import VOCAB_SIZE, _scheduler, _text_encoder, _tokenizer, _transformer

MANIFEST = "training.json"
TRAINED = Path(__file__).parent / "trained"  # the committed checkpoint: serve's embedded default
FLOW_SHIFT = 3.0  # the scheduler's (Wan2.1 T2V 480P)
DIMS = {
    "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
    "transformer": dict(num_attention_heads=4, attention_head_dim=16, ffn_dim=256, num_layers=4),
    "vae": dict(base_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1),
}


def _pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] -> [N, 3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def _decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """diffusers' AutoencoderKLWan._decode (one latent frame at a time, the feature cache threaded
    through) without its final clamp."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    out = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        out.append(
            vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=i == 0)
        )
    vae.clear_cache()
    return torch.cat(out, dim=2)


def _schedule(step: int, steps: int, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _reconstruction_loss(y: torch.Tensor, x: torch.Tensor, shape_weight: float = 9.0) -> torch.Tensor:
    """L1 + MSE, each pixel of the shape (any pixel off the plain background, read at a corner) weighing
    1 + `shape_weight`: the shape is a few percent of the picture, and unweighted the VAE settles for a
    while on the background alone (measured: 15-17 dB for hundreds of steps)."""
    shape = ((x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05).float()
    weight = 1.0 + shape_weight * shape
    weight = weight / weight.mean()
    error = y - x
    return (weight * (error.abs() + error**2)).mean()


def train_vae(vae, recipe: Recipe, log: Callable[[str], None], stage: str = "vae") -> float:
    """Reconstruction of clips drawn afresh every step, in one of four stages:
    - `vae`: both halves on short clips (the first frame and one 4-frame chunk);
    - `video`: both on longer ones, so a chunk also learns from the cache an earlier 4-frame chunk leaves
      (trained on 5 frames alone, 17-frame clips came back at 12 dB; after 9-frame clips, frames 0-8 are
      ~30 dB and the cache drifts past them);
    - `long`: both on clips as long as the served ones (17 frames: four chunks on one cache);
    - `decoder`: the encoder frozen, so the latents (which the transformer learned) stay as they are
      while the decoder sharpens.
    Each stage draws its clips from its own seed."""
    steps, lr, frames, batch, offset = {
        "vae": (recipe.vae_steps, recipe.vae_lr, recipe.vae_frames, recipe.vae_batch, 0),
        "video": (recipe.video_steps, recipe.video_lr, recipe.video_frames, recipe.video_batch, 7),
        "long": (recipe.long_steps, recipe.long_lr, recipe.long_frames, recipe.long_batch, 11),
        "decoder": (recipe.decoder_steps, recipe.decoder_lr, recipe.vae_frames, recipe.vae_batch, 3),
    }[stage]
    decoder_only = stage == "decoder"
    rng = np.random.default_rng(recipe.seed + offset)
    every = clips.captions()
    trained = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()] if decoder_only else list(vae.parameters())
    optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    held_out = _pixels(clips.dataset(2, recipe.seed + 1000, frames, recipe.size)[0])
    name = stage
    vae.train()
    loss_value, started = float("nan"), time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * _schedule(step, steps)
        chosen = [every[i] for i in rng.integers(len(every), size=batch)]
        x = _pixels(np.stack([clips.clip(c, rng, frames, recipe.size) for c in chosen]))
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            z = vae.encode(x).latent_dist.mode()
        y = _decode_unclamped(vae, z)
        loss = _reconstruction_loss(y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)  # without it the first hundred steps diverge
        optimizer.step()
        loss_value = 0.9 * loss_value + 0.1 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(
                f"{name} step {step}/{steps} loss {loss_value:.4f} held-out PSNR {_psnr(vae, held_out):.1f} dB"
                f" ({time.perf_counter() - started:.0f} s)"
            )
    vae.eval()
    return loss_value


@torch.inference_mode()
def _psnr(vae, x: torch.Tensor) -> float:
    """PSNR (dB) of the clamped reconstruction of `x` ([-1, 1]), over the range 2."""
    y = vae.decode(vae.encode(x).latent_dist.mode()).sample
    return 10.0 * math.log10(4.0 / max(float(((y - x) ** 2).mean()), 1e-10))


@torch.inference_mode()
def _raw_latents(vae, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
    return torch.cat(
        [vae.encode(_pixels(frames[i : i + batch])).latent_dist.mode() for i in range(0, len(frames), batch)]
    )


def set_latent_statistics(vae, latents: torch.Tensor) -> None:
    """The config's per-channel `latents_mean`/`latents_std` from the VAE's latents of the training clips."""
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(
        latents_mean=[round(v, 6) for v in mean.tolist()], latents_std=[round(v, 6) for v in std.tolist()]
    )


def train_transformer(
    transformer, latents: torch.Tensor, embeds: torch.Tensor, labels: torch.Tensor, recipe: Recipe, log
) -> float:
    """Flow matching: x_t = (1 - s) x_0 + s noise, predict noise - x_0 at timestep 1000 s, with s uniform
    through the scheduler's shift. `embeds[labels[i]]` is clip i's caption; the last row the empty prompt."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=recipe.transformer_lr, weight_decay=0.01)
    transformer.train()
    empty = len(embeds) - 1
    loss_value, started = float("nan"), time.perf_counter()
    for step in range(recipe.transformer_steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.transformer_lr * _schedule(step, recipe.transformer_steps)
        index = torch.randint(len(latents), (recipe.transformer_batch,), generator=generator)
        x0 = latents[index]
        text = labels[index].clone()
        text[torch.rand(len(index), generator=generator) < recipe.drop_caption] = empty
        noise = torch.randn(x0.shape, generator=generator)
        u = torch.rand(len(index), generator=generator)
        sigma = FLOW_SHIFT * u / (1.0 + (FLOW_SHIFT - 1.0) * u)
        s = sigma.view(-1, 1, 1, 1, 1)
        prediction = transformer(
            hidden_states=(1.0 - s) * x0 + s * noise,
            timestep=sigma * 1000.0,
            encoder_hidden_states=embeds[text],
            return_dict=False,
        )[0]
        loss = torch.nn.functional.mse_loss(prediction, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        loss_value = 0.98 * loss_value + 0.02 * loss.item() if step else loss.item()
        if step % 250 == 0 or step == recipe.transformer_steps - 1:
            log(
                f"transformer step {step}/{recipe.transformer_steps} loss {loss_value:.4f}"
                f" ({time.perf_counter() - started:.0f} s)"
            )
    transformer.eval()
    return loss_value


def train_tiny(
    out: str | Path,
    recipe: Recipe | None = None,
    log: Callable[[str], None] | None = None,
    vae_from: Path | None = None,
) -> dict:
    """Train and write a Wan2.1 T2V checkpoint (diffusers format) to `out`, with `training.json`.
    `vae_from`: the VAE folder an earlier run's VAE stages (`vae`, `video`, `long`) wrote with this recipe
    (`out/vae` before the transformer starts; each stage is seeded on its own, so reusing them is the same
    as running them), to train the rest again."""
    from diffusers import AutoencoderKLWan, WanPipeline

    from wan_triton.pipeline.text import PromptEncoder, torch_encoder
    from wan_triton.pipeline.vae import normalize

    recipe = recipe or Recipe()
    log = log or partial(print, flush=True)
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tokenizer = _tokenizer(VOCAB_SIZE, clips.WORDS)
    text_encoder = _text_encoder(DIMS, recipe.seed)
    torch.manual_seed(recipe.seed + 2)
    vae = AutoencoderKLWan(z_dim=16, attn_scales=[], temperal_downsample=[False, True, True], **DIMS["vae"])
    vae_loss = None
    if vae_from is None:
        for stage, steps in (("vae", recipe.vae_steps), ("video", recipe.video_steps), ("long", recipe.long_steps)):
            if steps:
                vae_loss = train_vae(vae, recipe, log, stage=stage)
        vae.save_pretrained(Path(out) / "vae", safe_serialization=True)  # what `vae_from` takes
    else:
        vae = AutoencoderKLWan.from_pretrained(vae_from).eval()
    vae_s = time.perf_counter() - started

    frames, captions = clips.dataset(recipe.clips, recipe.seed + 1, recipe.frames, recipe.size)
    raw = _raw_latents(vae, frames)
    set_latent_statistics(vae, raw)
    latents = torch.from_numpy(normalize(raw.numpy(), vae.config))  # the pipeline's own arithmetic
    every = clips.captions()
    prompts = PromptEncoder(tokenizer, torch_encoder(text_encoder))
    embeds = torch.from_numpy(prompts([c.text for c in every] + [""]))
    labels = torch.tensor([every.index(c) for c in captions])
    log(f"encoded {len(frames)} clips to latents {tuple(latents.shape[1:])} ({time.perf_counter() - started:.0f} s)")

    transformer = _transformer(DIMS, recipe.seed + 1, in_channels=16, out_channels=16)
    transformer_loss = train_transformer(transformer, latents, embeds, labels, recipe, log)
    losses = {"transformer": round(transformer_loss, 5)}
    if vae_loss is not None:
        losses["vae"] = round(vae_loss, 5)
    if recipe.decoder_steps:  # last: it needs no other stage's randomness, so `finetune_decoder` equals it
        losses["decoder"] = round(train_vae(vae, recipe, log, stage="decoder"), 5)

    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=_scheduler(FLOW_SHIFT),
    )
    path = Path(out)
    pipe.save_pretrained(path, safe_serialization=True)
    manifest = {
        "command": _command(recipe),
        "recipe": asdict(recipe),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "vae_seconds": round(vae_s, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "final_loss": losses,
        **({"vae_from": str(vae_from)} if vae_from else {}),
        "parameters": {
            name: sum(p.numel() for p in part.parameters())
            for name, part in (("text_encoder", text_encoder), ("transformer", transformer), ("vae", vae))
        },
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _command(recipe: Recipe) -> str:
    return "wan-triton train-tiny " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in asdict(recipe).items())


def finetune_decoder(path: str | Path, decoder_steps: int, log: Callable[[str], None] | None = None) -> dict:
    """The decoder stage on a checkpoint `train_tiny` wrote: the same as having trained it with
    `decoder_steps` in one run. The manifest then names that one run's command."""
    from wan_triton.pipeline.checkpoint import Checkpoint

    log = log or partial(print, flush=True)
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    recipe = Recipe(**{**manifest["recipe"], "decoder_steps": decoder_steps})
    started = time.perf_counter()
    vae = Checkpoint.open(path).vae()
    loss = train_vae(vae, recipe, log, stage="decoder")
    vae.save_pretrained(path / "vae", safe_serialization=True)
    manifest.update(command=_command(recipe), recipe=asdict(recipe))
    manifest["final_loss"]["decoder"] = round(loss, 5)
    manifest["seconds"] = round(manifest["seconds"] + time.perf_counter() - started, 1)
    for stale in ("vae_psnr_db", "prompt_accuracy"):
        manifest.pop(stale, None)
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def vae_psnr(checkpoint: str | Path, count: int = 16, seed: int = 1000, frames: int = 17, size: int = 64) -> float:
    """Mean PSNR (dB, over [0, 255]) of the checkpoint's VAE on `count` clips it never saw (another seed),
    through the pipeline's own encode and decode (normalised latents, decoder clamp, postprocess)."""
    from wan_triton.pipeline.checkpoint import Checkpoint
    from wan_triton.pipeline.vae import to_frames, to_video, torch_decode, torch_encode

    vae = Checkpoint.open(checkpoint).vae()
    videos, _ = clips.dataset(count, seed, frames, size)
    scores = []
    for video in videos:
        decoded = to_frames(torch_decode(vae, torch_encode(vae, to_video(video)))) * 255.0
        mse = float(((decoded - video.astype(np.float32)) ** 2).mean())
        scores.append(10.0 * math.log10(255.0**2 / max(mse, 1e-10)))
    return float(np.mean(scores))


def prompt_accuracy(
    checkpoint: str | Path, seeds: int = 8, steps: int = 20, captions: list[clips.Caption] | None = None
) -> dict:
    """Generate each caption (default: one per shape, colour and direction) with `seeds` seeds in process
    at 64x64, 17 frames, and count the videos that show their prompt (`clips.shows`)."""
    from wan_triton.contract import GenerationRequest
    from wan_triton.pipeline import Pipeline

    pipeline = Pipeline.from_checkpoint(checkpoint)
    if captions is None:  # every shape, colour and direction, on alternating backgrounds
        combinations = itertools.product(clips.SHAPES, clips.COLOURS, clips.DIRECTIONS)
        captions = [
            clips.Caption(shape, colour, direction, [b for b in clips.BACKGROUNDS if b != colour][i % 2])
            for i, (shape, colour, direction) in enumerate(combinations)
        ]
    shown, total = 0, 0
    for caption in captions:
        for seed in range(seeds):
            request = GenerationRequest(
                prompt=caption.text, height=64, width=64, num_frames=17, num_inference_steps=steps, seed=seed
            )
            shown += clips.shows(pipeline.frames(request), caption)
            total += 1
    return {"shown": shown, "videos": total, "share": round(shown / total, 3), "steps": steps}
