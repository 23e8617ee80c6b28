"""Benchmark: how the AudioVAE's training length bounds the sound a perfect denoiser could make. The
split's real clips, their video untouched and their audio through an AudioVAE (encode, decode,
Griffin-Lim), scored by the strict scorer (pitch, onsets, sync with the visual impacts). Rows: the
checkpoint's AudioVAE (the VAE stage's, train.audio_vae_steps), log-mel + Griffin-Lim without
a VAE, and AudioVAEs trained here alone for each STEPS with the stage's optimizer, LR schedule,
batch and seed. An AudioVAE step costs ~1% of a VAE-stage step (the VideoVAE is the rest). Not a test.

    scripts/env.sh python bench/audio_vae_steps.py --data D --checkpoint C [--split val] [--steps 400 1200 3000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F


class LogMelOnly:
    """The AudioVAE's log-mel features and Griffin-Lim decode, with no autoencoder between them."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, audio):
        return self.vae.features(audio)

    def decode(self, features):
        return self.vae.features_to_waveform(features)

    def decode_features(self, features):
        return features


@torch.no_grad()
def round_trip(vae, audio: torch.Tensor, batch: int = 8) -> tuple[list, float]:
    """Waveforms through `vae` and the log-mel L1 of the reconstruction."""
    waves = [w.numpy() for k in range(0, len(audio), batch) for w in vae.decode(vae.encode(audio[k:k + batch]))[:, 0]]
    features = LogMelOnly(vae.vae if isinstance(vae, LogMelOnly) else vae)
    l1 = float((vae.decode_features(vae.encode(audio)) - features.encode(audio)).abs().mean())
    return waves, l1


def train_alone(params, cfg, audio: torch.Tensor, steps: int):
    """An AudioVAE trained alone for `steps` as the VAE stage trains it (AdamW, warmup + cosine, clip)."""
    from model import AudioVAE, BatchDraws
    from tasks.training import lr_lambda, make_optimizer

    t = params.train
    torch.manual_seed(params.seed)
    vae = AudioVAE(cfg.audio_vae)
    optimizer = make_optimizer(list(vae.parameters()), t.vae_lr, t.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, steps))
    generator = torch.Generator().manual_seed(params.seed)
    for _ in range(steps):
        idx = torch.randint(len(audio), (t.vae_batch_size,), generator=generator)
        recon, target, posterior = vae(audio[idx], BatchDraws.of(generator))
        loss = F.l1_loss(recon, target) + cfg.audio_vae.kl_weight * posterior.kl()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), t.grad_clip)
        optimizer.step()
        schedule.step()
    return vae.eval()


def main() -> None:
    from model import from_params
    from tasks.cache import MultiModalDataset
    from tasks.checkpoint import load_vaes
    from tasks.evaluate import score_videos, split_specs
    from tasks.params import load_params
    from tasks.training import training_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder with a trained vae/")
    parser.add_argument("--split", default="val")
    parser.add_argument("--steps", type=int, nargs="*", default=[400, 1200, 3000])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    params = load_params(None, args.set)
    cfg = from_params(params)
    dataset = MultiModalDataset(Path(args.data) / "cache")
    train_audio = dataset.tensors()["audio"][torch.tensor(training_rows(dataset.manifest))].float()
    specs, cache, _ = split_specs(args.data, [args.split], params.eval.num_prompts)[args.split]
    videos, audio = [v.float() / 255 for v in cache["video_upsampled"]], cache["audio"].float()
    run = SimpleNamespace(params=params)

    def report(name: str, vae) -> None:
        waves, l1 = round_trip(vae, audio)
        m = score_videos(run, videos, waves, specs)
        s = m["sync"]
        print(f"| {name} | {l1:.4f} | {m['pitch']:.2f} | {s['audio_onsets']} | {s['recall']:.2f} | "
              f"{s['precision']:.2f} | {s['offset_ms_median_abs']} | {m['all_correct']:.2f} |", flush=True)

    print(f"{args.split}: {len(specs)} clips, real video\n")
    print("| audio through | log-mel L1 | pitch | onsets heard | sync recall | sync precision | median offset ms | "
          "all correct |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    _, stage_vae = load_vaes(args.checkpoint, cfg, torch.device("cpu"))
    report("the checkpoint's AudioVAE (VAE stage)", stage_vae)
    report("log-mel + Griffin-Lim only (no VAE)", LogMelOnly(stage_vae))
    for steps in args.steps:
        t0 = time.perf_counter()
        vae = train_alone(params, cfg, train_audio, steps)
        report(f"AudioVAE alone, {steps} steps ({time.perf_counter() - t0:.0f} s)", vae)


if __name__ == "__main__":
    main()
