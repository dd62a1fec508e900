"""What the Transcribe and Cancel buttons do: submit, follow the job, return text and files.

`make_transcribe(engine, submit)` builds the event function. `submit(audio, JobOptions,
name=...)` is the one place a recording enters the engine (`engine.submit` by default; the
durable job manager's, through ui/recent_jobs.py, on the app's page). Every failure a user can act on
becomes a `gr.Error` carrying the engine's own message, which is written for people:
gradio_client gets it as its AppError; the page shows it under the Transcribe button until
the next action (a `notices` handoff, ui/page.py), not as a toast that fades.

`SessionJobs` remembers which jobs each page session (a browser tab) has in flight, so its
Cancel button stops that tab's job, queued or running, and nobody else's.
"""

from __future__ import annotations

import html
import logging
import math
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from engine import Engine, EngineError, JobCancelled, JobHandle, JobOptions, QueueFull, TranscriptionResult
from jobs import OutOfDiskSpace, is_disk_full
from output import SubtitleOptions, write_files

log = logging.getLogger(__name__)

DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "tsv", "json")  # offered as downloads (all the API's result formats)
POLL_S = 0.25  # how often the progress bar follows the job
KEEP_FILES_S = 3600.0  # downloads older than this are deleted (Gradio keeps its own copy meanwhile)
AUTO_LANGUAGE = "auto"
# What the page accepts for the subtitle layout (the config may go further; the page keeps to sane values).
LINE_WIDTH_RANGE = (10, 200)  # characters per line: below 10 hardly a word fits
LINES_RANGE = (1, 10)  # lines per cue
CUE_S_RANGE = (0.5, 60.0)  # seconds a cue stays on screen
# As the HTTP form's `temperature`: empty or 0 = the config's fallback ladder, above 0 = exactly this.
TEMPERATURE_RANGE = (0.0, 1.0)

# Exceptions whose message is meant for the user as is.
USER_ERRORS = (EngineError, FileNotFoundError)  # messages written for the person (engine.errors)

Submit = Callable[..., JobHandle]
Cancel = Callable[[JobHandle], object]


class _Call:
    """One Transcribe press being served: its job once submitted, and whether Cancel was pressed."""

    def __init__(self):
        self.handle: JobHandle | None = None
        self.cancelled = False


class SessionJobs:
    """The Transcribe calls each page session has in flight, for its Cancel button.

    A call is registered before its recording is submitted, so a Cancel pressed while the
    upload is still being stored cancels the job as soon as it exists. `cancel` stops a job
    (`JobHandle.cancel` by default; a job manager's cancel records it as cancelled by the user).
    """

    def __init__(self, cancel: Cancel | None = None):
        self._cancel = cancel or (lambda handle: handle.cancel())
        self._calls: dict[str, list[_Call]] = {}
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


class SessionHandoff:
    """Each page session's latest value (its segments view; its error notice), from the
    Transcribe call that made it to the quick event that shows it (ui/page.py). Not a gr.State
    output: a State makes every tab hold one more connection open (Gradio's heartbeat), and
    with Chromium's six per server a fourth tab's Transcribe would wait for a free one. A value
    not taken (a gradio_client call has no page to show it) is dropped after KEEP_VIEW_S or
    when MAX_VIEWS are waiting."""

    MAX_VIEWS = 64
    KEEP_VIEW_S = 600.0

    def __init__(self):
        self._views: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, view: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._views.pop(session, None)
            self._views[session] = (now, view)
            while self._views and (
                len(self._views) > self.MAX_VIEWS
                or next(iter(self._views.values()))[0] < now - self.KEEP_VIEW_S
            ):
                self._views.popitem(last=False)

    def take(self, session: str) -> str | None:
        with self._lock:
            entry = self._views.pop(session, None)
        return None if entry is None else entry[1]


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
    return "\n".join(
        f"[{format_timestamp(s.start)} --> {format_timestamp(s.end)}]  {s.text.strip()}"
        for s in result.segments
    )


def clock(seconds: float) -> str:
    """[00:01:23]: a segment's start, to the second, as the segments view shows it."""
    whole = int(max(0.0, seconds))
    return f"[{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}]"


def word_time(seconds: float) -> str:
    """A word's start under it: 5.1, 1:05.1 past a minute, 1:02:03.4 past an hour."""
    tenths = int(round(max(0.0, seconds) * 10))
    minutes, tenths = divmod(tenths, 600)
    hours, minutes = divmod(minutes, 60)
    secs = f"{tenths // 10}.{tenths % 10}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:0>4}"
    return f"{minutes}:{secs:0>4}" if minutes else secs


