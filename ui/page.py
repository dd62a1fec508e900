"""The Gradio page: a recording in, a transcript and its files out, the GPU in the sidebar.

`build_page(engine)` returns the Blocks; `app.serve()` queues and launches it. Every event
that reaches the model (transcribe, release) runs under one `concurrency_id` whose limit
is the engine's worker count, so Gradio never starts more model work than the engine can
run; what waits beyond that waits in Gradio's queue, where the user sees their place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import gradio as gr
from gradio.events import Dependency

from engine import Engine, language_choices

from .sidebar import REFRESH_S, gpu_panel_html, model_choices, model_label, model_state_html, release_markdown
from .transcribe_handler import AUTO_LANGUAGE, DownloadDir, Submit, make_transcribe

GPU_CONCURRENCY_ID = "gpu"  # shared by every event that reaches the model
CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"  # passed to launch(css_paths=...)
TITLE = "Speech to text"


def build_page(engine: Engine, submit: Optional[Submit] = None,
               extra: Optional[Callable[[Dependency], None]] = None) -> gr.Blocks:
    """The page for `engine`.

    `submit` replaces `engine.submit` (same signature, returns a JobHandle) for recordings
    sent from the page, e.g. a durable job manager's. `extra(transcribe_event)` is called
    inside the page, below the transcript, to add sections (a recent-jobs list refreshed
    with `transcribe_event.then(...)`).
    """
    settings = engine.settings
    downloads = DownloadDir()
    transcribe = make_transcribe(engine, downloads, submit, model_label)
    gpu_events = dict(concurrency_limit=settings.workers, concurrency_id=GPU_CONCURRENCY_ID)

    def refresh():
        status = engine.status()
        return gpu_panel_html(engine.monitor.snapshot(), status), model_state_html(status)

    def release():
        before = engine.monitor.snapshot()
        report = engine.release()
        after = engine.monitor.snapshot()
        status = engine.status()
        return release_markdown(report, before, after), gpu_panel_html(after, status), model_state_html(status)

    # Uploads hold people's recordings: Gradio deletes its cached copies after a day.
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Sidebar(label="GPU", open=True, elem_id="sidebar"):
            gr.Markdown("### GPU memory")
            gpu_panel = gr.HTML(elem_id="gpu-panel-container")
            release_button = gr.Button("Release GPU memory", variant="secondary", elem_id="release-button")
            release_report = gr.Markdown(elem_id="release-report")

        gr.Markdown(f"# {TITLE}\nUpload a recording or record one with your microphone, then press "
                    "**Transcribe**. Long recordings are cut into sections at their pauses and decoded side by side.")
        model_state = gr.HTML(elem_id="model-state-container")

        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                 elem_id="audio-input")
                with gr.Row():
                    language = gr.Dropdown(
                        [("Detect automatically", AUTO_LANGUAGE), *language_choices().items()],
                        value=settings.language or AUTO_LANGUAGE, label="Language", elem_id="language")
                    task = gr.Radio(["transcribe", "translate"], value=settings.task, label="Task",
                                    info="translate = into English", elem_id="task")
                with gr.Row():
                    timestamps = gr.Checkbox(value=True, label="Timestamps", elem_id="timestamps")
                    model = gr.Dropdown(model_choices(settings.allowed_models), value=settings.model, label="Model",
                                        interactive=len(settings.allowed_models) > 1, elem_id="model")
                transcribe_button = gr.Button("Transcribe", variant="primary", elem_id="transcribe-button")
            with gr.Column(scale=1):
                transcript = gr.Textbox(label="Transcript", lines=14, max_lines=40, buttons=["copy"],
                                        interactive=False, elem_id="transcript")
                details = gr.Markdown(label="Details", elem_id="details")
                files = gr.File(label="Downloads", file_count="multiple",
                                interactive=False, elem_id="downloads")

        transcribe_event = transcribe_button.click(
            transcribe, inputs=[audio, language, task, timestamps, model], outputs=[transcript, files, details],
            api_name="transcribe", api_description="Transcribe (or translate) a recording: text, files, details.",
            **gpu_events)
        release_button.click(release, outputs=[release_report, gpu_panel, model_state],
                             api_visibility="private", **gpu_events)

        if extra is not None:
            extra(transcribe_event)

        # Cheap readings, never queued: they must not wait behind transcriptions or count
        # against the queue's size.
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, outputs=[gpu_panel, model_state], queue=False, show_progress="hidden",
                   api_visibility="private")
        demo.load(refresh, outputs=[gpu_panel, model_state], queue=False, show_progress="hidden",
                  api_visibility="private")

    demo.downloads = downloads  # so serve() can remove the files at close
    return demo
