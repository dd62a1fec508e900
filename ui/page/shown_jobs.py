"""The finished jobs the page's result area shows, and the names their speakers are given there.

    job = shown.get(job_id, request)                        # a ShownJob, or None for someone else's
    job = shown.name_speakers(job_id, {"A": "Ada"}, request)

The page keeps a job's id (never its result) beside the result it shows (ui/page/speakers.py),
so a rename can find the job again. On the app's page that is the job store, through Recent
jobs (ui/page/recent_jobs.py, which also checks that the job is the asker's); `MemoryJobs` is
for a page built without a job manager (build_page(engine) from a script): the last few
results it transcribed, in memory, gone with the process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import gradio as gr

from engine import JobOptions, TranscriptionResult
from jobs import merged_speaker_names


@dataclass(frozen=True)
class ShownJob:
    """A finished job as the result area shows it."""

    id: str
    name: str  # the recording's file name as sent: the downloads are named after it
    options: JobOptions  # what was asked (the Speakers choice among them)
    result: TranscriptionResult  # as transcribed: speakers as diarization labelled them
    speaker_names: Mapping[str, str] = field(default_factory=dict)  # label -> the name the user gave

    @property
    def named(self) -> TranscriptionResult:
        """The result with the user's names: what the page shows and every download holds."""
        return self.result.with_speaker_names(self.speaker_names)


class ShownJobs(Protocol):
    def remember(self, job: ShownJob) -> None:
        """A job the page has just transcribed (a durable store has it already)."""

    def get(self, job_id: str, request: gr.Request | None) -> ShownJob | None:
        """The job if it is finished and the asker's; None otherwise."""

    def name_speakers(
        self, job_id: str, changes: Mapping[str, str | None], request: gr.Request | None
    ) -> ShownJob | None:
        """Store new names (InvalidRequest for a bad label or name); the job afterwards."""


class MemoryJobs:
    """ShownJobs of a page without a job store: the last KEEP results it transcribed."""

    KEEP = 32

    def __init__(self):
        self._jobs: OrderedDict[str, ShownJob] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, job: ShownJob) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._jobs.move_to_end(job.id)
            while len(self._jobs) > self.KEEP:
                self._jobs.popitem(last=False)

    def get(self, job_id: str, request: gr.Request | None = None) -> ShownJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def name_speakers(
        self, job_id: str, changes: Mapping[str, str | None], request: gr.Request | None = None
    ) -> ShownJob | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job = replace(job, speaker_names=merged_speaker_names(job.result, job.speaker_names, changes))
            self._jobs[job_id] = job
            return job
