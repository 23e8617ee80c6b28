"""What a checkpoint draws for each expected object of a split: absent, a blob, or which shape.

    scripts/env.sh python bench/drawn_objects.py --checkpoint CKPT --data DATA [--split val] [--out drawn.tsv]

The scorer says an object's shape is wrong; this says how: its color is not on screen in at least
90% of the frames (`absent`), no shape fits the blob (`none`), or which shape fits, and whether the
object is drawn cleanly. `tinyveo evaluate` reports the kinds as `drawn` counts (right, messy,
wrong_shape, blob, absent); this adds which shape was fitted. One row per (objects in the clip,
novelty tag, expected shape, drawn), with its count. Then, for the two-object clips, which of the
two asked colors are on screen in at least half of the frames, and whether one is drawn twice (two
components in at least half of its frames): a model that cannot tell which object goes where puts
one object in both places. Generation uses params.yaml's sampler and seed, as `tinyveo evaluate` does.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def drawn(track) -> str:
    if track is None:
        return "absent"
    return track.shape if track.clean else f"{track.shape} (not clean)"


def two_object_layout(frames: np.ndarray, colors: list[str]) -> str:
    """How the two asked colors appear over the clip's frames (T, H, W, 3): present in half of them or
    not, and drawn twice (two large components) in half of the frames it is present in."""
    from tasks.score.objects import frame_objects

    present, twice = {c: 0 for c in colors}, {c: 0 for c in colors}
    for frame in frames:
        _, _, blobs = frame_objects(frame)
        for c in colors:
            present[c] += c in blobs
            twice[c] += blobs.get(c, 0) > 1
    on = [c for c in colors if present[c] >= 0.5 * len(frames)]
    doubled = [c for c in on if twice[c] >= 0.5 * present[c]]
    kind = {2: "both colors", 1: "one color", 0: "neither color"}[len(on)]
    return kind + (f", {len(doubled)} drawn twice" if doubled else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="prepared data folder (tinyveo prepare)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", default=None, help="also write the table here (TSV)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    args = parser.parse_args()

    from tasks.checkpoint import load_pipeline
    from tasks.evaluate import split_specs
    from tasks.params import load_params
    from tasks.preprocess import frame_times
    from tasks.samples import generate_batches, sample_settings
    from tasks.score import analyse_clip

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", args.set)
    pipe = load_pipeline(args.checkpoint, None)[0]
    specs = [s for s in split_specs(args.data, [args.split], params.eval.num_prompts)[args.split][0] if s.attributes]
    videos = []
    for _, result in generate_batches(pipe, specs, sample_settings(params.sample), params.seed,
                                      params.eval.batch_size, progress=True, desc=f"generate {args.split}"):
        videos += list(result.video)
    times = frame_times(videos[0].shape[1], params.cache.window_s)
    silence = np.zeros(params.cache.sample_rate)        # only the picture is analysed here
    rows: Counter = Counter()
    layouts: Counter = Counter()
    for video, spec in zip(videos, specs):
        frames = video.permute(1, 2, 3, 0).numpy()
        tracks = analyse_clip(frames, silence, params.cache.sample_rate, times).tracks
        objects = spec.attributes["objects"]
        for obj in objects:
            rows[(len(objects), obj.get("novelty", "untagged"), obj["shape"], drawn(tracks.get(obj["color"])))] += 1
        if len(objects) == 2:
            layouts[two_object_layout(frames, [o["color"] for o in objects])] += 1
    lines = ["count\tobjects_in_clip\tnovelty\texpected_shape\tdrawn"]
    lines += ["\t".join(map(str, (n, *key))) for key, n in sorted(rows.items())]
    lines += ["", "count\ttwo-object clips: the asked colors on screen"]
    lines += [f"{n}\t{kind}" for kind, n in sorted(layouts.items())]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
