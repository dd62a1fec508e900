"""The result area's speakers: renaming one (A -> "Ada") and showing a finished job again.

Below the segments view of a diarized transcript sits a small panel: the speaker to rename
(a drop-down of the labels, each with the name it has), a name, and **Rename**. A rename is
stored with the job (ui/page/shown_jobs.py) and redraws what shows speakers: the transcript
box, the segments view (the speaker keeps its colour) and the downloads, written again from
the renamed result through output/. The words never change; an empty name gives the speaker
its letter back.

The panel keeps the shown job's id in a hidden field, not its result: a rename reads the job
again (on the app's page from the job store, checking it is the asker's), so a second tab,
a reload through Recent jobs or a restart between two renames all find the same names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from engine import Engine, EngineError
from output import SubtitleOptions, formats_for, write_files
from ui.page.files import DOWNLOAD_FORMATS, DownloadDir
from ui.page.form import speakers_choice, subtitle_options
from ui.page.render import details_markdown, notice_html, segments_html, transcript_text
from ui.page.shown_jobs import ShownJob, ShownJobs
from ui.page.sidebar import model_label

log = logging.getLogger(__name__)


def speaker_choices(job: ShownJob) -> list[tuple[str, str]]:
    """The rename drop-down: each label (the value), shown with its name where it has one."""
    names = job.speaker_names
    return [
        (f"{label} → {names[label]}" if label in names else label, label) for label in job.result.speakers
    ]


class SpeakerEvents:
    """The speaker panel's events, and the result area drawn for a finished job (`show`)."""

    def __init__(self, engine: Engine, downloads: DownloadDir, shown: ShownJobs):
        self.engine = engine
        self.downloads = downloads
        self.shown = shown

    # -- what the panel shows -------------------------------------------------------------------
    def panel(self, job: ShownJob | None) -> tuple:
        """Updates of (panel, job id, speaker drop-down, name, notice): shown for a diarized
        job, its first speaker picked with its name, hidden otherwise."""
        if job is None or not job.result.speakers:
            return gr.update(visible=False), "", gr.update(choices=[], value=None), "", ""
        choices = speaker_choices(job)
        first = choices[0][1]
        name = job.speaker_names.get(first, "")
        return gr.update(visible=True), job.id, gr.update(choices=choices, value=first), name, ""

    def files(self, job: ShownJob, subtitles: SubtitleOptions) -> list[str]:
        """The downloads of `job` with its names, written afresh."""
        result = job.named
        files = write_files(
            result,
            self.downloads.new_job_dir(),
            Path(job.name).stem or job.id,
            formats_for(result, DOWNLOAD_FORMATS),  # rttm too, for a diarized result
            subtitles=subtitles,
        )
        return self.downloads.private(files)

    def show(self, job: ShownJob, timestamps: bool, subtitles: SubtitleOptions) -> tuple:
        """The result area for a finished job (Recent jobs reopening one): (transcript,
        segments, details, files, the Speakers option it was asked with, *panel)."""
        result = job.named
        return (
            transcript_text(result, bool(timestamps)),
            segments_html(result),
            details_markdown(result, model_label(job.options.model or result.model)),
            self.files(job, subtitles),
            speakers_choice(job.options),
            *self.panel(job),
        )

    # -- the events -----------------------------------------------------------------------------
    def pick(self, job_id: str, label: str | None, request: gr.Request):
        """A speaker picked in the drop-down: its name (if it has one) in the name field."""
        job = self.shown.get(job_id, request) if job_id else None
        return "" if job is None or not label else job.speaker_names.get(label, "")

    def rename(
        self,
        job_id: str,
        label: str | None,
        name: str | None,
        timestamps: bool,
        max_line_width,
        max_lines,
        max_cue_s,
        per_segment: bool | None,
        request: gr.Request,
    ) -> tuple:
        """Rename `label` to `name` (empty: back to its letter). Returns (transcript, segments,
        files, speaker drop-down, name, notice); a refusal only changes the notice."""
        keep = (gr.skip(),) * 5
        if not job_id or not label:
            return *keep, notice_html("Cannot rename", "Pick a speaker first.")
        try:
            subtitles = subtitle_options(
                SubtitleOptions.from_settings(self.engine.settings),
                max_line_width,
                max_lines,
                max_cue_s,
                per_segment,
            )
            job = self.shown.name_speakers(job_id, {label: (name or "").strip() or None}, request)
        except gr.Error as error:
            return *keep, notice_html(error.title or "Cannot rename", error.message)
        except EngineError as exc:  # a bad name (its message says why), or the job store away
            return *keep, notice_html("Cannot rename", str(exc))
        if job is None:
            return *keep, notice_html(
                "Cannot rename", "This transcript is no longer kept; open it again from Recent jobs."
            )
        log.info("Speaker %s of job %s renamed on the page", label, job_id)
        result = job.named
        choices = speaker_choices(job)
        return (
            transcript_text(result, bool(timestamps)),
            segments_html(result),
            self.files(job, subtitles),
            gr.update(choices=choices, value=label),
            job.speaker_names.get(label, ""),
            "",
        )
