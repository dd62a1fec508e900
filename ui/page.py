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

from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.events import Dependency

from engine import Engine, language_choices

from .sidebar import (
    REFRESH_S,
    gpu_panel_html,
    model_choices,
    model_label,
    model_state_html,
    process_rss_mb,
    release_label,
    release_markdown,
    sidebar_title,
)
from .transcribe_handler import (
    AUTO_LANGUAGE,
    CUE_S_RANGE,
    LINE_WIDTH_RANGE,
    LINES_RANGE,
    TEMPERATURE_RANGE,
    Cancel,
    DownloadDir,
    SessionHandoff,
    SessionJobs,
    Submit,
    make_transcribe,
    notice_html,
)

TRANSCRIBE_CONCURRENCY_ID = "transcribe"  # no limit: the engine's queue decides who waits (module doc)
RELEASE_CONCURRENCY_ID = "release"  # one release at a time
CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "app.css"  # passed to launch(css_paths=...)
TITLE = "Speech to text"
NARROW_PX = 768  # at this width and below Gradio lays the sidebar over the page: it starts closed
# Room for "Detect automatically" (and a model id such as large-v3-turbo) beside the drop-down's
# arrow: a row that cannot give a drop-down this much puts it on a line of its own (a phone).
CHOICE_MIN_PX = 220

# A click (or Enter) on a segment or a word of the segments view plays the recording from its
# `data-start`. Gradio's waveform player (WaveSurfer) plays through an <audio> element that it
# never adds to the page (the one inside #audio-input is a hidden fallback), so the script
# remembers the <audio> elements the page creates and seeks the newest one holding a
# recording: setting its currentTime moves the waveform's cursor and time too. Installed
# once per page load, before any recording is uploaded. `window.sttRecordingPlayer()` gives
# that element (the browser tests read its currentTime).
SEEK_JS = """() => {
  if (window.sttRecordingPlayer) return;
  const created = [];
  const createElement = document.createElement;
  document.createElement = function (tag, options) {
    const element = createElement.call(this, tag, options);
    if (String(tag).toLowerCase() === 'audio') created.push(new WeakRef(element));
    return element;
  };
  const loaded = (a) => a && a.readyState >= 1 && Number.isFinite(a.duration) && a.duration > 0;
  window.sttRecordingPlayer = () => {
    const shown = [...document.querySelectorAll('#audio-input audio')].filter(loaded);
    const made = created.map((ref) => ref.deref()).filter(loaded);
    return [...shown, ...made].pop() || null;
  };
  const play = (target) => {
    const player = window.sttRecordingPlayer();
    const start = parseFloat(target.dataset.start);
    if (!player || !Number.isFinite(start)) return;
    player.currentTime = Math.min(start, player.duration);
    const playing = player.play();
    if (playing) playing.catch(() => {});
    document.querySelectorAll('#segments .current').forEach((e) => e.classList.remove('current'));
    target.closest('.segment')?.classList.add('current');
  };
  document.addEventListener('click', (event) => {
    const target = event.target.closest?.('#segments [data-start]');
    if (target) play(target);
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    const target = event.target.closest?.('#segments .segment[data-start]');
    if (target) { event.preventDefault(); play(target); }
  });
}"""

# On a phone the open sidebar covers the page: close it once the page has loaded.
CLOSE_SIDEBAR_WHEN_NARROW_JS = f"""() => {{
  if (!window.matchMedia('(max-width: {NARROW_PX}px)').matches) return;
  const sidebar = document.querySelector('#sidebar');
  if (sidebar && sidebar.classList.contains('open')) sidebar.querySelector('.toggle-button')?.click();
}}"""


