"""JobTicket: what `JobManager.submit` returns, the job followed wherever it runs.

    ticket = jobs.submit("talk.mp3", JobOptions(language="en"))
    ticket.status, ticket.queue_position, ticket.seconds_done     # live, as the engine's JobHandle
    ticket.result(timeout=60)                                     # blocks; raises the job's error

Submitting only stores the job; some replica claims it later, maybe this one, maybe another. So
the ticket has the engine `JobHandle`'s face (what the page, the routes and the streaming
response read) and takes its state from whichever source knows it: this replica's engine
handle while the job runs here (`attach`), else the job's row as the manager's queue loop reads
it (`observe`), finished when the job finishes (`resolve`). A job that ran elsewhere comes back
as its stored result, or its stored error as the class it was raised as (`stored_error`), so a
synchronous client is told the same whichever replica ran its job.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from engine.audio.files import AudioInfo
from engine.errors import error_class
from engine.results import Segment, TranscriptionResult
from engine.worker import JobCancelled, JobHandle, JobStatus
from jobs.store import JobRecord

FINAL = {"done": JobStatus.DONE, "failed": JobStatus.FAILED, "cancelled": JobStatus.CANCELLED}


def stored_error(record: JobRecord) -> BaseException:
    """The error a finished row keeps, as an object of the class it was raised as where that is an
    engine or built-in exception taking a message (else RuntimeError), with the stored message."""
    message = record.error or f"job {record.id} {record.status}"
    cls = error_class(record.error_type or "") or getattr(builtins, record.error_type or "", None)
    if record.status == "cancelled" and cls is None:
        cls = JobCancelled
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            error = cls(message)
            if str(error) == message:
                return error
        except Exception:  # a class whose constructor wants other arguments
            pass
    return RuntimeError(message)


class JobTicket:
    """A submitted job as the engine's JobHandle shows one; see the module docstring.

    `cancel` is the manager's cancel (through the store, so any replica's run stops)."""

    def __init__(self, record: JobRecord, cancel: Callable[[str], object]):
        self.id = record.id
        self.submitted_at = record.created_at
        self.started_at: float | None = None  # when it was claimed (the row's started_at)
        self.finished_at: float | None = None
        self._cancel = cancel
        self._future: Future = Future()
        self._lock = threading.Lock()
        self._engine: JobHandle | None = None  # this replica's handle while the job runs here
        self._final: JobStatus | None = None
        self._row_status = JobStatus.QUEUED  # as the row said at the last look
        self._position = 0  # the queue position at the last look
        self._seconds = (0.0, 0.0)  # (done, total) at the last look
        self._cancel_seen = False  # the row says a cancel was asked
        self._attempt = 0  # the attempt whose streamed segments `_segments` holds
        self._segments: list[Segment] = []
        self._streamed = threading.Event()  # stream_text() was called
        self.stored = False  # its row is committed (before, the queue loop does not look for it)
        self.probe: AudioInfo | None = None  # check_audio's answer at submit: a claim here skips the probe

    # -- the sources of its state (the job manager calls these) -------------------------------
    def attach(self, handle: JobHandle, started_at: float | None) -> None:
        """The job runs here now: live state from the engine's handle."""
        with self._lock:
            self.started_at = started_at
            self._engine = handle
        if self._streamed.is_set():
            handle.stream_text()

    def detach(self) -> None:
        """The job left this replica (its lease went elsewhere): back to reading its row."""
        with self._lock:
            self._engine = None
            self._row_status = JobStatus.QUEUED

    @property
    def running_here(self) -> bool:
        return self._engine is not None

    @property
    def wants_segments(self) -> bool:
        """A client streams its text: the queue loop reads the segments stored by the holder."""
        return self._streamed.is_set()

    @property
    def segments_read(self) -> int:
        """How many stored segments of `segments_attempt` it holds: where the next read starts."""
        return len(self._segments)

    @property
    def segments_attempt(self) -> int:
        return self._attempt

    def observe(
        self, record: JobRecord, position: int, segments: tuple[int, list[Segment]] | None = None
    ) -> None:
        """The row as the queue loop read it, with its queue position and `segments`: (attempt,
        the segments stored after the `segments_read` first), or all of a new attempt's."""
        with self._lock:
            self._row_status = JobStatus.RUNNING if record.status == "running" else JobStatus.QUEUED
            self.started_at = record.started_at if record.status == "running" else self.started_at
            self._position = position
            self._seconds = (record.seconds_done, record.seconds_total)
            self._cancel_seen = record.cancel_requested
            if segments is not None:
                attempt, new = segments
                if attempt != self._attempt:
                    self._attempt, self._segments = attempt, []
                self._segments = [*self._segments, *new]

    def resolve(self, status: str, result: Any = None, error: BaseException | None = None) -> bool:
        """The job finished (here or anywhere); False if the ticket had been resolved already."""
        with self._lock:
            if self._final is not None:
                return False
            self._final = FINAL[status]
            if self._engine is not None:  # the seconds it got to stay readable (a cancelled job's)
                self._seconds = (self._engine.seconds_done, self._engine.seconds_total)
            self._engine = None
        self.finished_at = self.finished_at or time.time()
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)
        return True

    # -- JobHandle's face ------------------------------------------------------------------
    @property
    def status(self) -> JobStatus:
        if self._final is not None:
            return self._final
        return JobStatus.RUNNING if self._engine is not None else self._row_status

    @property
    def progress(self) -> float:
        if self._final is JobStatus.DONE:
            return 1.0
        done, total = self._live_seconds()
        return done / total if total else 0.0

    @property
    def seconds_done(self) -> float:
        return self._live_seconds()[0]

    @property
    def seconds_total(self) -> float:
        return self._live_seconds()[1]

    def _live_seconds(self) -> tuple[float, float]:
        engine = self._engine
        return (engine.seconds_done, engine.seconds_total) if engine is not None else self._seconds

    @property
    def queue_position(self) -> int:
        return 0 if self.status is not JobStatus.QUEUED else self._position

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.submitted_at

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> TranscriptionResult:
        """Block for the result; raises the job's exception, JobCancelled, or TimeoutError."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            if self._future.done():  # the job's own TimeoutError (the same class since Python 3.11)
                raise
            raise TimeoutError(f"job {self.id} not finished after {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not finished after {timeout} s") from None

    def add_done_callback(self, fn: Callable[[JobTicket], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        """Ask the job to stop, wherever it runs; False when it had already finished."""
        if self.done():
            return False
        self._cancel(self.id)
        return True

    def cancel_requested(self) -> bool:
        engine = self._engine
        return self._cancel_seen or (engine is not None and engine.cancel_requested())

    def segments_so_far(self) -> list[Segment]:
        """The segments completed so far, in recording order: the engine's while the job runs
        here, else those its holder stored (the latest attempt's)."""
        engine = self._engine
        return engine.segments_so_far() if engine is not None else self._segments

    def stream_text(self) -> None:
        self._streamed.set()
        engine = self._engine
        if engine is not None:
            engine.stream_text()

    def streams_text(self) -> bool:
        return self._streamed.is_set()

    def __repr__(self) -> str:
        return f"<JobTicket {self.id} {self.status.value} {self.progress:.0%}>"
