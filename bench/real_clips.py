"""A folder of mixed real clips, and a brief training run on it (issue: bring your own clips).

The footage is the real video and sound that ship inside the gradio wheel (media_assets: a 30 s
NASA night-Earth clip with its 5 s excerpt, that excerpt re-encoded to AVI/MP3 and without sound,
a 1080p title card; a saxophone, a cantina band, a voice recording), so it is on every machine
that installed requirements.txt, offline. ffmpeg (imageio-ffmpeg) makes the rest of the mix from
it: a VFR clip, a 5.1 clip in Matroska, a cropped copy, a clip with no audio track, a short one, a
truncated file.

    scripts/env.sh python bench/real_clips.py --out /tmp/real            # prepare, train briefly, evaluate
    scripts/env.sh python bench/real_clips.py --out /tmp/real --prepare-only

Prints the prepare report's summary, then the evaluation on the held-out clips: VAE PSNR on real
windows and the generated clips' colour statistics against the real ones (CLIP score with
--set eval.clip_path=DIR).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file, caption, split): the clips the folder's annotations list, in order
ANNOTATIONS = [
    ("world.mp4", "the Earth turning at night, city lights on the dark side", None),
    ("b.mp4", "the night side of the Earth from orbit", None),                  # world's first 5 s
    ("b.avi", "the Earth from space at night", None),                          # b re-encoded
    ("muted_b.mp4", "the Earth at night, silent", None),                       # b without sound
    ("title_card.mp4", "a yellow 'thanks for watching' title on a slate background", None),
    ("saxophone_vfr.mp4", "a green waveform of a saxophone solo", "test"),
    ("band_5.1.mkv", "a spectrogram of a cantina band", "val"),
    ("voice_cqt.mov", "bars of a voice's pitch rising and falling", None),
    ("title_card_crop_silent.mkv", "the title card, cropped", None),            # a cropped copy, no sound
    ("saxophone_spectrum_silent.mkv", None, None),                              # no sound, no summary
    ("short.mp4", "a brief waveform of a saxophone", "val"),
    ("broken.mp4", "a file cut short in transfer", None),
]


def media_assets() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:
        raise SystemExit("gradio is not installed: its media_assets are the real footage (pip install -r requirements.txt)")
    return Path(spec.origin).parent / "media_assets"


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True, timeout=300)


def build_folder(out: Path) -> Path:
    """The mixed folder and its annotations (JSON list); returns the annotations path."""
    assets = media_assets()
    videos, audio = assets / "videos", assets / "audio"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("world.mp4", "b.mp4", "b.avi", "muted_b.mp4"):
        shutil.copy(videos / name, out / name)
    shutil.copy(videos / "a.mp4", out / "title_card.mp4")
    def picture_of_sound(source: Path, visual: str, target: Path, *args: str) -> None:
        ffmpeg(*args[:4], "-i", str(source), "-filter_complex", f"[0:a]asplit[w][s];[w]{visual},format=yuv420p[v]",
               "-map", "[v]", "-map", "[s]", "-c:v", "libx264", "-c:a", "aac", *args[4:], str(target))

    vfr = "select='lt(n\\,20)+not(mod(n\\,3))'"
    picture_of_sound(audio / "sax.wav", f"showwaves=s=320x240:mode=line:colors=green,{vfr}",
                     out / "saxophone_vfr.mp4", "-ss", "0", "-t", "60", "-fps_mode", "vfr")
    picture_of_sound(audio / "cantina.wav", "showspectrum=s=256x256:slide=scroll", out / "band_5.1.mkv",
                     "-ss", "0", "-t", "60", "-ac", "6")
    picture_of_sound(audio / "recording1.wav", "showcqt=s=320x180", out / "voice_cqt.mov", "-ss", "0", "-t", "60")
    ffmpeg("-i", str(audio / "sax.wav"), "-filter_complex", "showspectrum=s=192x192:color=fire,format=yuv420p", "-an",
           "-c:v", "mpeg4", "-q:v", "4", str(out / "saxophone_spectrum_silent.mkv"))
    ffmpeg("-i", str(videos / "a.mp4"), "-vf", "crop=720:720,scale=240:240", "-an", "-c:v", "mpeg4", "-q:v", "4",
           str(out / "title_card_crop_silent.mkv"))
    picture_of_sound(audio / "sax.wav", "showwaves=s=160x120:mode=cline:colors=orange", out / "short.mp4",
                     "-ss", "3", "-t", "1.2")
    (out / "broken.mp4").write_bytes((videos / "a.mp4").read_bytes()[:20_000])
    records = []
    for name, caption, split in ANNOTATIONS:
        record = {"video_path": name}
        if caption:
            record["summary"] = caption
        if split:
            record["split"] = split
        records.append(record)
    records[0]["segments"] = [{"start": 0, "end": 4, "summary": "the Earth's night side, Europe and Africa in view"}]
    path = out / "annotations.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tinyveo", *args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder (raw clips, data, checkpoints, eval)")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="params override for train and evaluate")
    args = parser.parse_args()
    raw, data, ckpt, ev = (args.out / n for n in ("raw", "data", "checkpoints", "eval"))
    annotations = build_folder(raw)
    seconds = {"prepare": run("prepare", "--source", str(raw), "--annotations", str(annotations), "--out", str(data))}
    report = json.loads((data / "prepare_report.json").read_text())
    print(report["summary"])
    print("windows per clip:", json.dumps(report["windows_per_clip"]))
    for skipped in report["skipped"]:
        print(f"  skipped {skipped['source']}: {skipped['reason']}")
    if args.prepare_only:
        return
    brief = ["--set", "train.vae_steps=300", "--set", "train.denoiser_steps=600", "--set", "train.mlflow=false",
             "--set", "eval.num_prompts=4", "--set", "eval.num_i2v=0", *[x for s in args.set for x in ("--set", s)]]
    seconds["train"] = run("train", "--data", str(data), "--out", str(ckpt), *brief)
    seconds["evaluate"] = run("evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(ev), *brief)
    details = json.loads((ev / "details.json").read_text())
    vae = details["vae_reconstruction"]
    print(f"VAE on real test windows: PSNR {vae.get('video_psnr_upsampled', float('nan')):.2f} dB, "
          f"SSIM {vae.get('video_ssim_upsampled', float('nan')):.3f}, log-mel L1 {vae.get('audio_logmel_l1', float('nan')):.3f}")
    for split, group in details["splits"].items():
        color, clip = group["color"], group["clip_score"]
        print(f"{split}: colour histogram L1 {color.get('histogram_l1', float('nan')):.3f}, mean RGB generated "
              f"{[round(x, 3) for x in color.get('generated_mean_rgb', [])]} vs real "
              f"{[round(x, 3) for x in color.get('real_mean_rgb', [])]}; CLIP score: "
              f"{clip.get('torchmetrics', clip.get('reason'))}")
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
