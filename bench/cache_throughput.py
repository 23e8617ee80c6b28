"""Benchmark: clips/s of `prepare` (probe + audio extraction + pairs + tensor cache) against bare
ffmpeg decoding + scaling the same 2 s windows (both sizes and the 16 kHz mono audio), measured side
by side in one run, plus the speed-up of `prepare` from 1 to 2 workers. Not a test.

    scripts/env.sh python bench/cache_throughput.py [--clips 40]
    scripts/env.sh python bench/cache_throughput.py --long 10 --clips 12   # ffmpeg-made 10 s clips: 5 windows each
    scripts/env.sh python bench/cache_throughput.py --real                 # the mixed real clips of real_clips.py

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


def bare_ffmpeg(clips: list[Path], seconds: list[float]) -> float:
    """Decode+scale `seconds` of each clip to both sizes, and its audio to 16 kHz mono."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    start = time.perf_counter()
    for clip, window_s in zip(clips, seconds):
        for size in (32, 64):
            subprocess.run([exe, "-loglevel", "error", "-t", str(window_s), "-i", str(clip), "-vf", f"scale={size}:{size}",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True)
        subprocess.run([exe, "-loglevel", "error", "-t", str(window_s), "-i", str(clip), "-vn", "-ac", "1", "-ar", "16000",
                        "-f", "s16le", "-"], capture_output=True)   # a clip without sound fails here, as it may
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


def windowed_seconds(clips: list[Path], cache) -> tuple[list[Path], list[float]]:
    """The readable clips and the seconds `prepare` caches of each (its whole windows, at least one)."""
    import av

    from tasks.prepare import window_count

    readable, seconds = [], []
    for clip in clips:
        try:
            with av.open(str(clip)) as container:
                duration = container.duration / 1e6
        except av.error.FFmpegError:
            continue
        readable.append(clip)
        seconds.append(window_count(duration, cache) * cache.window_s)
    return readable, seconds


def main() -> None:
    import json
    from dataclasses import replace

    from tasks.params import load_params
    from tasks.prepare import prepare
    from tasks.synth import synth

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--long", type=float, default=None, metavar="S", help="ffmpeg-made clips of S seconds")
    parser.add_argument("--real", action="store_true", help="the mixed real clips of bench/real_clips.py")
    args = parser.parse_args()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.real:
            from real_clips import build_folder

            ann = build_folder(root / "raw")
        elif args.long:
            ann = long_clips(root / "raw", args.clips, args.long)
        else:
            ann = synth(root / "raw", replace(params.data, synth_num_clips=args.clips, synth_seed=0), workers=2,
                        progress=False)
        clips = [root / "raw" / r["video_path"] for r in json.loads(ann.read_text())]
        clips, seconds = windowed_seconds(clips, params.cache)
        t_ffmpeg = bare_ffmpeg(clips, seconds)
        timings, warm = {}, {}
        for rep, record in enumerate((timings, warm)):   # the second round finds imports done, like a long run
            for workers in (1, 2):
                start = time.perf_counter()
                prepare(root / "raw", ann, root / f"out{workers}-{rep}", params.cache, workers=workers, progress=False)
                record[workers] = time.perf_counter() - start
    n = len(clips)
    kind = ("mixed real clips (bench/real_clips.py)" if args.real else
            f"ffmpeg-made 320x240 {args.long:g} s, {int(seconds[0] // params.cache.window_s)} windows each" if args.long
            else "synthetic 128x128 2.5 s")
    print(f"machine: {platform.machine()}, {__import__('os').cpu_count()} cpus; clips: {n} {kind}")
    print(f"{'what':<34}{'seconds':>9}{'clips/s':>9}")
    print(f"{'bare ffmpeg decode+scale (1 proc)':<34}{t_ffmpeg:>9.2f}{n / t_ffmpeg:>9.1f}")
    for label, record in (("", timings), (", again", warm)):
        for w, t in record.items():
            print(f"{f'tinyveo prepare, {w} worker(s){label}':<34}{t:>9.2f}{n / t:>9.1f}")
    for label, record in (("first run", timings), ("again", warm)):
        print(f"{label}: prepare (1 worker) / bare ffmpeg time ratio {record[1] / t_ffmpeg:.2f} (goal <= 1.5); "
              f"speed-up 1 -> 2 workers {record[1] / record[2]:.2f}x (goal >= 1.8)")


if __name__ == "__main__":
    main()
