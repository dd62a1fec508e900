"""What the Transcribe and Cancel buttons do: submit, follow the job, return text and files.

`make_transcribe(engine, submit)` builds the event function. `submit` is the one place a
recording enters the engine (`engine.submit` by default; a durable job manager with the
same signature returning a `JobHandle` can replace it). Every failure a user can act on
becomes a `gr.Error` carrying the engine's own message, which is written for people.

`SessionJobs` remembers which jobs each page session (a browser tab) has in flight, so its
Cancel button stops that tab's job, queued or running, and nobody else's.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import gradio as gr

from engine import (AudioError, Engine, InvalidRequest, JobCancelled, JobHandle, ModelLoadError, QueueFull,
                    TranscriptionResult, WindowTooLarge, WorkerShutDown, write_files)

log = logging.getLogger(__name__)

DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "json")  # offered as downloads under the transcript
POLL_S = 0.25  # how often the progress bar follows the job
KEEP_FILES_S = 3600.0  # downloads older than this are deleted (Gradio keeps its own copy meanwhile)
AUTO_LANGUAGE = "auto"

# Exceptions whose message is meant for the user as is.
USER_ERRORS = (AudioError, InvalidRequest, QueueFull, ModelLoadError, WindowTooLarge, JobCancelled,
               WorkerShutDown, FileNotFoundError)

Submit = Callable[..., JobHandle]
Cancel = Callable[[JobHandle], object]


class _Call:
    """One Transcribe press being served: its job once submitted, and whether Cancel was pressed."""

    def __init__(self):
        self.handle: Optional[JobHandle] = None
        self.cancelled = False


class SessionJobs:
    """The Transcribe calls each page session has in flight, for its Cancel button.

    A call is registered before its recording is submitted, so a Cancel pressed while the
    upload is still being stored cancels the job as soon as it exists. `cancel` stops a job
    (`JobHandle.cancel` by default; a job manager's cancel records it as cancelled by the user).
    """

    def __init__(self, cancel: Optional[Cancel] = None):
        self._cancel = cancel or (lambda handle: handle.cancel())
        self._calls: Dict[str, List[_Call]] = {}
        self._lock = threading.Lock()

    def begin(self, session: str) -> _Call:
        call = _Call()
        with self._lock:
            self._calls.setdefault(session, []).append(call)
        return call

    def started(self, call: _Call, handle: JobHandle) -> None:
        with self._lock:
            call.handle = handle
            cancelled = call.cancelled
        if cancelled:
            self._cancel(handle)

    def end(self, session: str, call: _Call) -> None:
        with self._lock:
            calls = self._calls.get(session, [])
            if call in calls:
                calls.remove(call)
            if not calls:
                self._calls.pop(session, None)

    def cancel(self, session: str) -> int:
        """Cancel every job of `session` not finished yet; returns how many there were."""
        with self._lock:
            calls = list(self._calls.get(session, []))
            for call in calls:
                call.cancelled = True
        for call in calls:
            if call.handle is not None and not call.handle.done():
                log.info("Cancel pressed on the page: job %s", call.handle.id)
                self._cancel(call.handle)
        return len(calls)


def format_timestamp(seconds: float) -> str:
    """00:01.500, or 1:02:03.250 past an hour (whisper's own style)."""
    millis = int(round(max(0.0, seconds) * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    clock = f"{minutes:02d}:{secs:02d}.{millis:03d}"
    return f"{hours}:{clock}" if hours else clock


def transcript_text(result: TranscriptionResult, timestamps: bool) -> str:
    if not timestamps:
        return result.text
    return "\n".join(f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}]  {s.text.strip()}"
                     for s in result.segments)


def details_markdown(result: TranscriptionResult, model_label: str) -> str:
    speed = result.duration / result.processing_s if result.processing_s > 0 else 0.0
    facts = [f"Language: **{result.language or 'unknown'}**", f"{result.duration:.1f} s of audio",
             f"done in {result.processing_s:.1f} s ({speed:.1f}× real time)", f"model {model_label}",
             f"{len(result.segments)} segment{'s' if len(result.segments) != 1 else ''}"]
    line = " · ".join(facts)
    return line if result.segments else line + "\n\n**No speech detected.**"


class DownloadDir:
    """Where transcript files are written: one folder per job under a private temporary
    folder, pruned after KEEP_FILES_S and removed with the app."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="whisper-app-downloads-"))

    def new_job_dir(self) -> Path:
        self.prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def prune(self, older_than_s: float = KEEP_FILES_S) -> None:
        cutoff = time.time() - older_than_s
        for folder in self.root.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def follow(handle: JobHandle, progress, engine: Engine, call: Optional[_Call] = None) -> TranscriptionResult:
    """Wait for the job while moving the progress bar; returns its result or raises its error."""
    finished = threading.Event()
    handle.add_done_callback(lambda _: finished.set())
    while not finished.wait(POLL_S):
        position = handle.queue_position
        if (call is not None and call.cancelled) or handle.cancel_requested():
            progress(0.0, desc="Cancelling (the job stops after the current decoding step)")
        elif position:
            progress(0.0, desc=f"Waiting in queue: position {position}")
        elif handle.seconds_total:
            progress((round(handle.seconds_done), round(handle.seconds_total)), desc="Transcribing",
                     unit="s of audio")
        elif engine.status().model.state == "loading":
            progress(0.0, desc="Loading the model")
        else:
            progress(0.0, desc="Reading the audio")
    return handle.result()


def cancelled_markdown(handle: Optional[JobHandle]) -> str:
    """The details line of a cancelled job."""
    line = "**Cancelled.** The transcription was stopped"
    if handle is not None and handle.seconds_total:
        line += f" after {handle.seconds_done:.0f} of {handle.seconds_total:.0f} s of audio"
    elif handle is None or handle.started_at is None:
        line += " before it started"
    return line + "; nothing was kept. Press **Transcribe** to start again."


def make_transcribe(engine: Engine, downloads: DownloadDir, submit: Optional[Submit] = None,
                    model_label: Callable[[str], str] = str, sessions: Optional[SessionJobs] = None):
    """The Transcribe event function (also `/transcribe` for gradio_client). With `sessions`,
    each call is registered under its page session so that session's Cancel can stop it."""
    submit = submit or engine.submit
    sessions = sessions or SessionJobs()
    default_model = engine.settings.model

    def transcribe(audio: Optional[str], language: str = AUTO_LANGUAGE, task: str = "transcribe",
                   timestamps: bool = True, model: Optional[str] = None, request: gr.Request = None,
                   progress=gr.Progress()) -> Tuple[str, List[str], str]:
        if not audio:
            raise gr.Error("Upload a recording or record one with the microphone first.", title="No audio",
                           print_exception=False)
        model = model or default_model
        name = Path(audio).name
        session = getattr(request, "session_hash", None) or ""
        call = sessions.begin(session)
        handle = None
        try:
            handle = submit(audio, language=None if language in (None, "", AUTO_LANGUAGE) else language,
                            task=task or None, model=model, name=name)
            sessions.started(call, handle)
            result = follow(handle, progress, engine, call)
        except JobCancelled:
            if not call.cancelled:  # stopped by the server (shutting down), not by this page
                raise gr.Error("The job was stopped by the server.", title="Cannot transcribe this recording",
                               print_exception=False) from None
            gr.Info("The transcription was cancelled.", title="Cancelled")
            return "", [], cancelled_markdown(handle)
        except QueueFull as exc:
            raise gr.Error(f"The server is busy: {exc}", title="Queue full", print_exception=False) from None
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), title="Cannot transcribe this recording", print_exception=False) from None
        except Exception as exc:  # a bug or an environment problem: log it, keep the page alive
            log.exception("Transcription of %s failed", name)
            raise gr.Error(f"Transcription failed: {type(exc).__name__}: {exc}", title="Error") from None
        finally:
            sessions.end(session, call)

        progress(1.0, desc="Writing files")
        files = write_files(result, downloads.new_job_dir(), Path(name).stem, DOWNLOAD_FORMATS,
                            subtitles=engine.settings.subtitles)
        return (transcript_text(result, bool(timestamps)), [str(p) for p in files.values()],
                details_markdown(result, model_label(model)))

    return transcribe
