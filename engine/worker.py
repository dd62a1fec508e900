"""TranscriptionWorker: a bounded queue of jobs served by a fixed number of threads.

Bounded so a shared server degrades by refusing new work at once (`QueueFull`) instead of
piling up recordings until memory runs out. Every accepted job ends in exactly one of
done / failed / cancelled, and its handle says which, shutdown included.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from enum import Enum
from typing import Any

# re-exported: callers find them beside the worker that raises them
from engine.errors import JobCancelled, QueueFull, WorkerShutDown

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobHandle:
    """What `submit` returns: live status, queue position, progress, result, cancel."""

    def __init__(self, worker: TranscriptionWorker, request: Any, job_id: str):
        self.id = job_id
        self.request = request
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.status = JobStatus.QUEUED
        self.seconds_done = 0.0  # of the recording, decoded or skipped as silence
        self.seconds_total = 0.0  # the recording's length, once its audio is read
        self._worker = worker
        self._future: Future = Future()
        self._cancel_requested = threading.Event()
        self._segment_source: Callable[[], list[Any]] | None = None  # see show_segments
        self._segments: list[Any] = []  # segments completed so far, as of the last progress report
        self._text_streamed = threading.Event()  # see stream_text
        self._start_lock = threading.Lock()
        self._start_callbacks: list[Callable[[JobHandle], None]] | None = []  # None once started

    # -- live state ----------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """0..1; windows decoded over windows planned (1.0 once done)."""
        if self.status is JobStatus.DONE:
            return 1.0
        return self.seconds_done / self.seconds_total if self.seconds_total else 0.0

    @property
    def queue_position(self) -> int:
        """1 = next to start; 0 once running or finished."""
        return self._worker.position(self)

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.submitted_at

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """Block for the result; raises the job's exception, JobCancelled, or TimeoutError."""
        try:
            return self._future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not finished after {timeout} s") from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return self._future.exception(timeout)
        except FutureTimeout:
            raise TimeoutError(f"job {self.id} not finished after {timeout} s") from None

    def add_done_callback(self, fn: Callable[[JobHandle], None]) -> None:
        self._future.add_done_callback(lambda _: fn(self))

    def add_start_callback(self, fn: Callable[[JobHandle], None]) -> None:
        """Call fn(handle) when a worker starts the job, in that worker's thread before the job
        runs (here and now if it has started already; never for a job that never starts)."""
        with self._start_lock:
            if self._start_callbacks is not None:
                self._start_callbacks.append(fn)
                return
        fn(self)

    def _started(self) -> None:
        with self._start_lock:
            callbacks, self._start_callbacks = self._start_callbacks or [], None
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a listener's failure is not the job's
                log.exception("Start callback of job %s failed", self.id)

    def cancel(self) -> bool:
        """Cancel a queued job at once, or a running one at its next batch boundary.
        False when it had already finished."""
        if self.done():
            return False
        self._cancel_requested.set()
        self._worker._remove_queued(self)
        return True

    # -- used by the job while it runs ------------------------------------------------------
    def checkpoint(self) -> None:
        """Raise JobCancelled if cancel() was called; the job calls this between batches."""
        if self._cancel_requested.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")

    def cancel_requested(self) -> bool:
        """Whether cancel() was called: the decode loop drops the job's windows at its next step."""
        return self._cancel_requested.is_set()

    def segments_so_far(self) -> list[Any]:
        """The segments completed so far, in recording order (each section's only once those
        before it are complete), for a client that streams the text while the job runs."""
        return self._segments

    def stream_text(self) -> None:
        """A client reads the text as it is decoded (stream=true): the decode loop then favours
        the job's earliest unfinished section, whose text is the next to go out."""
        self._text_streamed.set()

    def streams_text(self) -> bool:
        return self._text_streamed.is_set()

    def show_segments(self, source: Callable[[], list[Any]]) -> None:
        """The running job says where its completed segments can be read. `source` is called at
        each progress report, which the decode loop makes between steps, when no stream is
        half-way through taking a window's result, so each snapshot is consistent."""
        self._segment_source = source

    def set_progress(self, done_s: float, total_s: float) -> None:
        """Seconds of the recording decoded (or skipped as silence) so far, of `total_s`."""
        self.seconds_done, self.seconds_total = done_s, total_s
        if self._segment_source is not None:
            self._segments = self._segment_source()

    def _finish(self, status: JobStatus, result: Any = None, error: BaseException | None = None) -> None:
        self.status = status
        self._segment_source = None  # it holds the job's streams, audio included: not past the job's end
        self.finished_at = time.time()
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.status.value} {self.progress:.0%}>"


