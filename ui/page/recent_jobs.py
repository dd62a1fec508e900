"""The page's "Recent jobs": every recording sent from the page is a durable job, listed here
for its owner, so a reload, a closed tab or a server restart loses nothing, and a result can
be downloaded again.

    recent = RecentJobs(jobs)                       # jobs: the app's JobManager
    build_page(engine, submit=recent.submit, extra=recent.attach, cancel=recent.cancel)
    # submit: page recordings become owned, durable jobs; attach: the list and the
    # download inside the page, refreshed after each transcription; cancel: stored as
    # cancelled by its user
    build_page(..., shown=recent)                   # speaker renames stored with the job

A finished job picked in the list gives its files again, and **Show transcript** opens it in
the page's result area as it was left: its text, segments, the Speakers choice it was
transcribed with, and its speakers' names, which can be changed there again.

Who is the owner: the login name when the page has Gradio `auth`; otherwise a random id the
browser keeps in its localStorage (`gr.BrowserState`), so each browser sees its own jobs and
nobody else's. The id is encrypted with a secret the job store keeps (a file in data_dir, or a
row of a shared PostgreSQL store), so it stays readable across restarts and on every replica.
Jobs sent through the HTTP API have no owner and are not listed here.
"""

from __future__ import annotations

import html
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from pathlib import Path

import gradio as gr
from gradio.context import LocalContext

from engine import JobHandle, JobOptions
from jobs import JobInfo, JobManager, name_speakers
from output import SubtitleOptions, formats_for, write_files
from ui.page.files import DOWNLOAD_FORMATS, DownloadDir, gradio_cache  # the files under the transcript
from ui.page.form import subtitle_options
from ui.page.layout import PageLayout
from ui.page.shown_jobs import ShownJob
from ui.page.speakers import SpeakerEvents

STORAGE_KEY = "whisper-app-owner"  # localStorage key of the browser's owner id
SECRET_FILE = "browser_state_secret"  # the store's secret that encrypts the owner id in the browser
HEADERS = ["Submitted", "File", "Status", "Audio", "Job id"]  # the columns of `rows()`
SHOWN_COLUMNS = (1, 2, 3, 0, 4)  # the table shows the file and its status first
MAX_SESSIONS = 10_000  # page loads remembered (session -> owner) for attributing new jobs
LIMIT = 20  # jobs listed


def _owner_from(request: gr.Request | None, browser_id: str) -> str | None:
    username = getattr(request, "username", None) if request is not None else None
    if username:
        return f"user:{username}"
    return f"browser:{browser_id}" if browser_id else None


def _status_text(info: JobInfo) -> str:
    if info.status == "queued":
        return f"queued (#{info.queue_position})" if info.queue_position else "queued"
    if info.status == "running":
        return f"running {info.progress:.0%}"
    if info.status == "failed":  # the whole message: the table wraps it
        return f"failed: {info.record.error or ''}"
    return info.status


def table_html(rows: list[list[str]]) -> str:
    """The list as an HTML table that fits its box: cells wrap (a failure's whole message
    included) instead of scrolling sideways, and on a phone each job is a block of labelled
    lines (assets/app.css). Every cell is escaped: file names and errors come from outside."""
    if not rows:
        return '<div class="jobs-none">No recordings yet.</div>'
    head = "".join(f'<th class="col-{i}">{html.escape(HEADERS[i])}</th>' for i in SHOWN_COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="col-{i}" data-label="{html.escape(HEADERS[i], quote=True)}">'
            f"{html.escape(str(row[i]))}</td>"
            for i in SHOWN_COLUMNS
        )
        + "</tr>"
        for row in rows
    )
    return f'<table class="jobs-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _audio_text(info: JobInfo) -> str:
    result = info.result() if info.status == "done" else None
    if result is None:
        return ""
    minutes, seconds = divmod(int(round(result.duration)), 60)
    return f"{minutes}:{seconds:02d}"


def _shown(info: JobInfo) -> ShownJob:
    record = info.record
    return ShownJob(record.id, record.name, record.options, record.transcription(), record.speaker_names)


def _choice_label(info: JobInfo) -> str:
    submitted = time.strftime("%H:%M", time.localtime(info.record.created_at))
    label = f"{info.record.name or info.id} · {submitted}"
    return label if info.status == "done" else f"{label} ({info.status})"


