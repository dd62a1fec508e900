"""What the Transcribe and Cancel buttons do: submit, follow the job, return text and files.

`TranscribeEvents(engine, speakers, submit, cancel)` holds one page's session state
(ui/page/session.py) and the functions of the Transcribe button's steps and of the Cancel
button, which ui/page/wiring.py connects; its `transcribe` (made by `make_transcribe`) is
also `/transcribe` for gradio_client. `submit(audio, JobOptions, name=...)` is the one place
a recording enters the engine (`engine.submit` by default; the durable job manager's,
through ui/page/recent_jobs.py, on the app's page). Every failure a user can act on becomes
a `gr.Error` carrying the engine's own message, which is written for people: gradio_client
gets it as its AppError; the page shows it under the Transcribe button until the next
action (a `notices` handoff), not as a toast that fades.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from engine import Engine, EngineError, JobCancelled, JobHandle, QueueFull, TranscriptionResult
from jobs import OutOfDiskSpace, is_disk_full
from output import SubtitleOptions
from ui.page.form import AUTO_LANGUAGE, page_options, subtitle_options
from ui.page.render import cancelled_markdown, details_markdown, notice_html, segments_html, transcript_text
from ui.page.session import Cancel, SessionHandoff, SessionJobs, TranscribePress, session_of
from ui.page.shown_jobs import ShownJob
from ui.page.sidebar import model_label
from ui.page.speakers import SpeakerEvents

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often the progress bar follows the job
USER_ERRORS = (EngineError, FileNotFoundError)  # their messages are written for people (engine.errors)

Submit = Callable[..., JobHandle]


class TranscribeEvents:
    """One page's Transcribe and Cancel buttons: the session state they share and their event
    functions. A press runs in three steps (ui/page/wiring.py): `start_run` clears the old
    result, `transcribe` runs the job, then `show_segments` or `show_refusal` takes what it
    left in the session's handoff. `speakers` draws the result's speaker panel and writes its
    downloads."""

    def __init__(
        self,
        engine: Engine,
        speakers: SpeakerEvents,
        submit: Submit | None = None,
        cancel: Cancel | None = None,
    ):
        self.sessions = SessionJobs(cancel)
        self.views, self.notices = SessionHandoff(), SessionHandoff()
        self.speakers = speakers
        self.transcribe = make_transcribe(engine, submit, self.sessions, self.views, self.notices, speakers)

    def start_run(self, request: gr.Request):
        """A new Transcribe press: the previous result and message go, so the progress is not
        drawn over an old summary and old segments cannot be clicked (nor their speakers renamed)."""
        self.notices.take(session_of(request))  # a stale one never shows later
        return "", None, "", "", "", *self.speakers.panel(None)

    def show_segments(self, request: gr.Request):
        """(segments view, *speaker panel) of the press that just finished."""
        view = self.views.take(session_of(request))
        return (gr.skip(),) * (1 + len(self.speakers.panel(None))) if view is None else view

    def show_refusal(self, request: gr.Request):
        """After a refusal: its message under the button, the outputs out of their error state."""
        notice = self.notices.take(session_of(request))
        if notice is None:  # refused by Gradio itself, before the handler ran: its toast says why
            notice = notice_html(
                "Cannot transcribe this recording", "The request was refused before it started."
            )
        return notice, gr.skip(), gr.skip(), gr.skip()

    def cancel_jobs(self, request: gr.Request):
        if self.sessions.cancel(session_of(request)):
            gr.Info("Cancelling: the job stops after the current decoding step.", title="Cancelling")
        else:
            gr.Info("This tab has no transcription to cancel.", title="Nothing to cancel")


def follow(handle: JobHandle, progress, engine: Engine, press: TranscribePress) -> TranscriptionResult:
    """Wait for the job while moving the progress bar; returns its result or raises its error."""
    finished = threading.Event()
    handle.add_done_callback(lambda _: finished.set())
    while not finished.wait(POLL_S):
        position = handle.queue_position
        if press.cancelled or handle.cancel_requested():
            progress(0.0, desc="Cancelling (the job stops after the current decoding step)")
        elif position:
            progress(0.0, desc=f"Waiting in queue: position {position}")
        elif handle.seconds_total:
            progress(
                (round(handle.seconds_done), round(handle.seconds_total)),
                desc="Transcribing",
                unit="s of audio",
            )
        elif engine.status().model.state == "loading":
            progress(0.0, desc="Loading the model")
        else:
            progress(0.0, desc="Reading the audio")
    return handle.result()


def make_transcribe(
    engine: Engine,
    submit: Submit | None,
    sessions: SessionJobs,
    views: SessionHandoff,
    notices: SessionHandoff,
    speaker_events: SpeakerEvents,
):
    """The Transcribe event function (also `/transcribe` for gradio_client). Each press is
    registered in `sessions` under its page session, so that session's Cancel can stop it;
    its segments view and speaker panel are left in `views` for the page to show
    (`views.take(session)`), the job in `speaker_events.shown` for a rename; a
    refusal's message (notice_html) is left in `notices` for the page to keep on screen, and
    the gr.Error raised makes no toast."""
    submit = submit or engine.submit
    default_model = engine.model_names.default_id  # an id: a configured path is not a model id

    def run(
        session: str,
        audio: str | None,
        language: str,
        task: str,
        timestamps: bool,
        model: str | None,
        word_timestamps: bool,
        vad: bool | None,
        max_line_width,
        max_lines,
        max_cue_s,
        per_segment: bool | None,
        prompt: str | None,
        temperature,
        speaker_count: str | None,
        progress,
    ) -> tuple[str, list[str], str]:
        if not audio:
            raise gr.Error(
                "Upload a recording or record one with the microphone first.",
                title="No audio",
                print_exception=False,
            )
        subtitles = subtitle_options(
            SubtitleOptions.from_settings(engine.settings), max_line_width, max_lines, max_cue_s, per_segment
        )
        options = page_options(
            language,
            task,
            model or default_model,
            word_timestamps,
            vad,
            prompt,
            temperature,
            configured_vad=engine.settings.vad,
            speakers=speaker_count,
        )
        name = Path(audio).name
        press = sessions.begin(session)
        handle = None
        try:
            handle = submit(audio, options, name=name)
            sessions.started(press, handle)
            result = follow(handle, progress, engine, press)
        except JobCancelled:
            if not press.cancelled:  # stopped by the server (shutting down), not by this page
                raise gr.Error(
                    "The job was stopped by the server.",
                    title="Cannot transcribe this recording",
                    print_exception=False,
                ) from None
            gr.Info("The transcription was cancelled.", title="Cancelled")
            views.put(session, ("", *speaker_events.panel(None)))
            return "", [], cancelled_markdown(handle)
        except QueueFull as exc:
            raise gr.Error(f"The server is busy: {exc}", title="Queue full", print_exception=False) from None
        except USER_ERRORS as exc:
            raise gr.Error(
                str(exc), title="Cannot transcribe this recording", print_exception=False
            ) from None
        except Exception as exc:  # a bug or an environment problem: log it, keep the page alive
            if is_disk_full(exc):  # the job manager could not store the recording; passes once space is free
                log.warning("A page recording could not be stored, data_dir's disk is full (%s)", exc)
                raise gr.Error(
                    str(OutOfDiskSpace("the recording could not be stored")),
                    title="Out of disk space",
                    print_exception=False,
                ) from None
            log.exception("Transcription of %s failed", name)
            raise gr.Error(f"Transcription failed: {type(exc).__name__}: {exc}", title="Error") from None
        finally:
            sessions.end(session, press)

        progress(1.0, desc="Writing files")
        job = ShownJob(handle.id, name, options, result)
        files = speaker_events.files(job, subtitles)  # the downloads a rename writes again
        speaker_events.shown.remember(job)
        views.put(session, (segments_html(result), *speaker_events.panel(job)))
        return (
            transcript_text(result, bool(timestamps)),
            files,
            details_markdown(result, model_label(model)),
        )

    def transcribe(
        audio: str | None,
        language: str = AUTO_LANGUAGE,
        task: str = "transcribe",
        timestamps: bool = True,
        model: str | None = None,
        word_timestamps: bool = False,
        vad: bool | None = None,
        max_line_width: float | None = None,
        max_lines: float | None = None,
        max_cue_s: float | None = None,
        per_segment: bool | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        speakers: str | None = "off",
        request: gr.Request = None,
        progress=gr.Progress(),
    ) -> tuple[str, list[str], str]:
        """Returns the transcript, the files and the details line; the segments view goes to
        `views`, a refusal's message to `notices`."""
        session = session_of(request)
        try:
            return run(
                session,
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
                speakers,
                progress,
            )
        except gr.Error as error:  # every refusal, whichever line raised it
            notices.put(session, notice_html(error.title, error.message))
            error.visible = False  # no toast: a toast fades, the notice stays until the next action
            raise

    return transcribe
