"""`tinyveo synth`: write a built-in synthetic world as real mp4 clips (H.264 + AAC, written by
moviepy) and `annotations.json`, whose records carry the caption, the split and the scene's ground
truth (`tasks/worlds/`: `events`, the default, and `shapes`, the v1 regression world).

    tinyveo synth --out data/raw [--world shapes] [--set data.synth_num_clips=600]
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .media import atomic_path, write_text_atomic
from .runtime import process_pool
from .worlds import ClipSpec, world

if TYPE_CHECKING:  # writer processes import this module: no torch in them
    from .params import DataParams


def plan(data: DataParams) -> list[ClipSpec]:
    """The clip specs of `data.world` for these settings (deterministic in `data.synth_seed`)."""
    if data.world == "events":
        return world("events").plan(data.synth_num_clips, data.synth_seed, data.synth_i2v_fraction,
                                    data.synth_duration_s, data.synth_held_out_fraction)
    return world(data.world).plan(data.synth_num_clips, data.synth_seed, data.synth_i2v_fraction)


def annotation_times(fps: int, duration_s: float) -> np.ndarray:
    return np.arange(int(round(fps * duration_s))) / fps


def write_clip(spec: ClipSpec, out_dir: str, size: int, fps: int, duration_s: float, sample_rate: int) -> dict[str, Any]:
    """Render and write one clip (and its first-frame JPEG for i2v records); returns its annotation."""
    from moviepy import AudioArrayClip, VideoClip
    from PIL import Image

    out = Path(out_dir)
    w = world(spec.world)
    frames = w.render_frames(spec, size, fps, duration_s)
    name = f"clips/clip_{spec.index:05d}.mp4"
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    video = VideoClip(frame_function=lambda t: frames[min(int(t * fps + 1e-6), len(frames) - 1)], duration=duration_s)
    video = video.with_fps(fps).with_audio(AudioArrayClip(w.render_audio(spec, sample_rate, duration_s), fps=sample_rate))
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "clip.mp4"
        video.write_videofile(
            str(partial), fps=fps, codec="libx264", audio_codec="aac", audio_fps=sample_rate, preset="medium",
            threads=1, logger=None, temp_audiofile_path=tmp, pixel_format="yuv420p",
            ffmpeg_params=["-bf", "0"],
        )
        os.replace(partial, target)  # atomic: a killed run never leaves a half-written clip
    last = (len(frames) - 1) / fps
    scene = spec.scene(annotation_times(fps, duration_s), lambda obj, t: w.position(obj, t, last))
    record: dict[str, Any] = {"video_path": name, "summary": spec.caption, "attributes": scene, "split": spec.split}
    if spec.with_image:
        image_name = f"images/clip_{spec.index:05d}.jpg"
        (out / image_name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / image_name) as tmp:
            Image.fromarray(frames[0]).save(tmp, format="JPEG", quality=95)
        record["image_path"] = image_name
    return record


def synth(out_dir: str | Path, data: DataParams, workers: int = 2, progress: bool = True) -> Path:
    """Write `data.synth_num_clips` clips of `data.world` and `annotations.json` under out_dir; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = plan(data)
    args = [(s, str(out), data.synth_size, data.synth_fps, data.synth_duration_s, data.synth_sample_rate) for s in specs]
    if workers > 1:
        with process_pool(workers) as pool:
            futures = [pool.submit(write_clip, *a) for a in args]
            records = [f.result() for f in tqdm(futures, desc="synth", unit="clip", disable=not progress)]
    else:
        records = [write_clip(*a) for a in tqdm(args, desc="synth", unit="clip", disable=not progress)]
    annotations = out / "annotations.json"
    write_text_atomic(annotations, json.dumps(records, indent=1) + "\n")
    return annotations
