"""`tinyveo report`: one HTML page of the latest run, built from the outputs folder.

    tinyveo report --outputs outputs            # writes outputs/report.html; open it in a browser

The page shows the scores per split beside the real clips' (the scorer's ceiling) and the baselines,
the training summaries, the plots the stages wrote (loss curves, per-attribute accuracy, the sample
grid, and the quality-vs-minutes curve of the denoiser's snapshots), and the
generated clips with their sound. Links are relative, so the folder can be copied or served as is.
What a run has not produced yet is named on the page, with the command that makes it.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from .media import write_text_atomic
from .runtime import UserError

MAX_CLIPS = 24   # videos on the page: each is a player the browser loads

STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 9px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee;margin:.3em 0}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:14px}
figure{margin:0}figcaption{font-size:13px;color:#555}.missing{color:#a33}"""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape("-" if value is None else str(value))


def _table(rows: dict[str, dict[str, Any]], columns: list[str], corner: str = "") -> str:
    """rows: {row name: {column: value}} -> an HTML table."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [corner, *columns])
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns)
                   + "</tr>" for name, row in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def _missing(what: str, command: str) -> str:
    return f'<p class="missing">No {html.escape(what)} yet: run <code>{html.escape(command)}</code>.</p>'


def scores_section(outputs: Path) -> str:
    metrics = _read_json(outputs / "eval" / "metrics.json")
    if not metrics:
        return _missing("evaluation", "dvc repro evaluate")
    reference = _read_json(outputs / "eval_reference" / "metrics.json") or {}
    groups = {split: values for split, values in metrics.items() if split != "vae"}
    groups.update({f"{split} (real clips)": values for split, values in reference.items() if split != "vae"})
    names = list(dict.fromkeys(k for values in groups.values() for k in values))
    rows = {name: {column: values.get(name) for column, values in groups.items()} for name in names}
    columns = list(groups)
    out = "<h2>Scores</h2><p>The strict scorer per split (tune on val, report test); the real clips score what " \
          "a perfect model would; the baselines guess the majority answer or use a shuffled prompt.</p>"
    out += _table(rows, columns, "metric")
    if "vae" in metrics:
        out += "<h3>VAE reconstruction (test clips)</h3>" + _table({"VideoVAE / AudioVAE": metrics["vae"]},
                                                                   list(metrics["vae"]))
    return out


def training_section(outputs: Path) -> str:
    summaries = {stage: _read_json(outputs / "train" / f"{stage}_summary.json") for stage in ("vae", "denoiser")}
    summaries = {k: v for k, v in summaries.items() if v}
    if not summaries:
        return "<h2>Training</h2>" + _missing("training summary", "dvc repro train_denoiser")
    names = list(dict.fromkeys(k for s in summaries.values() for k in s))
    rows = {name: {stage: summary.get(name) for stage, summary in summaries.items()} for name in names}
    return "<h2>Training</h2>" + _table(rows, list(summaries), "stage")


def _img(page_dir: Path, path: Path, caption: str) -> str:
    return f'<figure><img src="{html.escape(os.path.relpath(path, page_dir))}" alt="{html.escape(caption)}">' \
           f"<figcaption>{html.escape(caption)}</figcaption></figure>"


def plots_section(outputs: Path, page_dir: Path) -> str:
    plots = [(outputs / "train" / "loss_vae.png", "VAE stage losses"),
             (outputs / "train" / "loss_denoiser.png", "denoiser stage losses"),
             (outputs / "eval" / "accuracy.png", "per-attribute accuracy, model vs baselines"),
             (outputs / "eval" / "samples_grid.png", "evaluation samples, frames over time"),
             (outputs / "eval" / "curve.png", "quality vs training minutes (the denoiser's snapshots, then its end)")]
    shown = [_img(page_dir, p, c) for p, c in plots if p.exists()]
    absent = [c for p, c in plots if not p.exists()]
    out = "<h2>Plots</h2>" + "".join(shown)
    if absent:
        out += f'<p class="missing">Not produced by this run: {html.escape("; ".join(absent))}.</p>'
    return out


def _clips(outputs: Path) -> list[tuple[Path, str]]:
    """(mp4, prompt) of the generate stage's samples, then the evaluation's saved samples."""
    clips: list[tuple[Path, str]] = []
    index = outputs / "samples" / "samples.jsonl"
    if index.exists():
        for line in index.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("mp4"):
                mp4 = Path(record["mp4"])
                mp4 = mp4 if mp4.is_absolute() and mp4.exists() else outputs / "samples" / mp4.name
                clips.append((mp4, record.get("prompt", "")))
    for mp4 in sorted((outputs / "eval" / "samples").glob("*.mp4")):
        clips.append((mp4, mp4.stem.replace("-", " ")))
    return [(p, prompt) for p, prompt in clips if p.exists()][:MAX_CLIPS]


def clips_section(outputs: Path, page_dir: Path) -> str:
    clips = _clips(outputs)
    if not clips:
        return "<h2>Clips</h2>" + _missing("generated clips", "dvc repro generate")
    items = "".join(f'<figure><video controls preload="metadata" width="256" '
                    f'src="{html.escape(os.path.relpath(p, page_dir))}"></video>'
                    f"<figcaption>{html.escape(prompt)}</figcaption></figure>" for p, prompt in clips)
    return f"<h2>Clips (with sound)</h2><div class=\"clips\">{items}</div>"


def build_report(outputs: str | Path, out: str | Path | None = None) -> Path:
    """OUTPUTS/report.html (or `out`): the latest run's numbers, plots and clips on one page."""
    outputs = Path(outputs)
    if not outputs.is_dir():
        raise UserError(f"{outputs}: no outputs folder (run `dvc repro` or `tinyveo pipeline` first)")
    page = Path(out) if out else outputs / "report.html"
    page_dir = page.parent.resolve()
    outputs = outputs.resolve()
    body = "".join([scores_section(outputs), training_section(outputs), plots_section(outputs, page_dir),
                    clips_section(outputs, page_dir)])
    document = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>tinyveo run report</title>"
                f"<style>{STYLE}</style></head><body><h1>tinyveo run report</h1>"
                f"<p>From <code>{html.escape(str(outputs))}</code>.</p>{body}</body></html>")
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(page, document)
    return page