def segments_html(result: TranscriptionResult | None) -> str:
    """The transcript as clickable segments: each with its start time, and, with word
    timestamps, each word with its own time under it. Every element carries its start in
    `data-start`; the page's script (ui/page.py SEEK_JS) plays the recording from there on a
    click. All text is escaped: transcripts are user content."""
    if result is None:
        return ""
    if not result.segments:
        return '<div class="segments segments-empty">No speech detected.</div>'
    rows = []
    for segment in result.segments:
        start = f"{segment.start:.3f}"
        if segment.words:
            text = "".join(
                f'<span class="word" data-start="{w.start:.3f}" title="{format_timestamp(w.start)} – '
                f'{format_timestamp(w.end)}"><span class="word-text">{html.escape(w.word.strip())}</span>'
                f'<span class="word-time">{word_time(w.start)}</span></span> '
                for w in segment.words
                if w.word.strip()
            )
        else:
            text = html.escape(segment.text.strip())
        rows.append(
            f'<div class="segment" data-start="{start}" tabindex="0" role="button" '
            f'title="Play from {format_timestamp(segment.start)}">'
            f'<span class="segment-time">{clock(segment.start)}</span> '
            f'<span class="segment-text">{text.rstrip()}</span></div>'
        )
    hint = (
        "Click a segment"
        + (" or a word" if any(s.words for s in result.segments) else "")
        + " to play the recording from there."
    )
    return f'<div class="segments"><div class="segments-hint">{hint}</div>{"".join(rows)}</div>'


def _number(
    value, label: str, low: float, high: float, default, whole: bool, title: str = "Subtitle options"
):
    """A page field's number checked against [low, high]; empty gives the default."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or (whole and number != int(number)) or not low <= number <= high:
        kind = "a whole number" if whole else "a number"
        raise gr.Error(
            f"{label}: must be {kind} from {low:g} to {high:g}, got {value!r}.",
            title=title,
            print_exception=False,
        )
    return int(number) if whole else number


def subtitle_options(
    defaults: SubtitleOptions, max_line_width=None, max_lines=None, max_cue_s=None, per_segment=None
) -> SubtitleOptions:
    """The page's subtitle fields as SubtitleOptions (empty fields keep `defaults`); a value
    out of range is a gr.Error naming the field."""
    return SubtitleOptions(
        max_line_width=_number(
            max_line_width, "Max characters per line", *LINE_WIDTH_RANGE, defaults.max_line_width, whole=True
        ),
        max_lines=_number(max_lines, "Max lines per cue", *LINES_RANGE, defaults.max_lines, whole=True),
        max_cue_s=_number(max_cue_s, "Max seconds per cue", *CUE_S_RANGE, defaults.max_cue_s, whole=False),
        per_segment=defaults.per_segment if per_segment is None else bool(per_segment),
    )


def page_options(
    language: str | None = None,
    task: str | None = None,
    model: str | None = None,
    word_timestamps: bool = False,
    vad: bool | None = None,
    prompt: str | None = None,
    temperature=None,
    configured_vad: bool = False,
) -> JobOptions:
    """The page's fields as the job's options, mapped as the HTTP form's (ui/openai_compat.py):
    "auto" or no language = detect it; an empty prompt keeps the config's initial_prompt; an
    empty or 0 temperature keeps the fallback ladder; the VAD box is passed only where it
    differs from the config (`configured_vad`). A temperature out of range is a gr.Error
    naming the field."""
    temperature = _number(
        temperature, "Temperature", *TEMPERATURE_RANGE, None, whole=False, title="Advanced options"
    )
    return JobOptions(
        model=model or None,
        language=None if language in (None, "", AUTO_LANGUAGE) else language,
        task=task or None,
        initial_prompt=str(prompt).strip() if prompt else None,
        temperature=temperature or None,
        word_timestamps=bool(word_timestamps),
        vad=None if vad is None or bool(vad) == configured_vad else bool(vad),
    )


def notice_html(title: str, message: str) -> str:
    """A refusal as the page shows it under the Transcribe button (escaped: messages carry file names)."""
    return (
        f'<div class="transcribe-notice notice-error" role="alert">'
        f"<strong>{html.escape(title)}.</strong> {html.escape(message)}</div>"
    )


def details_markdown(result: TranscriptionResult, model_label: str) -> str:
    speed = result.duration / result.processing_s if result.processing_s > 0 else 0.0
    facts = [
        f"Language: **{result.language or 'unknown'}**",
        f"{result.duration:.1f} s of audio",
        f"done in {result.processing_s:.1f} s ({speed:.1f}× real time)",
        f"model {model_label}",
        f"{len(result.segments)} segment{'s' if len(result.segments) != 1 else ''}",
    ]
    line = " · ".join(facts)
    return line if result.segments else line + "\n\n**No speech detected.**"


class DownloadDir:
    """Where transcript files are written: one folder per job (0700, files 0600) inside
    Gradio's cache folder, so Gradio serves them there instead of copying them (ui/page_files.py),
    pruned after KEEP_FILES_S and removed with the app."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="whisper-app-downloads-", dir=gradio_cache()))

    @staticmethod
    def private(files: dict[str, Path]) -> list[str]:
        """The written files as paths for gr.File, readable by the server's user only."""
        for path in files.values():
            path.chmod(0o600)
        return [str(path) for path in files.values()]

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