class TranscriptionWorker:
    """`workers` threads take jobs from a queue of at most `queue_size` waiting jobs.

    More workers let more jobs overlap (audio decoding, windows planning, stitching run in
    parallel; model calls take turns), at the cost of the host memory of each recording
    being decoded at once.
    """

    def __init__(
        self,
        run: Callable[[Any, JobHandle], Any],
        workers: int = 2,
        queue_size: int = 16,
        name: str = "transcription",
        prepare_thread: Callable[[], None] | None = None,
    ):
        if workers < 1 or queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")
        self._run = run
        self._prepare_thread = prepare_thread  # called first in each worker thread (the engine: one CPU core)
        self.workers = workers
        self.queue_size = queue_size
        self._queue: deque[JobHandle] = deque()
        self._running: list[JobHandle] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._ids = itertools.count(1)
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- submitting ------------------------------------------------------------------------
    def submit(self, request: Any, job_id: str | None = None) -> JobHandle:
        """Queue a job; raises QueueFull at once when `queue_size` jobs are waiting."""
        with self._cond:
            if not self._accepting:
                raise WorkerShutDown("the server is shutting down and takes no new jobs")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(
                    f"the queue is full ({self.queue_size} jobs waiting, {len(self._running)} running); "
                    "try again in a minute"
                )
            handle = JobHandle(self, request, job_id or uuid.uuid4().hex[:12])
            self._queue.append(handle)
            self._cond.notify()
        return handle

    def position(self, handle: JobHandle) -> int:
        with self._cond:
            try:
                return self._queue.index(handle) + 1
            except ValueError:
                return 0

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return len(self._running)

    def jobs(self) -> list[JobHandle]:
        """Running jobs first, then waiting ones in queue order."""
        with self._cond:
            return [*self._running, *self._queue]

    def _remove_queued(self, handle: JobHandle) -> None:
        with self._cond:
            if handle in self._queue:
                self._queue.remove(handle)
                handle._finish(JobStatus.CANCELLED, error=JobCancelled(f"job {handle.id} was cancelled"))

    # -- serving -----------------------------------------------------------------------------
    def _serve(self) -> None:
        if self._prepare_thread is not None:
            self._prepare_thread()
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping and nothing left to do
                handle = self._queue.popleft()
                handle.status = JobStatus.RUNNING
                handle.started_at = time.time()
                self._running.append(handle)
            handle._started()
            try:
                handle.checkpoint()
                result = self._run(handle.request, handle)
            except JobCancelled as exc:
                handle._finish(JobStatus.CANCELLED, error=exc)
            except BaseException as exc:  # a failing job must never take the thread down
                log.warning("Job %s failed: %s: %s", handle.id, type(exc).__name__, exc)
                handle._finish(JobStatus.FAILED, error=exc)
            else:
                handle._finish(JobStatus.DONE, result)
            finally:
                with self._cond:
                    self._running.remove(handle)
                    self._cond.notify_all()

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs. drain=True finishes every accepted job first; drain=False fails
        the waiting ones with WorkerShutDown and cancels the running ones at their next batch."""
        with self._cond:
            self._accepting = False
            if not drain:
                while self._queue:
                    self._queue.popleft()._finish(
                        JobStatus.FAILED, error=WorkerShutDown("the server shut down before this job started")
                    )
                for handle in self._running:
                    handle._cancel_requested.set()
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
