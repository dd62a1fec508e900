"""The decode loop: one thread per device that advances every live stream of every running job.

Each step takes the current window of as many live streams as fit in a batch, fairly (the
streams that waited longest first, whichever job they belong to), runs the encoder and the
decoder on that batch once (engine.transcriber.decode_batch) and hands each stream its
result. Two users' jobs therefore fill one batch instead of taking turns, and a job of
eight sections keeps eight rows busy. Rows share a batch when they share the model, the
task, the language and the token cap; each keeps its own prompt, so a job's result does not
depend on what ran beside it.

Cancellation and progress act at a step's boundary: a cancelled job's streams leave before
the next batch is formed, and progress moves as each window is decoded.

On CUDA a step's batch is at most what the free memory holds (engine.memory); when CUDA
runs out of memory anyway, the cache is emptied, the loop's batch limit halved and the same
windows tried again; a single window that cannot fit fails its job with `WindowTooLarge`.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

import torch
from whisper.model import Whisper

from .fast_decode import decode_rows
from .memory import fit_batch_size
from .options import DecodeOptions
from .stream import SectionStream, StreamWindow
from .transcriber import Decoder, WindowTooLarge, align_words, decode_batch, free_cached_memory, too_large_message
from .worker import JobCancelled

log = logging.getLogger(__name__)

# Every forward pass on a shared model goes through this lock: the decode loop's steps, a
# job's language detection and the warm-up. Word timing switches SDPA off for the whole
# MultiHeadAttention class, so two threads running models at once could disturb each other.
MODEL_LOCK = threading.Lock()

POLL_S = 0.05  # how often a waiting job looks at its cancel flag


@dataclass(eq=False)
class _Job:
    model: Whisper
    options: DecodeOptions
    language: str
    streams: List[SectionStream]
    cancelled: Callable[[], bool]  # polled before each step
    on_progress: Callable[[float, float], None]  # (seconds done, seconds in all)
    error: Optional[BaseException] = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def batch_key(self) -> Tuple:
        """Rows of jobs with equal keys may share a batch."""
        return id(self.model), self.options.task, self.language, self.options.max_new_tokens

    def report_progress(self) -> None:
        try:
            self.on_progress(sum(s.done_s for s in self.streams), sum(s.duration_s for s in self.streams))
        except Exception:  # an observer must never break the loop
            log.exception("progress callback failed")


@dataclass(eq=False)
class _Live:
    job: _Job
    stream: SectionStream


def return_freed_host_memory() -> None:
    """Hand the heap memory freed by the last jobs back to the system. glibc keeps freed
    memory in per-thread arenas; with the loop's thread, the workers and the web server all
    allocating, a few hundred MB of it stayed resident after a burst of jobs (measured:
    +160 MB over ten 5-minute jobs). Nothing to do where malloc_trim does not exist."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class DecodeLoop:
    """Advances streams in shared batches; `run()` is called from a job's thread and blocks.

    `batch_size` is the most windows one step decodes: larger batches use the GPU better
    and cost GPU memory (about 0.3 GB per window for large-v3 in fp16). `decoder` has
    `engine.fast_decode.decode_rows`' signature; tests put an allocation failure in front of it.
    """

    def __init__(self, fp16: bool, batch_size: int, memory_threshold_mb: Optional[float] = None,
                 decoder: Decoder = decode_rows, lock: threading.Lock = MODEL_LOCK):
        self.fp16 = fp16
        self.batch_size = batch_size
        self.memory_threshold_mb = memory_threshold_mb
        self._decoder = decoder
        self._lock = lock
        self._live: Deque[_Live] = deque()
        self._cond = threading.Condition()
        self._limit = batch_size  # lowered by an out-of-memory error until the loop is idle
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="decode-loop", daemon=True)
        self._thread.start()

    # -- jobs' side --------------------------------------------------------------------------
    def run(self, model: Whisper, streams: List[SectionStream], options: DecodeOptions, language: str,
            cancelled: Callable[[], bool] = lambda: False,
            on_progress: Callable[[float, float], None] = lambda done, total: None) -> None:
        """Decode `streams` to their ends; raises the step's error, or JobCancelled once
        `cancelled()` turns true (the streams leave the loop at its next step)."""
        job = _Job(model, options, language, streams, cancelled, on_progress)
        live = [_Live(job, stream) for stream in streams if not stream.finished]
        if not live:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode loop is closed")
            self._live.extend(live)
            self._cond.notify_all()
        try:
            while not job.finished.wait(POLL_S):
                if cancelled():
                    raise JobCancelled("the job was cancelled")
            # The loop itself takes a cancelled job's streams out (and sets `finished`) when it
            # sees the flag first: unfinished streams then mean cancelled, not done.
            if cancelled() and not all(stream.finished for stream in streams):
                raise JobCancelled("the job was cancelled")
        finally:
            with self._cond:
                self._remove(job)
        if job.error is not None:
            raise job.error

    @property
    def live_streams(self) -> int:
        return len(self._live)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    # -- the loop ----------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            candidates = self._wait_for_work()
            if candidates is None:
                return
            self._serve_once(candidates)

    def _wait_for_work(self) -> Optional[List[_Live]]:
        """The live streams that may share the next batch (those of the longest-waiting
        stream's kind), once there are any; None when the loop is closed."""
        with self._cond:
            while True:
                for entry in list(self._live):
                    if entry.job.cancelled():
                        self._remove(entry.job)
                if self._live:
                    key = self._live[0].job.batch_key
                    return [entry for entry in self._live if entry.job.batch_key == key]
                if self._closed:
                    return None
                self._limit = self.batch_size  # idle: forget an earlier out-of-memory error
                return_freed_host_memory()
                self._cond.wait()

    def _serve_once(self, candidates: List[_Live]) -> None:
        """One step, then the bookkeeping: served streams go to the back of the line, jobs
        hear of their progress, finished and failed jobs leave."""
        try:
            served = self._step(candidates)
        except BaseException as exc:  # the loop must outlive any step
            log.exception("decode step failed")
            served = candidates
            for job in {entry.job for entry in candidates}:
                self._fail(job, exc)
        with self._cond:
            for entry in served:
                if entry in self._live:
                    self._live.remove(entry)
                    if not entry.stream.finished:
                        self._live.append(entry)
            for job in {entry.job for entry in served}:
                if job.error is not None:
                    self._remove(job)
                    continue
                job.report_progress()
                if all(stream.finished for stream in job.streams):
                    job.finished.set()

    def _step(self, candidates: List[_Live]) -> List[_Live]:
        """Decode one window of up to a batch of `candidates`; returns the entries served
        (streams that turned out to be finished included)."""
        job = candidates[0].job
        model = job.model
        with self._lock, torch.inference_mode():
            limit = fit_batch_size(self._limit, model.dims, next(model.parameters()).device,
                                   2 if self.fp16 else 4, job.options.max_new_tokens, self.memory_threshold_mb)
            served: List[_Live] = []
            batch: List[Tuple[_Live, StreamWindow]] = []
            for entry in candidates:
                window = entry.stream.next_window()  # None: the rest of the section is silence
                served.append(entry)
                if window is not None:
                    batch.append((entry, window))
                    if len(batch) == limit:
                        break
            if not batch:
                return served
            try:
                results = decode_batch(model, [w for _, w in batch], [e.job.options for e, _ in batch],
                                       job.language, self.fp16, self._decoder)
                alignments = align_words(model, [(e.stream, w) for e, w in batch], results)
            except torch.OutOfMemoryError:
                results = None
            if results is None:
                # Out of the except block, the traceback no longer holds the failed batch's
                # tensors, so emptying the cache really hands their memory back.
                free_cached_memory()
                if len(batch) == 1:
                    self._fail(batch[0][0].job, WindowTooLarge(too_large_message(model, self.fp16,
                                                                                 job.options.max_new_tokens)))
                else:
                    self._limit = max(1, len(batch) // 2)
                    log.warning("CUDA out of memory: retrying with batches of %d windows", self._limit)
                return served
            for (entry, window), result, alignment in zip(batch, results, alignments):
                entry.stream.advance(window, result, alignment)
        return served

    def _fail(self, job: _Job, error: BaseException) -> None:
        job.error = error
        job.finished.set()

    def _remove(self, job: _Job) -> None:
        """Take a job's streams out of the loop (caller holds the condition)."""
        for entry in [e for e in self._live if e.job is job]:
            self._live.remove(entry)
        job.finished.set()
