"""`tinyveo demo`: a local Gradio page over TinyVeoPipeline, bound to 127.0.0.1.

    tinyveo demo --checkpoint checkpoints            # then open http://127.0.0.1:7860

Prompt, optional first-frame image, steps, guidance and seed in; the clip with its sound, the wav,
and the frame grid with the spectrogram out, with a progress bar while it samples. A sample is
exactly `pipe(prompt, image, steps, guidance, generator=torch.Generator().manual_seed(seed))`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tasks.runtime import UserError
from tasks.samples import MAX_IMAGE_BYTES, load_image, slug, write_sample

EXAMPLES = ["A red circle bounces with a high tone", "A blue square slides from left to right with a low tone"]


def generate_files(pipe, prompt: str, image_path: str | None, steps: int, guidance: float, seed: int,
                   out: Path) -> dict[str, str]:
    """One sample -> {mp4, wav, png} paths under `out`; a bad prompt or image is a UserError."""
    if not prompt or not prompt.strip():
        raise UserError("type a prompt first")
    image = load_image(image_path) if image_path else None
    result = pipe(prompt.strip(), image=image, num_inference_steps=int(steps), guidance_scale=float(guidance),
                  generator=torch.Generator().manual_seed(int(seed)), output_type="pt")
    video = result.frames[0].permute(1, 0, 2, 3)   # (3, F, H, W) as write_sample takes it
    name = f"{int(seed)}-{slug(prompt)}"
    return write_sample(out, name, video, result.audio[0], result.sample_rate, result.fps, prompt.strip())


def make_handler(pipe, out: Path):
    """The Generate button's function: a bad prompt or image becomes Gradio's error message on the page."""
    import gradio as gr

    def run(prompt, image_path, steps, guidance, seed, progress=gr.Progress(track_tqdm=True)):
        try:
            files = generate_files(pipe, prompt, image_path, steps, guidance, seed, out)
        except UserError as exc:
            raise gr.Error(str(exc)) from exc
        return files["mp4"], files["wav"], files["png"], list(files.values())

    return run


def build_demo(pipe, out_dir: str | Path | None = None, title: str = "tinyveo"):
    """The Gradio Blocks page for a loaded pipeline; files go to `out_dir` (a temporary folder by default)."""
    import gradio as gr

    run = make_handler(pipe, Path(out_dir or tempfile.mkdtemp(prefix="tinyveo-demo-")))
    defaults = dict(pipe.config.sample_defaults)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nText (+ an optional first frame) to a short clip with its sound.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLES[0], elem_id="prompt")
                image = gr.Image(label="First frame (optional)", type="filepath", elem_id="image")
                steps = gr.Slider(1, 100, value=int(defaults.get("steps", 20)), step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(1.0, 12.0, value=float(defaults.get("guidance", 4.0)), step=0.5,
                                     label="Guidance", elem_id="guidance")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="Clip with sound", elem_id="clip", autoplay=False)
                audio = gr.Audio(label="Sound (wav)", type="filepath", elem_id="sound")
                grid = gr.Image(label="Frames and spectrogram", type="filepath", elem_id="grid")
                files = gr.File(label="Download (mp4, wav, png)", file_count="multiple", elem_id="files")
        gr.Examples(EXAMPLES, inputs=prompt)
        button.click(run, [prompt, image, steps, guidance, seed], [video, audio, grid, files], api_name="generate")
    return demo


def launch(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str | None = None):
    """Load the pipeline (a missing or broken checkpoint is one UserError before anything starts) and serve."""
    from tasks.generate import load

    pipe = load(checkpoint, device)
    demo = build_demo(pipe)
    print(f"tinyveo demo: http://{host}:{port}  (Ctrl+C to stop)", flush=True)
    demo.queue().launch(server_name=host, server_port=port, share=False, show_error=True,
                        max_file_size=MAX_IMAGE_BYTES, allowed_paths=[])
