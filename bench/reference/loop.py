"""The article's training loop and cascaded `generate_content`, over tinyveo's tensor cache.

Kept as written (defects marked `DEFECT`): one AdamW over the VAEs, both denoisers and the encoder;
CosineAnnealingLR over NUM_EPOCHS x len(loader); epsilon prediction with linear betas; batch 1; the
upsampler trained on the *noisy* base latent but sampled on the clean one; no condition dropout and no
guidance; 50 DDPM steps per stage. Differences, each for fairness or to run offline:
- data: tinyveo's MultiModalDataset over the cache (the same items tinyveo trains on), so video and
  audio cover the same 2 s window (the article's first-16-frames vs first-2-s defect is not reproduced);
- training stops at a wall-clock budget (bench/quality.py gives it tinyveo's time);
- the article adds CLIP image features to the context for i2v items; the default conditioning backend
  (MiniLM) has no image tower, so i2v items are conditioned on their caption only;
- `generate_content` takes a list of prompts and samples them as one batch (per-sample identical maths).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader

from .article import (AUDIO_LATENT_CHANNELS, AUDIO_LATENT_SAMPLES, BASE_VIDEO_FRAMES, BASE_VIDEO_LATENT_H,
                      BASE_VIDEO_LATENT_W, BATCH_SIZE, DENOISER_TIMESTEPS, GRADIENT_CLIP_NORM, INFERENCE_STEPS, LEARNING_RATE,
                      UPSAMPLED_VIDEO_LATENT_H, UPSAMPLED_VIDEO_LATENT_W, VIDEO_LATENT_CHANNELS, VIDEO_LATENT_FRAMES,
                      AudioVAE, JointDenoisingTransformer, ReferenceConfig, VideoVAE, preprocess_audio_tensor)

NUM_EPOCHS = 10


class ArticleModel(nn.Module):
    """The article's five modules plus its noise scheduler."""

    def __init__(self, encoder, config: ReferenceConfig | None = None):
        super().__init__()
        from diffusers import DDPMScheduler

        config = config or ReferenceConfig(text_dim=encoder.text_dim)
        self.config = config
        self.video_vae = VideoVAE()
        self.audio_vae = AudioVAE()
        self.base_denoiser = JointDenoisingTransformer(is_upsampler=False, config=config)
        self.upsampler_denoiser = JointDenoisingTransformer(is_upsampler=True, config=config)
        self.conditioning_encoder = encoder
        # DEFECT: epsilon prediction with linear betas (diverged under DPM-Solver++ in a CPU prototype).
        # tinyveo: x0-prediction with the cosine schedule.
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=DENOISER_TIMESTEPS, beta_schedule="linear")

    def context(self, captions: Sequence[str]) -> torch.Tensor:
        return self.conditioning_encoder.get_text_embeds(list(captions)).pooled


