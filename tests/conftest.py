"""Shared fixtures. Tests run offline: no hub downloads, no telemetry."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# scripts/test.sh runs two pytest workers on a 2-core machine: one thread each, for them and what they start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# This run's own record of the bf16 measurement (model/precision.py), shared by every process it starts.
os.environ.setdefault("TINYVEO_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="tinyveo-cache-"))

import pytest  # noqa: E402

from tasks.params import load_params  # noqa: E402

# Small but structurally complete: every code path of the default config, at a size that trains in
# seconds on 2 CPU cores.
TINY_OVERRIDES = [
    "vae.video.hidden_channels=8",
    "vae.audio.hidden_channels=16",
    "denoiser.base.dim=32",
    "denoiser.base.depth=1",
    "denoiser.base.heads=2",
    "denoiser.upsampler.dim=32",
    "denoiser.upsampler.depth=1",
    "denoiser.upsampler.heads=2",
    "conditioning.max_text_tokens=8",
]

# The article's layout: 16 frames, video latent (4, F/2, H/8, W/8) = (4, 8, 4, 4) at 32x32, patches (2, 2, 2).
ARTICLE_OVERRIDES = TINY_OVERRIDES + [
    "cache.num_frames=16",
    "vae.video.spatial_downsample=8",
    "denoiser.base.video_patch=[2,2,2]",
    "denoiser.upsampler.video_patch=[2,2,2]",
]


# A tiny but complete training run: seconds on 2 CPU cores.
TRAIN_OVERRIDES = TINY_OVERRIDES + [
    "train.vae_steps=8", "train.audio_vae_steps=null", "train.vae_batch_size=4", "train.vae_upsampled_batch_size=2",
    "train.denoiser_steps=8", "train.batch_size=4", "train.warmup_steps=2", "train.checkpoint_every=4",
    "train.snapshot_every=4", "train.log_every=2", "train.mlflow=false", "train.vae_lr=3e-3", "train.lr=2e-3",
]


def train(data, out, params, *, stages=("vae", "denoiser"), resume: bool = False, stop_after: int | None = None):
    """The three training steps as `tinyveo train` runs them: {stage: its summary}."""
    from tasks.encode_latents import encode_latents
    from tasks.train_denoiser import train_denoiser
    from tasks.train_vae import train_vae

    out_summary = {}
    if "vae" in stages:
        out_summary["vae"] = train_vae(data, out, params, resume=resume, stop_after=stop_after, progress=False)
        if stop_after is not None and out_summary["vae"]["steps"] < params.train.vae_stage_steps:
            return out_summary
    if "denoiser" in stages:
        encode_latents(data, out, params)
        out_summary["denoiser"] = train_denoiser(data, out, params, resume=resume, stop_after=stop_after,
                                                 progress=False)
    return out_summary


def synth_clips(folder, num_clips: int, seed: int, **extra):
    from tasks.params import DataParams
    from tasks.synth import synth

    return synth(folder, DataParams(synth_num_clips=num_clips, synth_seed=seed, **extra), workers=2, progress=False)


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
    """A prepared data folder (pairs + tensor cache) over 24 built-in clips, some held out and some i2v."""
    from tasks.prepare import prepare

    root = tmp_path_factory.mktemp("prepared")
    ann = synth_clips(root / "raw", 24, 1)
    prepare(root / "raw", ann, root / "data", load_params().cache, workers=2, progress=False)
    return root / "data"


@pytest.fixture(scope="session")
def trained_checkpoint(prepared_data, tmp_path_factory):
    """A checkpoint folder from a tiny training run over `prepared_data` (no MLflow)."""
    out = tmp_path_factory.mktemp("trained") / "ckpt"
    train(prepared_data, out, load_params(overrides=TRAIN_OVERRIDES))
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, proc, log, timeout: float) -> None:
    """Poll `url` until it answers 200; fail with the server's log tail if it dies or times out."""
    import time
    import urllib.request
    from pathlib import Path

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.time() < deadline and proc.poll() is None, Path(log).read_text()[-3000:]
        time.sleep(1)


def chromium() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    raise AssertionError("headless Chromium is not installed (.ci/run installs Debian's chromium package)")


def stop_process_group(proc) -> None:
    """End a process started with start_new_session=True and everything it spawned (server workers
    that outlive a SIGTERM to their parent included)."""
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture
def params():
    return load_params()


@pytest.fixture
def tiny_params():
    return load_params(overrides=TINY_OVERRIDES)


@pytest.fixture
def article_params():
    return load_params(overrides=ARTICLE_OVERRIDES)


def build_tiny_clip(folder) -> None:
    """A real CLIP tokenizer (vocabulary built from open-clip-torch's shipped BPE file) with a tiny
    randomly initialised CLIPModel, saved as a local checkpoint folder. Nothing is downloaded."""
    import gzip
    import json
    from pathlib import Path

    import open_clip
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from open_clip.tokenizer import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(folder))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    build_tiny_clip(folder)
    return folder
