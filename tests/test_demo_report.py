"""The demo page driven in headless Chromium, and the run report opened there.

The demo test starts `tinyveo demo` on 127.0.0.1, types a prompt, presses Generate, waits for the
video, and checks the wav it serves is the one TinyVeoPipeline gives for that seed. The report test
builds outputs/ from a tiny run and checks the page's clips and plots load in the browser."""
from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from conftest import chromium, free_port, stop_process_group, wait_for_health
from tasks.params import load_params

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
PROMPT = "A red circle bounces with a high tone"
STEPS = 40   # per stage: long enough on the tiny model for the progress bar to be seen


def browser(playwright):
    return playwright.chromium.launch(executable_path=chromium(),
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


@pytest.mark.slow
def test_demo_page_in_chromium_returns_the_pipelines_clip_for_the_seed(trained_checkpoint, tmp_path):
    from playwright.sync_api import sync_playwright

    from tinyveo import TinyVeoPipeline
    from tinyveo.demo import generate_files

    port = free_port()
    log = tmp_path / "demo.log"
    server = subprocess.Popen([sys.executable, "-m", "tinyveo", "demo", "--checkpoint", str(trained_checkpoint),
                               "--port", str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/", server, log, timeout=120)
        with sync_playwright() as p:
            b = browser(p)
            page = b.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#prompt textarea").fill(PROMPT)
            for field, value in (("#steps input[type=number]", str(STEPS)), ("#seed input", "7")):
                page.locator(field).fill(value)
                page.locator(field).press("Enter")
            page.locator("#generate").click()
            # the progress bar while it samples: base + upsampler steps
            page.wait_for_function(f"() => /\\d+\\/{2 * STEPS} steps/.test(document.querySelector('#clip').innerText)",
                                   timeout=60_000, polling=50)
            page.wait_for_selector("#clip video[src]", timeout=120_000)
            page.wait_for_selector("#files a[download$='.wav']", timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            wav_url = page.locator("#files a[download$='.wav']").get_attribute("href")
            served = page.request.get(wav_url).body()
            assert page.locator("#grid img").count() == 1 and page.locator("#sound").count() == 1
            b.close()
    finally:
        stop_process_group(server)
    pipe = TinyVeoPipeline.from_pretrained(trained_checkpoint)
    direct = generate_files(pipe, PROMPT, None, STEPS, pipe.config.sample_defaults["guidance"], 7, tmp_path / "direct")
    assert served == Path(direct["wav"]).read_bytes()
    other = generate_files(pipe, PROMPT, None, STEPS, pipe.config.sample_defaults["guidance"], 8, tmp_path / "other")
    assert Path(other["wav"]).read_bytes() != served   # the seed typed on the page is the one used


def test_demo_errors_are_clear(trained_checkpoint, tmp_path):
    import gradio as gr

    from tinyveo import TinyVeoPipeline
    from tinyveo.demo import make_handler

    missing = subprocess.run([sys.executable, "-m", "tinyveo", "demo", "--checkpoint", str(tmp_path / "nope"),
                              "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr and "Traceback" not in missing.stderr
    run = make_handler(TinyVeoPipeline.from_pretrained(trained_checkpoint), tmp_path / "out")
    bad = tmp_path / "photo.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error, match="photo.png: unreadable image"):
        run(PROMPT, str(bad), 2, 4.0, 0)
    with pytest.raises(gr.Error, match="type a prompt"):
        run("  ", None, 2, 4.0, 0)


@pytest.mark.slow
def test_report_page_shows_scores_plots_and_clips_in_chromium(trained_checkpoint, prepared_data, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from tasks.cli import _copy_metrics
    from tasks.evaluate import evaluate
    from tasks.generate import generate
    from tasks.report import build_report
    from tasks.samples import PromptSpec

    outputs = tmp_path / "outputs"
    params = load_params(overrides=["sample.steps=2", "eval.num_prompts=3", "eval.num_i2v=1",
                                    "eval.num_saved_samples=2", "eval.num_vae_clips=2"])
    for stage in ("vae", "denoiser"):
        _copy_metrics(Namespace(metrics_dir=str(outputs / "train"), out=str(trained_checkpoint)), stage)
    evaluate(trained_checkpoint, outputs / "eval", params, data=prepared_data, progress=False, track=False)
    generate(trained_checkpoint, [PromptSpec(PROMPT)], outputs / "samples", params, progress=False)
    page_path = build_report(outputs)
    numbers = json.loads((outputs / "eval" / "metrics.json").read_text())
    with sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        videos = page.eval_on_selector_all("video", "els => els.map(e => e.getAttribute('src'))")
        page.wait_for_function("() => [...document.querySelectorAll('video')].every(v => v.readyState >= 1)",
                               timeout=30_000)   # every clip's metadata loaded: the links resolve
        text = page.inner_text("body")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        b.close()
    loaded = {Path(src).name for src, width in images if width > 0}
    assert {"loss_vae.png", "loss_denoiser.png", "accuracy.png", "samples_grid.png", "curve.png"} <= loaded, images
    clips = sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*.mp4"))
    assert len(clips) >= 1 + 2 * 2 and sorted(videos) == clips   # generate's, then 2 t2v per split and the i2v
    assert f"{numbers['test']['all_correct']:.3f}" in text
    assert all(name in text for name in numbers["test"]) and "all_correct" in numbers["test"]
    assert "(real clips)" not in text and "dvc repro" not in text.split("Plots")[0]   # no reference run here
    with Image.open(ARTIFACTS / "report.png") as shot:
        assert shot.height > 1500


def test_report_names_what_is_missing(tmp_path):
    from tasks.report import build_report
    from tasks.runtime import UserError

    with pytest.raises(UserError, match="no outputs folder"):
        build_report(tmp_path / "none")
    (tmp_path / "outputs").mkdir()
    text = build_report(tmp_path / "outputs").read_text()
    assert "No evaluation yet: run <code>dvc repro evaluate</code>" in text
    assert "No generated clips yet" in text
