"""The README's pictures of the demo page and the run report, from a trained checkpoint and its outputs.

    scripts/env.sh python scripts/screenshots.py --checkpoint checkpoints --outputs outputs --out docs

Starts `tinyveo demo` on 127.0.0.1, generates one clip in headless Chromium (the system's, driven by
Playwright), screenshots the page, stops the server; then builds OUTPUTS/report.html and screenshots it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPT = "A green circle bounces on the floor, making a high ping"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the demo did not start (exit code {proc.poll()})")


def browser(playwright):
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if chromium is None:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])


def demo_screenshot(checkpoint: str, out: Path, steps: int) -> None:
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tinyveo", "demo", "--checkpoint", checkpoint, "--port", str(port)],
                              start_new_session=True)
    try:
        wait(f"http://127.0.0.1:{port}/", server)
        with sync_playwright() as p:
            b = browser(p)
            page = b.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#steps input[type=number]").fill(str(steps))
            page.locator("#steps input[type=number]").press("Enter")
            page.locator("#generate").click()
            page.wait_for_selector("#files a[download$='.wav']", timeout=300_000)
            page.wait_for_timeout(1500)   # the video's first frame
            page.screenshot(path=str(out / "demo.png"), full_page=True)
            b.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def report_screenshot(outputs: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tasks.report import build_report

    page_path = build_report(outputs)
    with sync_playwright() as p:
        b = browser(p)
        page = b.new_page(viewport={"width": 1200, "height": 1700})
        page.goto(page_path.as_uri())
        page.wait_for_function("() => [...document.querySelectorAll('video')].every(v => v.readyState >= 2)",
                               timeout=60_000)
        page.screenshot(path=str(out / "report.png"))   # the top of the page: scores, training, first plots
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints")
    parser.add_argument("--outputs", default="outputs")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    demo_screenshot(args.checkpoint, out, args.steps)
    report_screenshot(args.outputs, out)
    print(f"wrote {out / 'demo.png'} and {out / 'report.png'}")


if __name__ == "__main__":
    main()
