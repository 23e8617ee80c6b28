"""Benchmark: `tinyveo generate` over a long prompts file (MovieGenBench's size: 1,000 lines), as the
CLI runs it, with the process's resident memory read after every batch. Streaming means the RSS
levels off after the first batches instead of growing with the number of lines; this prints the RSS
after the first batch, at 10%, 50% and the end, the growth over the last 90% of the file, and clips/s.
Not a test (the test suite checks the streaming itself: tests/test_generate.py).

    scripts/env.sh python bench/generate_load.py --checkpoint checkpoints --lines 1000 --formats wav
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    """Resident set size of this process now (Linux /proc), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--formats", default="wav", help="files per clip, as `tinyveo generate --formats`")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: params sample.steps)")
    args = parser.parse_args()

    from model.pipeline import TinyVeo
    from tasks.cli import main as cli_main

    rss: list[float] = []
    real = TinyVeo.generate_content

    def measured(self, *a, **kw):   # RSS after each batch's sampling, before its files are written
        out = real(self, *a, **kw)
        rss.append(rss_mib())
        return out

    TinyVeo.generate_content = measured
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        colors, motions = ["red", "green", "blue", "yellow"], ["glides from left to right", "falls and bounces twice"]
        prompts.write_text("".join(f"A {colors[i % 4]} circle {motions[i % 2]} with a high tone (take {i})\n"
                                   for i in range(args.lines)))
        argv = ["generate", "--checkpoint", args.checkpoint, "--prompts", str(prompts), "--out", f"{tmp}/out",
                "--batch-size", str(args.batch_size), "--formats", args.formats]
        argv += ["--steps", str(args.steps)] if args.steps else []
        start = rss_mib()
        t0 = time.perf_counter()
        code = cli_main(argv)
        seconds = time.perf_counter() - t0
        written = sum(1 for line in (Path(tmp) / "out" / "samples.jsonl").read_text().splitlines()
                      if "error" not in json.loads(line))
    tenth = rss[max(len(rss) // 10 - 1, 0)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"lines {args.lines}, written {written}, exit {code}, batches {len(rss)}, {seconds:.0f} s, "
          f"{written / seconds:.2f} clips/s")
    print(f"RSS MiB: before {start:.0f}, after batch 1 {rss[0]:.0f}, at 10% {tenth:.0f}, "
          f"at 50% {rss[len(rss) // 2]:.0f}, end {rss[-1]:.0f}, max {max(rss):.0f}")
    print(f"growth over the last 90% of the file: {rss[-1] - tenth:+.0f} MiB "
          f"({(rss[-1] - tenth) / max(args.lines * 0.9, 1) * 1024:+.1f} KiB per line)")


if __name__ == "__main__":
    main()