def gradio_cache() -> Path:
    """Gradio's cache folder (GRADIO_TEMP_DIR), created private if it is not there yet."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def follow(handle: JobHandle, progress, engine: Engine, call: _Call | None = None) -> TranscriptionResult:
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


def cancelled_markdown(handle: JobHandle | None) -> str:
    """The details line of a cancelled job."""
    line = "**Cancelled.** The transcription was stopped"
    if handle is not None and handle.seconds_total:
        line += f" after {handle.seconds_done:.0f} of {handle.seconds_total:.0f} s of audio"
    elif handle is None or handle.started_at is None:
        line += " before it started"
    return line + "; nothing was kept. Press **Transcribe** to start again."


def make_transcribe(
    engine: Engine,
    downloads: DownloadDir,
    submit: Submit | None = None,
    model_label: Callable[[str], str] = str,
    sessions: SessionJobs | None = None,
    views: SessionHandoff | None = None,
    notices: SessionHandoff | None = None,
):
    """The Transcribe event function (also `/transcribe` for gradio_client). With `sessions`,
    each call is registered under its page session so that session's Cancel can stop it; with
    `views`, its segments view is left there for the page to show (`views.take(session)`);
    with `notices`, a refusal's message (notice_html) is left there for the page to keep on
    screen, and the gr.Error raised makes no toast."""
    submit = submit or engine.submit
    sessions = sessions or SessionJobs()
    views = views or SessionHandoff()
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
        )
        name = Path(audio).name
        call = sessions.begin(session)
        handle = None
        try:
            handle = submit(audio, options, name=name)
            sessions.started(call, handle)
            result = follow(handle, progress, engine, call)
        except JobCancelled:
            if not call.cancelled:  # stopped by the server (shutting down), not by this page
                raise gr.Error(
                    "The job was stopped by the server.",
                    title="Cannot transcribe this recording",
                    print_exception=False,
                ) from None
            gr.Info("The transcription was cancelled.", title="Cancelled")
            views.put(session, "")
            return "", [], cancelled_markdown(handle)
        except QueueFull as exc:
            raise gr.Error(f"The server is busy: {exc}", title="Queue full", print_exception=False) from None
        except USER_ERRORS as exc:
            raise gr.Error(
                str(exc), title="Cannot transcribe this recording", print_exception=False
            ) from None
        except Exception as exc:  # a bug or an environment problem: log it, keep the page alive
            if is_disk_full(exc):  # the job manager could not store the recording; passes once space is freed
                log.warning("A page recording could not be stored, data_dir's disk is full (%s)", exc)
                raise gr.Error(
                    str(OutOfDiskSpace("the recording could not be stored")),
                    title="Out of disk space",
                    print_exception=False,
                ) from None
            log.exception("Transcription of %s failed", name)
            raise gr.Error(f"Transcription failed: {type(exc).__name__}: {exc}", title="Error") from None
        finally:
            sessions.end(session, call)

        progress(1.0, desc="Writing files")
        files = write_files(
            result, downloads.new_job_dir(), Path(name).stem, DOWNLOAD_FORMATS, subtitles=subtitles
        )
        views.put(session, segments_html(result))
        return (
            transcript_text(result, bool(timestamps)),
            downloads.private(files),
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
        request: gr.Request = None,
        progress=gr.Progress(),
    ) -> tuple[str, list[str], str]:
        """Returns the transcript, the files and the details line; the segments view goes to
        `views`, a refusal's message to `notices`."""
        session = getattr(request, "session_hash", None) or ""
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
                progress,
            )
        except gr.Error as error:  # every refusal, whichever line raised it
            if notices is not None:
                notices.put(session, notice_html(error.title, error.message))
                error.visible = False  # no toast: a toast fades, the notice stays until the next action
            raise

    return transcribe
