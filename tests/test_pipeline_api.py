"""TinyVeoPipeline: diffusers' save/load round trip gives bit-identical samples; `tinyveo generate`
and `tinyveo export` use it; `python -m tinyveo` and --version work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from tasks.checkpoint import load_pipeline
from tasks.params import load_params

PROMPT = "A red circle bounces with a high tone"


def sample(pipe, prompt=PROMPT, **kwargs):
    return pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(3), **kwargs)


def test_pipeline_from_a_checkpoint_samples_as_the_training_checkpoint_does(trained_checkpoint):
    from tinyveo import TinyVeoPipeline

    pipe = TinyVeoPipeline.from_pretrained(trained_checkpoint)
    out = sample(pipe)
    tinyveo, params = load_pipeline(trained_checkpoint, "cpu")
    s = params.sample
    ref = tinyveo.generate_content(PROMPT, steps=2, seed=3, sampler=s.sampler, guidance=s.guidance,
                                   guidance_interval=tuple(s.guidance_interval),
                                   upsampler_noise_level=s.upsampler_noise_level, precision=s.precision)
    assert out.frames.shape == (1, 32, 64, 64, 3) and out.audio.shape == (1, 32000)
    assert (out.fps, out.sample_rate) == (ref.fps, ref.sample_rate)
    assert np.array_equal(out.frames, ref.video.permute(0, 2, 3, 4, 1).numpy())
    assert np.array_equal(out.audio, ref.audio.numpy())
    assert pipe.to("cpu") is pipe and pipe.device.type == "cpu"


def test_save_pretrained_then_from_pretrained_gives_bit_identical_samples(trained_checkpoint, tmp_path):
    from diffusers import DiffusionPipeline

    from tinyveo import TinyVeoPipeline

    pipe = TinyVeoPipeline.from_pretrained(trained_checkpoint)
    pipe.save_pretrained(tmp_path / "exported")
    files = {p.relative_to(tmp_path / "exported").as_posix() for p in (tmp_path / "exported").rglob("*") if p.is_file()}
    for component in ("base", "upsampler", "video_vae", "audio_vae"):
        assert f"{component}/diffusion_pytorch_model.safetensors" in files and f"{component}/config.json" in files
    assert "text_encoder/model.safetensors" in files and "model_index.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)   # safetensors only
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "## Training" in card and "## Limits" in card and "steps 8" in card

    again = TinyVeoPipeline.from_pretrained(tmp_path / "exported")
    assert isinstance(again, DiffusionPipeline)
    image = Image.fromarray((np.indices((40, 40)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    for kwargs in ({}, {"image": image}, {"guidance_scale": 1.0, "output_type": "pt"}):
        a, b = sample(pipe, **kwargs), sample(again, **kwargs)
        assert torch.equal(torch.as_tensor(a.frames), torch.as_tensor(b.frames)), kwargs
        assert torch.equal(torch.as_tensor(a.audio), torch.as_tensor(b.audio)), kwargs
    other = again(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(4))
    assert not np.array_equal(other.frames, sample(again).frames)   # the generator is what decides


def test_generate_and_export_use_the_pipeline(trained_checkpoint, tmp_path):
    from tasks.export import export
    from tasks.generate import generate
    from tasks.samples import PromptSpec

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"test": {"all_correct": 0.25, "sync_recall": 0.5}}))
    folder = export(trained_checkpoint, tmp_path / "exported", metrics)
    assert "test.all_correct: 0.25" in (folder / "README.md").read_text()
    params = load_params(overrides=["sample.steps=2"])
    specs = [PromptSpec(PROMPT), PromptSpec("A blue square slides to the left with a low tone")]
    waves = {}
    for name, source in (("checkpoint", trained_checkpoint), ("exported", folder)):
        records = generate(source, specs, tmp_path / name, params, progress=False, formats=("wav",))
        waves[name] = [sf.read(r["wav"])[0] for r in records]
    assert all(np.array_equal(a, b) for a, b in zip(waves["checkpoint"], waves["exported"]))


def test_python_m_tinyveo_and_version(tmp_path):
    from tinyveo import __version__

    out = subprocess.run([sys.executable, "-m", "tinyveo", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tinyveo {__version__}"
    helps = subprocess.run([sys.executable, "-m", "tinyveo", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "export", "demo", "report"):
        assert command in helps.stdout
    bad = subprocess.run([sys.executable, "-m", "tinyveo", "generate", "--checkpoint", str(tmp_path / "nope"),
                          "--prompt", "x", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and str(tmp_path / "nope") in bad.stderr and "Traceback" not in bad.stderr


def test_bash_completion_completes_commands_and_their_options(tmp_path):
    script = tmp_path / "complete.sh"
    script.write_text('eval "$(python -m tinyveo completion)"\n'
                      'tinyveo() { python -m tinyveo "$@"; }\n'
                      'COMP_WORDS=(tinyveo rep); COMP_CWORD=1; _tinyveo; echo "${COMPREPLY[*]}"\n'
                      'COMP_WORDS=(tinyveo export --me); COMP_CWORD=2; _tinyveo; echo "${COMPREPLY[*]}"\n')
    env = {**__import__("os").environ, "PATH": f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.splitlines() == ["report", "--metrics"], out.stdout + out.stderr


@pytest.mark.parametrize("bad", ["empty", "garbage"])
def test_a_broken_exported_folder_is_one_line(trained_checkpoint, tmp_path, bad):
    from tasks.generate import load
    from tasks.runtime import UserError

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "model_index.json").write_text("" if bad == "empty" else "{not json")
    with pytest.raises(UserError, match="exported"):
        load(folder, "cpu")


def test_a_checkpoint_saved_before_the_caption_switches_loads_as_it_was_trained(prepared_data, trained_checkpoint,
                                                                                 tmp_path):
    """Configs written before `text_refiner_kernel` and `sentence_in_adaln` existed were trained with
    width 3 and the sentence vector; their defaults changed since, so a config without them must not
    take the new ones (a training checkpoint through load_pipeline, a saved pipeline through diffusers)."""
    import shutil

    from conftest import TRAIN_OVERRIDES, train
    from tasks.checkpoint import read_config
    from tinyveo import TinyVeoPipeline

    old = [f"denoiser.{m}.{k}" for m in ("base", "upsampler") for k in ("text_refiner_kernel=3", "sentence_in_adaln=true")]
    ckpt = tmp_path / "old"
    shutil.copytree(trained_checkpoint / "vae", ckpt / "vae")
    train(prepared_data, ckpt, load_params(overrides=TRAIN_OVERRIDES + old), stages=("denoiser",))
    exported = tmp_path / "exported"
    TinyVeoPipeline.from_pretrained(ckpt).save_pretrained(exported)
    before = sample(TinyVeoPipeline.from_pretrained(exported))

    def drop_the_new_fields(path: Path, settings_of) -> None:
        config = json.loads(path.read_text())
        for settings in settings_of(config):
            assert (settings.pop("text_refiner_kernel"), settings.pop("sentence_in_adaln")) == (3, True)
        path.write_text(json.dumps(config))

    drop_the_new_fields(ckpt / "denoiser" / "config.json", lambda c: c["params"]["denoiser"].values())
    for component in ("base", "upsampler"):
        drop_the_new_fields(exported / component / "config.json", lambda c: [c["settings"]])
    params, _ = read_config(ckpt)
    assert (params.denoiser.base.text_refiner_kernel, params.denoiser.upsampler.sentence_in_adaln) == (3, True)
    tinyveo, _ = load_pipeline(ckpt, "cpu")   # the width-3 refiner weights fit
    assert tinyveo.base.config.text_refiner_kernel == 3 and tinyveo.upsampler.config.sentence_in_adaln
    after = sample(TinyVeoPipeline.from_pretrained(exported))
    assert np.array_equal(before.frames, after.frames) and np.array_equal(before.audio, after.audio)
