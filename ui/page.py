"""The Gradio page: a recording in, a transcript and its files out, the GPU in the sidebar.

`build_page(engine)` returns the Blocks; `app.serve()` queues and launches it.

The engine's bounded queue is the one place a recording waits. Gradio's queue lets every
Transcribe through at once (no concurrency limit on that event), so the handler submits it
to the engine straight away: it either gets a place there, and the page shows "Waiting in
queue: position N" with the engine's own position, or a clear "queue full" refusal. (With
Gradio's limit at the worker count, a third user waited in Gradio's queue instead and saw
Gradio's bare "queue: 1/1".) Waiting costs a handler thread each; `app.serve` sizes
Gradio's thread pool for workers + queue_size of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import gradio as gr
from gradio.events import Dependency

from engine import Engine, language_choices

from .sidebar import (REFRESH_S, gpu_panel_html, model_choices, model_label, model_state_html, process_rss_mb,
                      release_label, release_markdown, sidebar_title)
from .transcribe_handler import AUTO_LANGUAGE, Cancel, DownloadDir, SessionJobs, Submit, make_transcribe

TRANSCRIBE_CONCURRENCY_ID = "transcribe"  # no limit: the engine's queue decides who waits (module doc)
RELEASE_CONCURRENCY_ID = "release"  # one release at a time
CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"  # passed to launch(css_paths=...)
TITLE = "Speech to text"
NARROW_PX = 768  # at this width and below Gradio lays the sidebar over the page: it starts closed

# On a phone the open sidebar covers the page: close it once the page has loaded.
CLOSE_SIDEBAR_WHEN_NARROW_JS = f"""() => {{
  if (!window.matchMedia('(max-width: {NARROW_PX}px)').matches) return;
  const sidebar = document.querySelector('#sidebar');
  if (sidebar && sidebar.classList.contains('open')) sidebar.querySelector('.toggle-button')?.click();
}}"""


def build_page(engine: Engine, submit: Optional[Submit] = None,
               extra: Optional[Callable[[Dependency], None]] = None, cancel: Optional[Cancel] = None) -> gr.Blocks:
    """The page for `engine`.

    `submit` replaces `engine.submit` (same signature, returns a JobHandle) for recordings
    sent from the page, e.g. a durable job manager's; `cancel(handle)` replaces
    `handle.cancel()` for them. `extra(transcribe_event)` is called inside the page, below
    the transcript, to add sections (a recent-jobs list refreshed with
    `transcribe_event.then(...)`).
    """
    settings = engine.settings
    on_gpu = engine.plan.is_cuda
    downloads = DownloadDir()
    sessions = SessionJobs(cancel)
    transcribe = make_transcribe(engine, downloads, submit, model_label, sessions)

    def refresh(selected: Optional[str] = None):
        status = engine.status()
        return gpu_panel_html(engine.monitor.snapshot(), status), model_state_html(status, selected)

    def show_model(selected: Optional[str]):
        return model_state_html(engine.status(), selected)

    def release(selected: Optional[str] = None):
        before, rss_before = engine.monitor.snapshot(), process_rss_mb()
        report = engine.release()
        after, rss_after = engine.monitor.snapshot(), process_rss_mb()
        status = engine.status()
        return (release_markdown(report, before, after, on_gpu, rss_before, rss_after), gpu_panel_html(after, status),
                model_state_html(status, selected))

    def cancel_jobs(request: gr.Request):
        if sessions.cancel(getattr(request, "session_hash", None) or ""):
            gr.Info("Cancelling: the job stops after the current decoding step.", title="Cancelling")
        else:
            gr.Info("This tab has no transcription to cancel.", title="Nothing to cancel")

    # Uploads hold people's recordings: Gradio deletes its cached copies after a day.
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Sidebar(label=sidebar_title(on_gpu), open=True, elem_id="sidebar"):
            gr.Markdown(f"### {sidebar_title(on_gpu)}")
            gpu_panel = gr.HTML(elem_id="gpu-panel-container")
            release_button = gr.Button(release_label(on_gpu), variant="secondary", elem_id="release-button")
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
                with gr.Row():
                    transcribe_button = gr.Button("Transcribe", variant="primary", scale=3,
                                                  elem_id="transcribe-button")
                    cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel-button")
            with gr.Column(scale=1):
                transcript = gr.Textbox(label="Transcript", lines=14, max_lines=40, buttons=["copy"],
                                        interactive=False, elem_id="transcript")
                details = gr.Markdown(label="Details", elem_id="details")
                files = gr.File(label="Downloads", file_count="multiple",
                                interactive=False, elem_id="downloads")

        quick = dict(queue=False, show_progress="hidden", api_visibility="private")
        transcribe_event = transcribe_button.click(
            transcribe, inputs=[audio, language, task, timestamps, model], outputs=[transcript, files, details],
            api_name="transcribe", api_description="Transcribe (or translate) a recording: text, files, details.",
            concurrency_limit=None, concurrency_id=TRANSCRIBE_CONCURRENCY_ID)
        # Cancel stops this tab's queued or running job. Its own unlimited concurrency group:
        # it never waits behind transcriptions (queued only so that its message can show).
        cancel_button.click(cancel_jobs, show_progress="hidden", api_visibility="private",
                            concurrency_limit=None, concurrency_id="cancel")
        release_button.click(release, inputs=[model], outputs=[release_report, gpu_panel, model_state],
                             api_visibility="private", concurrency_limit=1, concurrency_id=RELEASE_CONCURRENCY_ID)
        model.change(show_model, inputs=[model], outputs=[model_state], **quick)

        if extra is not None:
            extra(transcribe_event)

        # Cheap readings, never queued: they must not wait behind transcriptions or count
        # against the queue's size.
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, inputs=[model], outputs=[gpu_panel, model_state], **quick)
        demo.load(refresh, inputs=[model], outputs=[gpu_panel, model_state], **quick)
        demo.load(None, js=CLOSE_SIDEBAR_WHEN_NARROW_JS, **quick)

    demo.downloads = downloads  # so serve() can remove the files at close
    return demo
