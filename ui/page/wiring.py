"""The page's events: which handler each component calls, with what, and how it is queued.

`build_page(engine)` returns the Blocks; `app.serve()` queues and launches it. The layout is
ui/page/layout.py, the handlers ui/page/transcribe.py (Transcribe, Cancel),
ui/page/speakers.py (renaming a speaker) and ui/page/sidebar_events.py (the timer, the model
drop-down, Release).

The engine's bounded queue is the one place a recording waits. Gradio's queue lets every
Transcribe through at once (no concurrency limit on that event), so the handler submits it
to the engine straight away: it either gets a place there, and the page shows "Waiting in
queue: position N" with the engine's own position (never Gradio's bare "queue: 1/1"), or a
clear "queue full" refusal. Waiting costs a handler thread each; `app.serve` sizes Gradio's
thread pool for workers + queue_size of them.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr
from gradio.events import Dependency

from engine import Engine
from ui.page.files import DownloadDir
from ui.page.layout import PageLayout, page_layout
from ui.page.scripts import CLOSE_SIDEBAR_WHEN_NARROW_JS, SEEK_JS
from ui.page.session import Cancel
from ui.page.shown_jobs import MemoryJobs, ShownJobs
from ui.page.sidebar import REFRESH_S
from ui.page.sidebar_events import SidebarEvents
from ui.page.speakers import SpeakerEvents
from ui.page.transcribe import Submit, TranscribeEvents

TRANSCRIBE_CONCURRENCY_ID = "transcribe"  # no limit: the engine's queue decides who waits (module doc)
RELEASE_CONCURRENCY_ID = "release"  # one release at a time
# Quick events answer at once: never queued behind transcriptions, no progress, not in the API.
QUICK = dict(queue=False, show_progress="hidden", api_visibility="private")


def build_page(
    engine: Engine,
    submit: Submit | None = None,
    extra: Callable[[Dependency, PageLayout, SpeakerEvents], None] | None = None,
    cancel: Cancel | None = None,
    waiting: Callable[[], int] | None = None,
    shown: ShownJobs | None = None,
) -> gr.Blocks:
    """The page for `engine`.

    `submit` replaces `engine.submit` (same signature, returns a JobHandle) for recordings
    sent from the page, e.g. a durable job manager's; `cancel(handle)` replaces
    `handle.cancel()` for them. `extra(transcribe_event, page, speakers)` is called inside the
    page, below the transcript, to add sections (a recent-jobs list refreshed with
    `transcribe_event.then(...)`, which shows a job again through `speakers.show` in `page`'s
    result area). `waiting()` counts the jobs waiting, for the sidebar (the job manager's
    queue; the engine's when None). `shown` finds a shown job again for a speaker rename (the
    job store's, through Recent jobs; in memory when None).
    """
    downloads = DownloadDir()
    speakers = SpeakerEvents(engine, downloads, shown or MemoryJobs())
    transcription = TranscribeEvents(engine, speakers, submit, cancel)
    sidebar = SidebarEvents(engine, waiting)
    names = engine.model_names
    with page_layout(engine.settings, names.ids, names.public(engine.settings.model), sidebar.on_gpu) as page:
        transcribe_event = _connect_transcribe(page, transcription)
        _connect_speakers(page, speakers)
        _connect_sidebar(page, sidebar)
        if extra is not None:
            extra(transcribe_event, page, speakers)
        # Cheap readings, never queued: they must not wait behind transcriptions or count
        # against the queue's size.
        readings = dict(fn=sidebar.refresh, inputs=[page.model], outputs=[page.gpu_panel, page.model_state])
        gr.Timer(REFRESH_S).tick(**readings, **QUICK)
        page.demo.load(**readings, **QUICK)
        page.demo.load(None, js=CLOSE_SIDEBAR_WHEN_NARROW_JS, **QUICK)
        page.demo.load(None, js=SEEK_JS, **QUICK)

    page.demo.downloads = downloads  # so serve() can remove the files at close
    return page.demo


def _connect_transcribe(page: PageLayout, transcription: TranscribeEvents) -> Dependency:
    """Transcribe, Cancel, and a new recording; returns the Transcribe event for `extra`."""
    result = [page.transcript, page.files, page.details]
    # Three steps: the previous result is cleared at once; the transcription; then, in a
    # quick step, the segments view (SessionHandoff) or the refusal's message. So the
    # /transcribe endpoint still returns (text, files, details) to gradio_client, and a
    # refusal is its AppError there.
    transcribe_event = page.transcribe_button.click(
        transcription.start_run, outputs=[*result, page.segments, page.notice, *page.speaker_outputs], **QUICK
    ).then(
        transcription.transcribe,
        outputs=result,
        # in the order of the function's parameters: the API's, as gradio_client names them
        inputs=[
            page.audio,
            page.language,
            page.task,
            page.timestamps,
            page.model,
            page.word_timestamps,
            page.vad,
            *page.subtitle_inputs,
            page.prompt,
            page.temperature,
            page.speakers,
        ],
        api_name="transcribe",
        api_description="Transcribe (or translate) a recording: text, files, details.",
        concurrency_limit=None,
        concurrency_id=TRANSCRIBE_CONCURRENCY_ID,
    )
    transcribe_event.success(
        transcription.show_segments, outputs=[page.segments, *page.speaker_outputs], **QUICK
    )
    # The failed step's outputs are in Gradio's error state (a red "Error" with no text):
    # this step's update of them ends it, and the message shows under the button.
    transcribe_event.failure(transcription.show_refusal, outputs=[page.notice, *result], **QUICK)
    # Cancel stops this tab's queued or running job. Its own unlimited concurrency group:
    # it never waits behind transcriptions (queued only so that its message can show).
    page.cancel_button.click(
        transcription.cancel_jobs,
        show_progress="hidden",
        api_visibility="private",
        concurrency_limit=None,
        concurrency_id="cancel",
    )
    # A new recording: the old refusal is moot.
    page.audio.change(lambda: "", outputs=[page.notice], **QUICK)
    return transcribe_event


def _connect_speakers(page: PageLayout, speakers: SpeakerEvents) -> None:
    """Rename (the button, or Enter in the name field) and picking a speaker to rename."""
    rename = dict(
        fn=speakers.rename,
        inputs=[
            page.speaker_job,
            page.speaker_choice,
            page.speaker_name,
            page.timestamps,
            *page.subtitle_inputs,
        ],
        outputs=[
            page.transcript,
            page.segments,
            page.files,
            page.speaker_choice,
            page.speaker_name,
            page.speaker_notice,
        ],
        api_visibility="private",
        show_progress="minimal",
    )
    page.rename_button.click(**rename)
    page.speaker_name.submit(**rename)
    # .input, not .change: only the user's pick fills the name field, never an update from a
    # rename or a reopened job (which set it themselves), so nothing overwrites what was typed.
    page.speaker_choice.input(
        speakers.pick, inputs=[page.speaker_job, page.speaker_choice], outputs=[page.speaker_name], **QUICK
    )


def _connect_sidebar(page: PageLayout, sidebar: SidebarEvents) -> None:
    page.release_button.click(
        sidebar.release,
        inputs=[page.model],
        outputs=[page.release_report, page.gpu_panel, page.model_state],
        api_visibility="private",
        concurrency_limit=1,
        concurrency_id=RELEASE_CONCURRENCY_ID,
    )
    page.model.change(sidebar.show_model, inputs=[page.model], outputs=[page.model_state], **QUICK)
