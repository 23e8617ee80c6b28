"""The smoke run learns; the CLI is fast to start and honest about its subcommands; params load."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.params import ParamsError, flatten, load_params
from tasks.smoke import run_smoke

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_lowers_every_loss(tiny_params):
    result = run_smoke(tiny_params, steps=12, batch_size=2, seed=0, use_text_encoder=False, progress=False)
    assert set(result.before) == {"video_vae", "audio_vae", "base", "upsampler"}
    assert all(result.improved().values()), (result.before, result.after)


def test_smoke_cli_with_the_real_text_encoder():
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "smoke", "--steps", "6", "--batch-size", "2",
         "--set", "denoiser.base.dim=32", "--set", "denoiser.base.depth=1",
         "--set", "denoiser.upsampler.dim=32", "--set", "denoiser.upsampler.depth=1",
         "--set", "vae.video.hidden_channels=8", "--set", "vae.audio.hidden_channels=16"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke run passed" in proc.stdout


def test_help_lists_only_existing_subcommands_and_imports_no_heavy_module():
    code = (
        "import sys, contextlib, io\n"
        "from flows.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'prefect', 'mlflow') if m in sys.modules]\n"
        "print(buf.getvalue()); print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout  # --help stays fast because nothing heavy is imported
    from flows.cli import COMMANDS

    for name in ("synth", "prepare", "train-vae", "encode-latents", "train-denoiser", "train", "generate", "evaluate",
                 "smoke", "pipeline", "serve"):
        assert name in COMMANDS and f"    {name}" in proc.stdout


def test_bad_override_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "smoke", "--set", "denoiser.base.dpth=2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "denoiser.base.dpth" in lines[0] and "known here" in lines[0]
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", "smoke", "--set", "train.smoke_steps=many"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "train.smoke_steps: expected int" in lines[0], lines


def test_params_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [unclosed\n")
    with pytest.raises(ParamsError, match=str(bad)):
        load_params(bad)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_params_groups_and_flatten():
    import yaml

    from tasks.params import DEFAULT_PARAMS, Params

    params = load_params()
    raw = yaml.safe_load(DEFAULT_PARAMS.read_text())
    assert set(params.to_dict()) == set(raw) and params.to_dict() == Params.from_dict(raw).to_dict()
    flat = flatten(params.to_dict())
    assert flat["denoiser.base.dim"] == params.denoiser.base.dim
    overridden = load_params(overrides=["train.lr=0.5", "denoiser.base.video_patch=[4,2,2]"])
    assert overridden.train.lr == 0.5 and overridden.denoiser.base.video_patch == (4, 2, 2)


def test_params_are_typed_and_the_defaults_are_the_shipped_model():
    from model.config import ModelConfig, from_params
    from tasks.params import Params

    assert load_params() == Params()  # params.yaml and the dataclass defaults describe the same model
    assert from_params(load_params()) == ModelConfig()   # ... and so do the model config's derived defaults
    assert load_params(overrides=["eval.splits=test"]).eval.splits == ("test",)
    for bad, message in [("denoiser.base.dim=1.5", "denoiser.base.dim: expected int"),
                         ("train.mlflow=3", "train.mlflow: expected bool"),
                         ("sample.guidance_interval=[1]", "expected a list of 2")]:
        with pytest.raises(ParamsError, match=message):
            load_params(overrides=[bad])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_layering_model_imports_no_tasks_or_flows_and_tasks_no_flows():
    for path in (ROOT / "model").rglob("*.py"):
        assert not _imports(path) & {"tasks", "flows"}, path
    for path in (ROOT / "tasks").rglob("*.py"):
        assert "flows" not in _imports(path), path
