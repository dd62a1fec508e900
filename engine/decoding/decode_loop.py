"""The decode loop: one thread per device that advances every live stream of every running job.

The loop keeps one greedy decode running (engine.decoding.greedy_decode.GreedyDecode) whose rows are
the current windows of as many live streams as fit in a batch, taken fairly (the streams
that waited longest first, whichever job they belong to). After every token step the rows
whose window ended leave: their fallback re-decodes and word timing run, their streams
advance, and each stream's next window joins the running decode in the row it left, so
the batch stays full while windows end at different lengths. Two users' jobs therefore
fill one batch instead of taking turns, and a job of eight sections keeps eight rows busy.
Rows share a batch when they share the model, the task, the language and the token cap;
each keeps its own prompt, so a job's result does not depend on what ran beside it.

Cancellation and progress act at a token step's boundary: a cancelled job's rows leave the
decode before the next step, and progress moves as each row's timestamps advance through its
window (the latest timestamp a row sampled is how far into its window it has decoded), not
only when a window ends: a 30 s window takes most of a job's first seconds on a CPU.

A job's first moments are its earliest section's. Its other sections wait (a head start)
until the job has something to show: its progress has moved or, for a job whose client
reads the text as it comes (stream=true), its first window is decoded. Admitted together,
a job's windows would first all be encoded (0.3 s each for tiny on two cores) and then
decoded side by side, so its first window ended no sooner than the others. After that, a
streaming job's earliest unfinished section comes first whenever rows are scarce: the text
goes out in recording order, so that section is what its client waits for. Neither changes
what a window decodes: each section's windows depend only on its own previous window.

A job whose first temperature is above 0 samples, which a greedy decode cannot: its rows
run in a decode of their own kind (engine.decoding.whole_decode.WholeDecode) that decodes
whole windows at each step, under the same scheduling.

On CUDA a running decode holds at most what the free memory holds (engine.decoding.memory);
when CUDA runs out of memory anyway, the cache is emptied, the loop's batch limit halved and
the same windows tried again; a single window that cannot fit fails its job with
`WindowTooLarge`.

`before_step`, when given, is called with the running decode before each of its steps,
holding the model lock: the one place tests act on the decode users get, to hold a step
(a gate), slow it, or raise torch.OutOfMemoryError to take the out-of-memory path.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import torch
from whisper.audio import FRAMES_PER_SECOND
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import Whisper

from engine.decoding.fallback import fall_back
from engine.decoding.fast_decode import supports
from engine.decoding.greedy_decode import GreedyDecode
from engine.decoding.loop_job import LiveStream, LoopJob, prompt_tokens
from engine.decoding.memory import fit_batch_size, too_large_message
from engine.decoding.model_lock import MODEL_LOCK, ModelLock
from engine.decoding.options import TranscribeOptions
from engine.decoding.stream import TIME_PRECISION, SectionStream, StreamWindow
from engine.decoding.whole_decode import WholeDecode
from engine.decoding.word_timing import align_windows
from engine.device.cuda import free_cuda_cache
from engine.device.host_memory import return_freed_host_memory
from engine.errors import JobCancelled, WindowTooLarge

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.05  # how often a waiting job looks at its cancel flag
PROGRESS_EVERY_STEPS = 8  # on CUDA, steps between looks at how far the rows have come (each look stalls it)

RunningDecode = GreedyDecode | WholeDecode
BeforeStep = Callable[[RunningDecode], None]  # see the module's docstring


def start_decode(model: Whisper, options: DecodingOptions) -> RunningDecode:
    """A running decode for rows decoded with `options`: GreedyDecode for what it does
    (greedy, the language known), a WholeDecode for the rest (a first temperature above 0)."""
    return GreedyDecode(model, options) if supports(options) else WholeDecode(model, options)


class DecodeLoop:
    """Advances streams in shared batches; `run()` is called from a job's thread and blocks.

    `batch_size` is the most windows one step decodes: larger batches use the GPU better
    and cost GPU memory (about 0.3 GB per window for large-v3 in fp16). `before_step`: see
    the module's docstring. `start_decode` makes each running decode; the bench's comparison
    with stock whisper.decode replaces it (bench/stock_decode.py).
    """

    def __init__(
        self,
        fp16: bool,
        batch_size: int,
        memory_threshold_mb: float | None = None,
        before_step: BeforeStep | None = None,
        lock: ModelLock = MODEL_LOCK,
    ):
        self.fp16 = fp16
        self.batch_size = batch_size
        self.memory_threshold_mb = memory_threshold_mb
        self.before_step = before_step
        self.start_decode: Callable[[Whisper, DecodingOptions], RunningDecode] = start_decode
        self._lock = lock
        self._live: deque[LiveStream] = deque()
        self._cond = threading.Condition()
        self._limit = batch_size  # lowered by an out-of-memory error until the loop is idle
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="decode-loop", daemon=True)
        self._thread.start()

    # -- jobs' side --------------------------------------------------------------------------
    def run(
        self,
        model: Whisper,
        streams: list[SectionStream],
        options: TranscribeOptions,
        language: str,
        cancelled: Callable[[], bool] = lambda: False,
        on_progress: Callable[[float, float], None] = lambda done, total: None,
        streaming: Callable[[], bool] = lambda: False,
    ) -> None:
        """Decode `streams` (a recording's sections, in order) to their ends; raises the step's
        error, or JobCancelled once `cancelled()` turns true (the streams leave the loop at its
        next step). While `streaming()` is true, the earliest unfinished section comes first."""
        job = LoopJob(model, options, language, streams, cancelled, on_progress, streaming)
        live = [LiveStream(job, stream) for stream in streams if not stream.finished]
        if not live:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the decode loop is closed")
            self._live.extend(live)
            self._cond.notify_all()
        try:
            while not job.finished.wait(CANCEL_POLL_S):
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
            self._decode_continuously(candidates)
            # Waiting for the next job, this frame would otherwise keep the last job's streams,
            # and through them its whole recording, alive.
            del candidates

    def _wait_for_work(self) -> list[LiveStream] | None:
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

    def _account(self, served: list[LiveStream]) -> None:
        """Bookkeeping after a step (caller holds the condition): served streams go to the back
        of the line or leave when finished, jobs hear of their progress, finished and failed jobs leave."""
        for entry in served:
            if entry in self._live:
                self._live.remove(entry)
                if not entry.stream.finished:
                    self._live.append(entry)
        for job in {entry.job: None for entry in served}:
            if job.error is not None:
                self._remove(job)
                continue
            job.report_progress()
            if all(stream.finished for stream in job.streams):
                job.finished.set()

    # -- a running decode that rows join and leave -------------------------------------------
    def _limit_now(self, job: LoopJob) -> int:
        model = job.model
        return fit_batch_size(
            self._limit,
            model.dims,
            next(model.parameters()).device,
            2 if self.fp16 else 4,
            job.options.max_new_tokens,
            self.memory_threshold_mb,
            prompt_tokens(job),
        )

    def _decode_continuously(self, candidates: list[LiveStream]) -> None:
        """Run one decode until no row is left: between its steps, rows whose window ended hand
        their result to their stream, and waiting streams of the same kind join (none while a
        stream of another kind waits, so that kind gets the next decode)."""
        job = candidates[0].job
        key, model = job.batch_key, job.model
        rows: dict[LiveStream, StreamWindow] = {}  # the entries in the decode, and the window each decodes
        ended: list[tuple[LiveStream, object]] = []
        joining: list[LiveStream] = []
        try:
            with self._lock:
                limit = self._limit_now(job)
                decode = self.start_decode(model, job.first_options(self.fp16))
            joining = self._ready(candidates, self._room(model, {}, limit))
            while True:
                with self._lock:
                    served = self._admit(decode, joining, rows)
                    if len(decode) and self.before_step is not None:
                        self.before_step(decode)
                    ended = decode.step() if len(decode) else []
                    served += self._finish_rows(model, job.language, ended, rows)
                with self._cond:
                    self._follow_windows(decode, rows)
                    self._account(served)
                    gone = [entry for entry in rows if entry.job.cancelled() or entry.job.error is not None]
                    for entry in gone:
                        del rows[entry]
                        self._remove(entry.job)
                    decode.drop(gone)
                    joining = self._joining(key, rows, self._room(model, rows, limit))
                if not len(decode) and not joining:
                    return
                self._lock.let_waiters_in()
        except torch.OutOfMemoryError:
            in_decode = list(rows)
        except BaseException as exc:  # the loop must outlive any step
            log.exception("decode step failed")
            with self._cond:
                touched = list(rows) + [entry for entry, _ in ended] + (joining or candidates)
                for failed in {entry.job: None for entry in touched}:
                    self._fail(failed, exc)
                    self._remove(failed)
            return
        # Out of the except block, the traceback no longer holds the decode's tensors, so
        # emptying the cache really hands their memory back.
        decode = ended = None
        in_decode = in_decode or candidates[:1]
        for entry in in_decode:
            entry.job.into_window.pop(entry.stream, None)  # their windows are decoded again
        self._out_of_memory(model, in_decode)
        if len(in_decode) == 1:  # its job failed
            with self._cond:
                self._remove(in_decode[0].job)

    @staticmethod
    def _room(model: Whisper, rows: dict[LiveStream, StreamWindow], limit: int) -> int:
        """How many windows may join before the next step. On a CPU one: its encoder pass takes
        as long as a dozen token steps, and windows joining one by one keep the rows already in
        the decode (and the progress they report) moving meanwhile. On a GPU a batch of them
        is encoded about as fast as one."""
        room = limit - len(rows)
        return min(room, 1) if next(model.parameters()).device.type == "cpu" else room

    def _joining(self, key: tuple, rows: dict[LiveStream, StreamWindow], room: int) -> list[LiveStream]:
        """Waiting streams of this kind that may join the decode now (caller holds the condition)."""
        waiting = [entry for entry in self._live if entry not in rows and not entry.job.cancelled()]
        if any(entry.job.batch_key != key for entry in waiting):
            return []  # let the decode drain: the other kind goes next
        return self._ready(waiting, room)

    @staticmethod
    def _ready(waiting: list[LiveStream], room: int) -> list[LiveStream]:
        """Of `waiting` (longest-waiting first), the `room` that join: the sections streaming
        clients wait for first, then the line's order; none a job holds back for its head start."""
        ready = [entry for entry in waiting if not entry.job.holds_back(entry.stream)]
        ready.sort(key=lambda entry: not entry.job.favours(entry.stream))  # stable: the line's order within
        return ready[: max(room, 0)]

    def _follow_windows(self, decode: RunningDecode, rows: dict[LiveStream, StreamWindow]) -> None:
        """How far each row has come into its window, and the jobs' progress with it: at every step
        on a CPU (looking costs nothing there); on a GPU every few steps, and at every step
        while a job waits for its first progress to end its head start."""
        jobs = {entry.job: None for entry in rows}
        waiting = any(not job.streaming() and not job.head_start_over() for job in jobs)
        if not jobs or (decode.step_count % PROGRESS_EVERY_STEPS and not waiting and not decode.host):
            return
        for entry, index in decode.timestamps_reached():
            window = rows.get(entry)
            if window is not None:
                entry.job.into_window[entry.stream] = min(
                    max(index, 0) * TIME_PRECISION, window.frames / FRAMES_PER_SECOND
                )
        for job in jobs:
            job.report_progress()

    def _admit(
        self, decode: RunningDecode, joining: list[LiveStream], rows: dict[LiveStream, StreamWindow]
    ) -> list[LiveStream]:
        """Each joining stream's next window into the decode; returns the entries served
        (streams that turned out to be finished included)."""
        batch: list[tuple[LiveStream, StreamWindow]] = []
        for entry in joining:
            window = entry.stream.next_window()  # None: the rest of the section is silence
            if window is not None:
                batch.append((entry, window))
        if batch:
            rows.update(batch)  # first: if the decode runs out of memory, these windows count as in it
            device = next(decode.model.parameters()).device
            decode.admit(
                torch.stack([w.mel for _, w in batch]).to(device),
                [w.prompt for _, w in batch],
                [entry for entry, _ in batch],
            )
        return [entry for entry in joining if entry not in rows]

    def _finish_rows(
        self,
        model: Whisper,
        language: str,
        ended: list[tuple[LiveStream, object]],
        rows: dict[LiveStream, StreamWindow],
    ) -> list[LiveStream]:
        """Rows whose window ended: fallback re-decodes, word timing, and their streams advance."""
        if not ended:
            return []
        finished = [(entry, rows.pop(entry)) for entry, _ in ended]
        for entry, _ in finished:
            entry.job.into_window.pop(entry.stream, None)  # its stream's seek moves instead
        with torch.inference_mode():
            results = fall_back(
                model,
                [window for _, window in finished],
                [entry.job.options for entry, _ in finished],
                [result for _, result in ended],
                language,
                self.fp16,
            )
            self._advance_streams(model, finished, results)
        return [entry for entry, _ in finished]

    def _advance_streams(
        self, model: Whisper, rows: list[tuple[LiveStream, StreamWindow]], results: list[DecodingResult]
    ) -> None:
        """Word timing for the decoded windows that want it (batched passes), then each stream
        takes its window's result. Timing comes first: if it runs out of memory, no stream has
        moved."""
        wanted = [
            i
            for i, ((entry, _), result) in enumerate(zip(rows, results))
            if entry.stream.needs_alignment(result)
        ]
        timings = align_windows(
            model, [(rows[i][0].stream.tokenizer, results[i], rows[i][1].frames) for i in wanted]
        )
        alignments: list[list | None] = [None] * len(rows)
        for i, timing in zip(wanted, timings):
            alignments[i] = timing
        for (entry, window), result, alignment in zip(rows, results, alignments):
            entry.stream.advance(window, result, alignment)

    def _out_of_memory(self, model: Whisper, entries: list[LiveStream]) -> None:
        """After CUDA ran out of memory decoding the windows of `entries` (their streams have
        not moved): hand the cache back, then halve the batch limit so the same windows are
        decoded again in smaller batches, or fail the job whose single window cannot fit."""
        free_cuda_cache()
        if len(entries) <= 1:
            job = entries[0].job
            self._fail(job, WindowTooLarge(too_large_message(model, self.fp16, job.options.max_new_tokens)))
        else:
            self._limit = max(1, len(entries) // 2)
            log.warning("CUDA out of memory: retrying with batches of %d windows", self._limit)

    def _fail(self, job: LoopJob, error: BaseException) -> None:
        job.error = error
        job.finished.set()

    def _remove(self, job: LoopJob) -> None:
        """Take a job's streams out of the loop (caller holds the condition)."""
        for entry in [e for e in self._live if e.job is job]:
            self._live.remove(entry)
        job.finished.set()
