"""Benchmark: what the VideoVAE's round trip does to the bounces' impacts. The split's real clips,
their video encoded and decoded by the checkpoint's VideoVAE (64x64), analysed by the strict scorer;
for every bouncing object, its real impacts and what the scorer makes of it after the round trip
(absent, not clean, another motion, or a bounce with how many of its minima), then the impacts by
outcome. An impact counts for sync only on a clean track read as a bounce. Last, the split's clips
through both VAEs scored as `tinyveo evaluate`'s scene_through_vaes, for a checkpoint with only its
VAEs trained. Not a test.

    scripts/env.sh python bench/video_vae_impacts.py --data D --checkpoint C [--split val]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import torch


def outcome(track, real_impacts: int) -> str:
    if track is None:
        return "absent"
    if not track.clean:
        return "not clean"
    if track.motion != "bounce":
        return f"read as {track.motion}"
    return f"bounce, {len(track.impacts)} of {real_impacts} minima"


def main() -> None:
    from model import from_params
    from tasks.checkpoint import load_vaes
    from tasks.evaluate import EvalSet, score_videos, split_specs, through_vaes
    from tasks.params import load_params
    from tasks.score.scene import analyse_clip
    from tasks.worlds.common import scene_from_attributes

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared data folder")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder with a trained vae/")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()

    params = load_params()
    specs, cache, manifest = split_specs(args.data, [args.split], params.eval.num_prompts)[args.split]
    videos = [v.float() / 255 for v in cache["video_upsampled"]]
    video_vae, audio_vae = load_vaes(args.checkpoint, from_params(params), torch.device("cpu"))
    pipe = SimpleNamespace(video_vae=video_vae, audio_vae=audio_vae, device=torch.device("cpu"))
    with torch.no_grad():
        through, audios = through_vaes(pipe, cache)
    frames = videos[0].shape[1]
    times = np.arange(frames) * (params.cache.window_s / frames)
    silence = np.zeros(params.cache.sample_rate)
    by_outcome: Counter = Counter()
    print("| prompt | real impacts (s) | after the VideoVAE | impacts found (s) |\n| --- | --- | --- | --- |")
    for spec, real, decoded in zip(specs, videos, through):
        scene = scene_from_attributes(spec.attributes)
        if scene is None:
            continue
        before, after = (analyse_clip(v.permute(1, 2, 3, 0).numpy(), silence, params.cache.sample_rate, times)
                         for v in (real, decoded))
        for obj in (o for o in scene["objects"] if o["motion"] == "bounce"):
            r, d = before.tracks.get(obj["color"]), after.tracks.get(obj["color"])
            hits = r.impacts if r else []
            what = outcome(d, len(hits))
            by_outcome[what] += len(hits)
            print(f"| {spec.prompt[:50]} | {', '.join(f'{t:.2f}' for t in hits)} | {what} | "
                  f"{', '.join(f'{t:.2f}' for t in (d.impacts if d else []))} |")
    print("\nreal impacts by outcome:", dict(by_outcome.most_common()))
    ceiling = score_videos(EvalSet(args.split, pipe, params, {}, specs, None, cache, manifest), through, audios, specs)
    keys = ("color", "shape", "motion", "pitch", "object_all", "count", "all_correct", "drawn", "sync")
    print("\nscene_through_vaes:", json.dumps({k: ceiling[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
