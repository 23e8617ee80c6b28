"""Benchmark: clips/s of `prepare` (probe + audio extraction + pairs + tensor cache) against bare
ffmpeg decoding + scaling the same 2 s windows (both sizes and the 16 kHz mono audio), measured side
by side in one run, plus the speed-up of `prepare` from 1 to 2 workers. Not a test.

    scripts/env.sh python bench/cache_throughput.py [--clips 40]
    scripts/env.sh python bench/cache_throughput.py --long 10 --clips 12   # ffmpeg-made 10 s clips: 5 windows each

With --long S the clips are S seconds of ffmpeg's testsrc2 (320x240, 25 fps, H.264) with a sweeping
tone (AAC): every whole window is an item, and bare ffmpeg decodes and scales all of them in one
pass per size.
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


def long_clips(folder: Path, count: int, seconds: float) -> Path:
    """`count` distinct ffmpeg-made clips of `seconds`, and their annotations file."""
    import json

    import imageio_ffmpeg

    folder.mkdir(parents=True)
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    for i in range(count):
        subprocess.run([exe, "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={seconds}",
                        "-f", "lavfi", "-i", f"aevalsrc=0.5*sin({200 + 40 * i}*2*PI*t*(1+t/8)):s=44100:d={seconds}",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-vf", f"hue=h={i * 25}",
                        str(folder / f"clip{i:03d}.mp4")], check=True)
    ann = folder / "annotations.json"
    ann.write_text(json.dumps([{"video_path": f"clip{i:03d}.mp4", "summary": f"test pattern {i}"}
                               for i in range(count)]))
    return ann


def main() -> None:
    import json
    from dataclasses import replace

    from tasks.params import load_params
    from tasks.prepare import prepare
    from tasks.synth import synth

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--long", type=float, default=None, metavar="S", help="ffmpeg-made clips of S seconds")
    args = parser.parse_args()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.long:
            ann = long_clips(root / "raw", args.clips, args.long)
        else:
            ann = synth(root / "raw", replace(params.data, synth_num_clips=args.clips, synth_seed=0), workers=2,
                        progress=False)
        clips = [root / "raw" / r["video_path"] for r in json.loads(ann.read_text())]
        windows = max(1, min(int(args.long // params.cache.window_s), params.cache.max_windows_per_clip)) \
            if args.long else 1
        t_ffmpeg = bare_ffmpeg(clips, windows * params.cache.window_s)
        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            prepare(root / "raw", ann, root / f"out{workers}", params.cache, workers=workers, progress=False)
            timings[workers] = time.perf_counter() - start
    n = len(clips)
    kind = f"ffmpeg-made 320x240 {args.long:g} s, {windows} windows each" if args.long else "synthetic 128x128 2.5 s"
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cpus; clips: {n} {kind}")
    print(f"{'what':<34}{'seconds':>9}{'clips/s':>9}")
    print(f"{'bare ffmpeg decode+scale (1 proc)':<34}{t_ffmpeg:>9.2f}{n / t_ffmpeg:>9.1f}")
    for w, t in timings.items():
        print(f"{f'tinyveo prepare, {w} worker(s)':<34}{t:>9.2f}{n / t:>9.1f}")
    print(f"prepare (1 worker) / bare ffmpeg time ratio: {timings[1] / t_ffmpeg:.2f} (goal <= 1.5)")
    print(f"prepare speed-up 1 -> 2 workers: {timings[1] / timings[2]:.2f}x")


if __name__ == "__main__":
    main()