class RecentJobs:
    """The recent-jobs list of the page; see the module docstring."""

    def __init__(self, jobs: JobManager, limit: int = LIMIT):
        self.jobs = jobs
        self.limit = limit
        self.secret = jobs.store.secret(SECRET_FILE)  # every replica of a shared store reads the same
        self._sessions: OrderedDict[str, str] = OrderedDict()  # Gradio session hash -> owner
        self._lock = threading.Lock()
        # inside Gradio's cache, so Gradio serves the files there instead of copying them
        self.files_root = Path(tempfile.mkdtemp(prefix="whisper-app-results-", dir=gradio_cache()))
        # removed at exit at the latest
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.files_root, True)

    # -- submitting -------------------------------------------------------------------------
    def submit(self, audio, options: JobOptions, name: str = "") -> JobHandle:
        """JobManager.submit for the page: the job belongs to whoever sent it (see module doc)."""
        owner = self._owner_of(LocalContext.request.get(None))
        return self.jobs.submit(audio, options, name=name, owner=owner, source="page")

    def _owner_of(self, request: gr.Request | None) -> str | None:
        """Who sent a page request: the login, else the browser its session was loaded in."""
        owner = _owner_from(request, "")
        if owner is None and request is not None:
            with self._lock:
                owner = self._sessions.get(getattr(request, "session_hash", None) or "")
        return owner

    # -- the result area's jobs (ui/page/shown_jobs.py) -------------------------------------
    def remember(self, job: ShownJob) -> None:
        """Nothing to keep: the store has the job."""

    def get(self, job_id: str, request: gr.Request | None, browser_id: str = "") -> ShownJob | None:
        """One of the asker's done jobs, as the result area shows it; None for anyone else's."""
        owner = _owner_from(request, browser_id) if browser_id else self._owner_of(request)
        info = self._owned(job_id, owner)
        return _shown(info) if info is not None and info.status == "done" else None

    def name_speakers(self, job_id: str, changes, request: gr.Request | None) -> ShownJob | None:
        info = self._owned(job_id, self._owner_of(request))
        if info is None or info.status != "done":
            return None
        named = name_speakers(self.jobs, info, changes)
        return None if named is None else _shown(named)

    def cancel(self, handle: JobHandle) -> None:
        """The page's Cancel: through the job manager, so the job is stored as cancelled by its user."""
        self.jobs.cancel(handle.id)

    def _remember(self, request: gr.Request | None, owner: str | None) -> None:
        session = getattr(request, "session_hash", None) if request is not None else None
        if not session or not owner:
            return
        with self._lock:
            self._sessions[session] = owner
            self._sessions.move_to_end(session)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    # -- the list ---------------------------------------------------------------------------
    def rows(self, owner: str | None) -> tuple[list[list[str]], list[tuple[str, str]]]:
        """Table rows and the download choices (finished jobs) for `owner`."""
        if owner is None:
            return [], []
        infos = self.jobs.recent(owner, self.limit)
        rows = [
            [
                time.strftime("%Y-%m-%d %H:%M", time.localtime(i.record.created_at)),
                i.record.name or "(recording)",
                _status_text(i),
                _audio_text(i),
                i.id,
            ]
            for i in infos
        ]
        choices = [(_choice_label(i), i.id) for i in infos if i.finished]
        return rows, choices

    def _owned(self, job_id: str | None, owner: str | None) -> JobInfo | None:
        """One of `owner`'s jobs; None for an unknown id or anyone else's."""
        info = self.jobs.get(job_id) if job_id else None
        return info if info is not None and owner is not None and info.record.owner == owner else None

    def files(self, job_id: str | None, owner: str | None) -> list[str]:
        """The result files of one of `owner`'s finished jobs; [] for anyone else's."""
        info = self._owned(job_id, owner)
        if info is None or info.status != "done":
            return []
        folder = self.files_root / info.id  # the id is ours (hex), never client text
        shutil.rmtree(folder, ignore_errors=True)
        stem = Path(info.record.name).stem or info.id
        result = info.result()
        files = write_files(
            result,
            folder,
            stem,
            formats_for(result, DOWNLOAD_FORMATS),  # and rttm for a diarized job
            subtitles=SubtitleOptions.from_settings(self.jobs.engine.settings),
        )
        return DownloadDir.private(files)

    def delete(self, job_id: str | None, owner: str | None) -> bool:
        """Forget one of `owner`'s finished jobs, its result and files; False for anyone else's."""
        info = self._owned(job_id, owner)
        if info is None or not info.finished:
            return False
        shutil.rmtree(self.files_root / info.id, ignore_errors=True)
        return self.jobs.delete(info.id)

    # -- the page -----------------------------------------------------------------------------
    def render(self) -> None:
        """Add the list to the gr.Blocks being built (call inside its `with` block)."""
        browser_id = gr.BrowserState("", storage_key=STORAGE_KEY, secret=self.secret)
        with gr.Accordion("Recent jobs", open=False, elem_id="recent-jobs"):
            gr.Markdown(
                f"Your last {self.limit} recordings, kept for "
                f"{self.jobs.retention_s / 86400:g} days. Pick a finished one to download its files "
                "again, or to delete it (its transcript and files) now."
            )
            table = gr.HTML(table_html([]), elem_id="recent-jobs-table")
            with gr.Row():
                choice = gr.Dropdown(
                    label="Finished job", choices=[], value=None, elem_id="recent-job-choice"
                )
                refresh = gr.Button("Refresh", size="sm", elem_id="recent-jobs-refresh")
                self._open = gr.Button("Show transcript", size="sm", elem_id="recent-job-open")
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="recent-job-delete")
            files = gr.File(
                label="Result files", file_count="multiple", interactive=False, elem_id="recent-job-files"
            )

        quick = dict(queue=False, show_progress="hidden", api_visibility="private")
        self._refresh_io = dict(fn=self._refresh_event, inputs=[browser_id], outputs=[table, choice], **quick)
        demo = gr.context.Context.root_block  # the Blocks being built
        demo.load(self._load_event, inputs=[browser_id], outputs=[browser_id, table, choice], **quick)
        refresh.click(**self._refresh_io)
        choice.change(self._on_choice, inputs=[choice, browser_id], outputs=[files], api_visibility="private")
        delete.click(self._delete_event, inputs=[choice, browser_id], outputs=[table, choice, files], **quick)
        self._choice, self._browser_id = choice, browser_id

    def attach(
        self, transcribe_event, page: PageLayout | None = None, speakers: SpeakerEvents | None = None
    ) -> None:
        """build_page's `extra` hook: render the list and refresh it after each transcription;
        with the page's layout and speaker events, Show transcript opens a job in its result area."""
        self.render()
        self.refresh_after(transcribe_event)
        if page is not None and speakers is not None:

            def show(job_id, stored_id, timestamps, width, lines, cue_s, per_segment, request: gr.Request):
                return self._show(
                    speakers, job_id, stored_id, timestamps, (width, lines, cue_s, per_segment), request
                )

            self._open.click(
                show,
                inputs=[self._choice, self._browser_id, page.timestamps, *page.subtitle_inputs],
                outputs=[
                    page.transcript,
                    page.segments,
                    page.details,
                    page.files,
                    page.speakers,
                    *page.speaker_outputs,
                ],
                api_visibility="private",
                show_progress="minimal",
            )

    def refresh_after(self, event):
        """Refresh the list when `event` (e.g. the Transcribe click) has finished."""
        return event.then(**self._refresh_io)

    # Event functions: Gradio passes the request (login name, session) by the annotation.
    def _on_load(self, stored_id: str, request: gr.Request):
        stored_id = stored_id or uuid.uuid4().hex  # first visit: this browser's id from now on
        owner = _owner_from(request, stored_id)
        self._remember(request, owner)
        rows, choices = self.rows(owner)
        return stored_id, rows, gr.Dropdown(choices=choices, value=None)

    def _on_refresh(self, stored_id: str, request: gr.Request):
        owner = _owner_from(request, stored_id)
        self._remember(request, owner)
        rows, choices = self.rows(owner)
        return rows, gr.Dropdown(choices=choices)

    def _load_event(self, stored_id: str, request: gr.Request):
        stored_id, rows, choices = self._on_load(stored_id, request)
        return stored_id, table_html(rows), choices

    def _refresh_event(self, stored_id: str, request: gr.Request):
        rows, choices = self._on_refresh(stored_id, request)
        return table_html(rows), choices

    def _delete_event(self, job_id: str | None, stored_id: str, request: gr.Request):
        owner = _owner_from(request, stored_id)
        if not job_id:
            gr.Info("Pick a finished job to delete first.", title="Nothing chosen")
        elif self.delete(job_id, owner):
            gr.Info("The job, its transcript and its files are deleted.", title="Deleted")
        rows, choices = self.rows(owner)
        return table_html(rows), gr.Dropdown(choices=choices, value=None), []

    def _on_choice(self, job_id: str | None, stored_id: str, request: gr.Request):
        return self.files(job_id, _owner_from(request, stored_id))

    def _show(self, speakers: SpeakerEvents, job_id, stored_id, timestamps, subtitle_fields, request):
        """Show transcript: the chosen job in the page's result area (SpeakerEvents.show)."""
        job = self.get(job_id, request, stored_id) if job_id else None
        if job is None:
            gr.Info("Pick a finished job to show first.", title="Nothing chosen")
            return (gr.skip(),) * 10
        defaults = SubtitleOptions.from_settings(self.jobs.engine.settings)
        return speakers.show(job, timestamps, subtitle_options(defaults, *subtitle_fields))

    def cleanup(self) -> None:
        self._remove_files()