def build_page(
    engine: Engine,
    submit: Submit | None = None,
    extra: Callable[[Dependency], None] | None = None,
    cancel: Cancel | None = None,
) -> gr.Blocks:
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
    views, notices = SessionHandoff(), SessionHandoff()
    transcribe = make_transcribe(engine, downloads, submit, model_label, sessions, views, notices)

    names = engine.model_names

    def refresh(selected: str | None = None):
        status = engine.status()
        return gpu_panel_html(engine.monitor.snapshot(), status), model_state_html(
            status, names.resolve(selected)
        )

    def show_model(selected: str | None):
        return model_state_html(engine.status(), names.resolve(selected))

    def release(selected: str | None = None):
        selected = names.resolve(selected)
        before, rss_before = engine.monitor.snapshot(), process_rss_mb()
        report = engine.release()
        after, rss_after = engine.monitor.snapshot(), process_rss_mb()
        status = engine.status()
        return (
            release_markdown(report, before, after, on_gpu, rss_before, rss_after),
            gpu_panel_html(after, status),
            model_state_html(status, selected),
        )

    def start_run(request: gr.Request):
        """A new Transcribe press: the previous result and message go, so the progress is not
        drawn over an old summary and old segments cannot be clicked."""
        notices.take(getattr(request, "session_hash", None) or "")  # a stale one never shows later
        return "", None, "", "", ""

    def show_segments(request: gr.Request):
        view = views.take(getattr(request, "session_hash", None) or "")
        return gr.skip() if view is None else view

    def show_refusal(request: gr.Request):
        """After a refusal: its message under the button, the outputs out of their error state."""
        notice = notices.take(getattr(request, "session_hash", None) or "")
        if notice is None:  # refused by Gradio itself, before the handler ran: its toast says why
            notice = notice_html(
                "Cannot transcribe this recording", "The request was refused before it started."
            )
        return notice, gr.skip(), gr.skip(), gr.skip()

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

        gr.Markdown(
            f"# {TITLE}\nUpload a recording or record one with your microphone, then press "
            "**Transcribe**. Long recordings are cut into sections at their pauses and decoded side by side.",
            elem_id="page-intro",
        )
        model_state = gr.HTML(elem_id="model-state-container")

        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                audio = gr.Audio(
                    sources=["upload", "microphone"],
                    type="filepath",
                    label="Recording",
                    elem_id="audio-input",
                )
                with gr.Row():
                    language = gr.Dropdown(
                        [("Detect automatically", AUTO_LANGUAGE), *language_choices().items()],
                        value=settings.language or AUTO_LANGUAGE,
                        label="Language",
                        elem_id="language",
                        min_width=CHOICE_MIN_PX,
                    )
                    task = gr.Radio(
                        ["transcribe", "translate"],
                        value=settings.task,
                        label="Task",
                        info="translate = into English",
                        elem_id="task",
                    )
                with gr.Row():
                    timestamps = gr.Checkbox(value=True, label="Timestamps", elem_id="timestamps")
                    # ids, never the configured paths: the page's configuration reaches every browser
                    model = gr.Dropdown(
                        model_choices(names.ids),
                        value=names.public(settings.model),
                        label="Model",
                        interactive=len(settings.allowed_models) > 1,
                        elem_id="model",
                        min_width=CHOICE_MIN_PX,
                    )
                with gr.Accordion("Advanced options", open=False, elem_id="advanced-options"):
                    with gr.Row():
                        word_timestamps = gr.Checkbox(
                            value=False,
                            label="Word timestamps",
                            elem_id="word-timestamps",
                            info="Times for every word: shown in the segments view and kept in the json download; "
                            "srt/vtt cues then start and end with their words. Without it the subtitle times "
                            "are estimated from the segments' times. A little slower.",
                        )
                        vad = gr.Checkbox(
                            value=settings.vad,
                            label="Skip non-speech (voice activity detection)",
                            elem_id="vad",
                            info="Decode only what sounds like speech: music, noise and long silences are skipped.",
                        )
                    with gr.Row():
                        prompt = gr.Textbox(
                            label="Initial prompt",
                            lines=2,
                            max_lines=6,
                            scale=3,
                            elem_id="prompt",
                            placeholder="e.g. Kubernetes meeting, with Dr. Nguyen and Siobhán.",
                            info="Text the model reads before the recording: names, spelling and style "
                            "to follow. Empty: the config's initial_prompt.",
                        )
                        temperature = gr.Number(
                            value=0,
                            label="Temperature",
                            step=0.1,
                            scale=1,
                            elem_id="temperature",
                            info=f"{TEMPERATURE_RANGE[0]:g} to {TEMPERATURE_RANGE[1]:g}. 0 or empty: greedy, "
                            "hotter only where a window fails a check (the config's fallback ladder); "
                            "above 0: sampled at exactly this temperature.",
                        )
                    gr.Markdown("**Subtitles** (the srt and vtt downloads)")
                    with gr.Row():
                        max_line_width = gr.Number(
                            value=settings.subtitle_max_line_width,
                            precision=0,
                            label="Max characters per line",
                            elem_id="subtitle-width",
                            info=f"{LINE_WIDTH_RANGE[0]} to {LINE_WIDTH_RANGE[1]}",
                        )
                        max_lines = gr.Number(
                            value=settings.subtitle_max_lines,
                            precision=0,
                            label="Max lines per cue",
                            elem_id="subtitle-lines",
                            info=f"{LINES_RANGE[0]} to {LINES_RANGE[1]}",
                        )
                        max_cue_s = gr.Number(
                            value=settings.subtitle_max_cue_s,
                            label="Max seconds per cue",
                            elem_id="subtitle-seconds",
                            info=f"{CUE_S_RANGE[0]:g} to {CUE_S_RANGE[1]:g}",
                        )
                    per_segment = gr.Checkbox(
                        value=settings.subtitle_per_segment,
                        label="One cue per segment (plain)",
                        elem_id="subtitle-per-segment",
                        info="Whisper's own files: each segment one cue on one line, "
                        "whatever its length; the limits above are then ignored.",
                    )
                with gr.Row():
                    transcribe_button = gr.Button(
                        "Transcribe", variant="primary", scale=3, elem_id="transcribe-button"
                    )
                    cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel-button")
                # A refusal stays here, beside the button that asked, until the next Transcribe.
                notice = gr.HTML(elem_id="transcribe-notice")
            with gr.Column(scale=1):
                transcript = gr.Textbox(
                    label="Transcript",
                    lines=14,
                    max_lines=40,
                    buttons=["copy"],
                    interactive=False,
                    elem_id="transcript",
                )
                segments = gr.HTML(elem_id="segments")
                details = gr.Markdown(label="Details", elem_id="details")
                files = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )

        quick = dict(queue=False, show_progress="hidden", api_visibility="private")
        # Three steps: the previous result is cleared at once; the transcription; then, in a
        # quick step, the segments view (SessionHandoff) or the refusal's message. So the
        # /transcribe endpoint still returns (text, files, details) to gradio_client, and a
        # refusal is its AppError there.
        transcribe_event = transcribe_button.click(
            start_run, outputs=[transcript, files, details, segments, notice], **quick
        ).then(
            transcribe,
            inputs=[
                audio,
                language,
                task,
                timestamps,
                model,
                word_timestamps,
                vad,
                max_line_width,
                max_lines,
                max_cue_s,
                per_segment,
                prompt,
                temperature,
            ],
            outputs=[transcript, files, details],
            api_name="transcribe",
            api_description="Transcribe (or translate) a recording: text, files, details.",
            concurrency_limit=None,
            concurrency_id=TRANSCRIBE_CONCURRENCY_ID,
        )
        transcribe_event.success(show_segments, outputs=[segments], **quick)
        # The failed step's outputs are in Gradio's error state (a red "Error" with no text):
        # this step's update of them ends it, and the message shows under the button.
        transcribe_event.failure(show_refusal, outputs=[notice, transcript, files, details], **quick)
        # Cancel stops this tab's queued or running job. Its own unlimited concurrency group:
        # it never waits behind transcriptions (queued only so that its message can show).
        cancel_button.click(
            cancel_jobs,
            show_progress="hidden",
            api_visibility="private",
            concurrency_limit=None,
            concurrency_id="cancel",
        )
        release_button.click(
            release,
            inputs=[model],
            outputs=[release_report, gpu_panel, model_state],
            api_visibility="private",
            concurrency_limit=1,
            concurrency_id=RELEASE_CONCURRENCY_ID,
        )
        model.change(show_model, inputs=[model], outputs=[model_state], **quick)
        audio.change(lambda: "", outputs=[notice], **quick)  # a new recording: the old refusal is moot

        if extra is not None:
            extra(transcribe_event)

        # Cheap readings, never queued: they must not wait behind transcriptions or count
        # against the queue's size.
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, inputs=[model], outputs=[gpu_panel, model_state], **quick)
        demo.load(refresh, inputs=[model], outputs=[gpu_panel, model_state], **quick)
        demo.load(None, js=CLOSE_SIDEBAR_WHEN_NARROW_JS, **quick)
        demo.load(None, js=SEEK_JS, **quick)

    demo.downloads = downloads  # so serve() can remove the files at close
    return demo
