"""Benchmark: clips/s of `prepare` (probe + audio extraction + pairs + tensor cache) against bare
ffmpeg decoding + scaling the same 2 s windows (both sizes and the 16 kHz mono audio), measured side
by side in one run, plus the speed-up of `prepare` from 1 to 2 workers. Not a test.

    scripts/env.sh python bench/cache_throughput.py [--clips 40]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path


def bare_ffmpeg(clips: list[Path], window_s: float) -> float:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    start = time.perf_counter()
    for clip in clips:
        for size in (32, 64):
            subprocess.run([exe, "-loglevel", "error", "-t", str(window_s), "-i", str(clip), "-vf", f"scale={size}:{size}",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True)
        subprocess.run([exe, "-loglevel", "error", "-t", str(window_s), "-i", str(clip), "-vn", "-ac", "1", "-ar", "16000",
                        "-f", "s16le", "-"], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    import json
    from dataclasses import replace

    from tasks.params import load_params
    from tasks.prepare import prepare
    from tasks.synth import synth

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    args = parser.parse_args()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ann = synth(root / "raw", replace(params.data, synth_num_clips=args.clips, synth_seed=0), workers=2,
                    progress=False)
        clips = [root / "raw" / r["video_path"] for r in json.loads(ann.read_text())]
        t_ffmpeg = bare_ffmpeg(clips, params.cache.window_s)
        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            prepare(root / "raw", ann, root / f"out{workers}", params.cache, workers=workers, progress=False)
            timings[workers] = time.perf_counter() - start
    n = len(clips)
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cpus; clips: {n} synthetic 128x128 2.5 s")
    print(f"{'what':<34}{'seconds':>9}{'clips/s':>9}")
    print(f"{'bare ffmpeg decode+scale (1 proc)':<34}{t_ffmpeg:>9.2f}{n / t_ffmpeg:>9.1f}")
    for w, t in timings.items():
        print(f"{f'tinyveo prepare, {w} worker(s)':<34}{t:>9.2f}{n / t:>9.1f}")
    print(f"prepare (1 worker) / bare ffmpeg time ratio: {timings[1] / t_ffmpeg:.2f} (goal <= 1.5)")
    print(f"prepare speed-up 1 -> 2 workers: {timings[1] / timings[2]:.2f}x")


if __name__ == "__main__":
    main()
