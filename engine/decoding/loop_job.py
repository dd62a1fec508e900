"""What the decode loop holds of a running job: its sections' streams, how far they have come,
and which of them goes next when rows are scarce (see engine/decoding/decode_loop.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from whisper.decoding import DecodingOptions
from whisper.model import Whisper

from engine.decoding.options import TranscribeOptions
from engine.decoding.stream import SectionStream

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoopJob:
    """One job as the loop sees it: a stream per section, decoded with one model and options."""

    model: Whisper
    options: TranscribeOptions
    language: str
    streams: list[SectionStream]
    cancelled: Callable[[], bool]  # polled before each step
    on_progress: Callable[[float, float], None]  # (seconds done, seconds in all)
    streaming: Callable[[], bool] = lambda: False  # whether a client reads the text as it comes
    # how far into its window in the running decode each stream's timestamps have come, in
    # seconds; keyed by the stream, not held by its LiveStream (which points back here): a cycle
    # would keep the job's streams, and its whole recording, until the periodic collector ran
    into_window: dict[SectionStream, float] = field(default_factory=dict)
    reported_s: float = 0.0  # the most seconds reported done: progress never goes back
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> tuple:
        """Rows of jobs with equal keys may share a batch. A running decode decodes at one
        temperature, so a job whose first decode samples never joins a greedy one."""
        return (
            id(self.model),
            self.options.task,
            self.language,
            self.options.max_new_tokens,
            self.options.temperatures[0],
        )

    def first_options(self, fp16: bool) -> DecodingOptions:
        """A window's first decode: at the first temperature of the job's ladder (0: greedy)."""
        return DecodingOptions(
            task=self.options.task,
            language=self.language,
            temperature=self.options.temperatures[0],
            sample_len=self.options.max_new_tokens,
            fp16=fp16,
        )

    def earliest(self) -> SectionStream | None:
        """The first section, in recording order, that is not finished."""
        return next((stream for stream in self.streams if not stream.finished), None)

    def progress_s(self) -> float:
        """Seconds decoded: behind each stream's seek, and into the windows in the running decode."""
        return sum(s.done_s for s in self.streams) + sum(self.into_window.values())

    def head_start_over(self) -> bool:
        """Whether the job has something to show: its first text (a streaming job) or progress."""
        if self.streaming():
            return any(stream.windows_decoded for stream in self.streams)
        return self.progress_s() > 0

    def holds_back(self, stream: SectionStream) -> bool:
        """Whether `stream` waits for the earliest section's head start."""
        return stream is not self.earliest() and not self.head_start_over()

    def favours(self, stream: SectionStream) -> bool:
        """Whether `stream` goes before every other waiting one: the section a streaming client waits for."""
        return stream is self.earliest() and self.streaming()

    def report_progress(self) -> None:
        total = sum(s.duration_s for s in self.streams)
        # A window's seek may end before its latest timestamp (at its last complete segment, or
        # its last word): what was reported stays reported, and that stretch is decoded again.
        self.reported_s = min(max(self.reported_s, self.progress_s()), total)
        try:
            self.on_progress(self.reported_s, total)
        except Exception:  # an observer must never break the loop
            log.exception("progress callback failed")


@dataclass(eq=False)
class LiveStream:
    """One section's stream of a job, as a row of the running decode or waiting for one."""

    job: LoopJob
    stream: SectionStream


def prompt_tokens(job: LoopJob) -> int:
    """The longest prompt a window of this job may carry: whisper keeps the last
    n_text_ctx // 2 - 1 tokens of the previous text (223), none without previous text."""
    options = job.options
    if options.condition_on_previous_text or options.initial_prompt:
        return job.model.dims.n_text_ctx // 2 - 1
    return 0