def article_item(item: dict) -> dict:
    """tinyveo's cached item with the article's 16 frames (evenly over the same window when the cache
    holds more) and its audio normalisation (peak to 1, per clip)."""
    stride = max(item["video_base"].shape[1] // BASE_VIDEO_FRAMES, 1)
    frames = {k: item[k][:, ::stride][:, :BASE_VIDEO_FRAMES] for k in ("video_base", "video_upsampled")}
    return {**item, **frames, "audio": preprocess_audio_tensor(item["audio"])}


def collate(items: list[dict]) -> dict:
    return {
        "modality": [i["modality"] for i in items],
        "video_base": torch.stack([i["video_base"] for i in items]),
        "video_upsampled": torch.stack([i["video_upsampled"] for i in items]),
        "audio": torch.stack([i["audio"] for i in items]),
        "raw_caption": [i["raw_caption"] for i in items],
    }


class ArticleDataset(torch.utils.data.Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int) -> dict:
        return article_item(self.base[idx])


def article_loss(model: ArticleModel, video_latents_base, video_latents_upsampled, audio_latents, context,
                 timesteps, loss_fn=nn.MSELoss()) -> torch.Tensor:
    """The article's combined loss for one batch of (already encoded) latents: base video + audio, then
    the upsampler. DEFECT: the upsampler is conditioned on the *noisy* base latent at the same timestep,
    but sampled on the clean one. tinyveo: noise-conditioning augmentation at a level the model is
    told, the same at sampling."""
    noise_scheduler = model.noise_scheduler
    noise_vid_base = torch.randn_like(video_latents_base)
    noisy_video_base = noise_scheduler.add_noise(video_latents_base, noise_vid_base, timesteps)
    noise_aud = torch.randn_like(audio_latents)
    noisy_audio = noise_scheduler.add_noise(audio_latents, noise_aud, timesteps)
    pred_noise_vid_base, pred_noise_aud = model.base_denoiser(noisy_video_base, noisy_audio, timesteps, context)
    loss_base_vid = loss_fn(pred_noise_vid_base, noise_vid_base)
    loss_aud = loss_fn(pred_noise_aud, noise_aud)

    noise_vid_up = torch.randn_like(video_latents_upsampled)
    noisy_video_upsampled = noise_scheduler.add_noise(video_latents_upsampled, noise_vid_up, timesteps)
    pred_noise_vid_up, _ = model.upsampler_denoiser(noisy_video_upsampled, torch.zeros_like(noisy_audio), timesteps,
                                                    context, low_res_video=noisy_video_base)
    loss_upsample_vid = loss_fn(pred_noise_vid_up, noise_vid_up)
    return loss_base_vid + loss_aud + loss_upsample_vid


@dataclass
class ReferenceTrainResult:
    steps: int
    seconds: float
    epochs: float
    losses: list[float] = field(default_factory=list)


def train_reference(model: ArticleModel, cache_dir: str | Path, *, budget_s: float, batch_size: int = BATCH_SIZE,
                    seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> ReferenceTrainResult:
    """The article's loop, stopped when the wall-clock budget is spent (or after NUM_EPOCHS)."""
    from tqdm.auto import tqdm

    from tasks.cache import MultiModalDataset

    torch.manual_seed(seed)
    device = torch.device(device)
    model.to(device)
    dataset = ArticleDataset(MultiModalDataset(cache_dir, split="train"))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    video_vae, audio_vae = model.video_vae, model.audio_vae
    base_denoiser, upsampler_denoiser = model.base_denoiser, model.upsampler_denoiser
    noise_scheduler = model.noise_scheduler
    # DEFECT: one optimizer over everything, the VAEs included, although they never get a gradient
    # (encoded under no_grad below). tinyveo: a VAE stage, then the denoisers on cached latents.
    all_params = (list(video_vae.parameters()) + list(audio_vae.parameters()) + list(base_denoiser.parameters())
                  + list(upsampler_denoiser.parameters()) + list(model.conditioning_encoder.parameters()))
    optimizer = optim.AdamW(all_params, lr=LEARNING_RATE)
    loss_fn = nn.MSELoss()
    lr_scheduler = CosineAnnealingLR(optimizer, T_max=len(loader) * NUM_EPOCHS)
    for m in (video_vae, audio_vae, base_denoiser, upsampler_denoiser):
        m.train()

    losses: list[float] = []
    steps = 0
    start = time.perf_counter()
    bar = tqdm(total=int(budget_s), desc="reference (article) training", unit="s", disable=not progress)
    done = False
    for epoch in range(NUM_EPOCHS):
        for batch in loader:
            optimizer.zero_grad()
            modality = batch["modality"]
            video_base, video_upsampled, audio = (batch[k].to(device) for k in ("video_base", "video_upsampled", "audio"))
            raw_caption = batch["raw_caption"]
            b = video_base.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), device=device).long()
            with torch.no_grad():
                video_latents_base = video_vae.encode(video_base)
                video_latents_upsampled = video_vae.encode(video_upsampled)
                audio_latents = audio_vae.encode(audio)
                text_embeds = model.context(raw_caption)
            context = text_embeds
            if modality[0] == "i2v":
                pass  # the article adds CLIP image features here; the MiniLM backend has none (see module doc)

            loss = article_loss(model, video_latents_base, video_latents_upsampled, audio_latents, context, timesteps,
                                loss_fn)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(all_params, GRADIENT_CLIP_NORM)
            optimizer.step()
            lr_scheduler.step()
            losses.append(float(loss.item()))
            steps += 1
            elapsed = time.perf_counter() - start
            bar.n = min(int(elapsed), bar.total)
            bar.set_postfix(step=steps, loss=f"{losses[-1]:.3f}", refresh=False)
            bar.refresh()
            if elapsed >= budget_s:
                done = True
                break
        if done:
            break
    bar.close()
    seconds = time.perf_counter() - start
    return ReferenceTrainResult(steps, seconds, steps * batch_size / max(len(dataset), 1), losses)


@torch.no_grad()
def generate_content(model: ArticleModel, prompts: Sequence[str], steps: int = INFERENCE_STEPS,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The article's cascade: 50 DDPM steps for base video + audio, 50 for the upsampler on the clean
    base latent, then the (untrained) VAE decoders. Returns video (B, 3, 16, 64, 64) in [0, 1] and
    audio (B, 32000) in [-1, 1]. DEFECT: no guidance (and no null condition to guide with)."""
    for m in (model.video_vae, model.audio_vae, model.base_denoiser, model.upsampler_denoiser):
        m.eval()
    device = next(model.base_denoiser.parameters()).device
    noise_scheduler = model.noise_scheduler
    context = model.context(prompts).to(device)
    b = context.shape[0]

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    vid_latents_base = randn(b, VIDEO_LATENT_CHANNELS, VIDEO_LATENT_FRAMES, BASE_VIDEO_LATENT_H, BASE_VIDEO_LATENT_W)
    aud_latents = randn(b, AUDIO_LATENT_CHANNELS, AUDIO_LATENT_SAMPLES)
    noise_scheduler.set_timesteps(steps)
    for t in noise_scheduler.timesteps:
        ts = t.repeat(b).to(device)
        pred_vid_noise, pred_aud_noise = model.base_denoiser(vid_latents_base, aud_latents, ts, context)
        vid_latents_base = noise_scheduler.step(pred_vid_noise, t, vid_latents_base, generator=generator).prev_sample
        aud_latents = noise_scheduler.step(pred_aud_noise, t, aud_latents, generator=generator).prev_sample
    vid_latents_upsampled = randn(b, VIDEO_LATENT_CHANNELS, VIDEO_LATENT_FRAMES, UPSAMPLED_VIDEO_LATENT_H,
                                  UPSAMPLED_VIDEO_LATENT_W)
    for t in noise_scheduler.timesteps:
        ts = t.repeat(b).to(device)
        pred_vid_noise_up, _ = model.upsampler_denoiser(vid_latents_upsampled, torch.zeros_like(aud_latents), ts, context,
                                                        low_res_video=vid_latents_base)
        vid_latents_upsampled = noise_scheduler.step(pred_vid_noise_up, t, vid_latents_upsampled,
                                                     generator=generator).prev_sample
    final_video = model.video_vae.decode(vid_latents_upsampled)
    final_audio = model.audio_vae.decode(aud_latents)
    return final_video.clamp(0, 1).cpu(), final_audio[:, 0].cpu()
