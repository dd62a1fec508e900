"""On CPU, one thread runs torch on every core: the decode loop's. The others use one core.

PyTorch's CPU kernels run on OpenMP (libgomp). libgomp gives every thread that starts a
parallel region a team of worker threads of its own, kept for as long as that thread lives,
and once a process holds more of them than it has cores it stops letting idle workers spin
between regions: every region then has to wake its worker from sleep. A decoder step is
hundreds of small regions, so the decode loop ran at half speed as soon as any other thread
(a job's voice activity detection, the model load, the warm-up) had run a multi-threaded op
(docs/benchmarks.md, "CPU threads", has the figures).

So on CPU the engine runs its job threads on one core (`single_threaded_here`: OpenMP's and
MKL's per-thread counts, leaving the process-wide count that the decode loop uses as it is)
and loads models in a thread that ends when the model is ready (`in_passing_thread`). The
job threads' work (audio decoding, voice activity, log-mels, language detection) is a small
part of a job. A caller's own thread that runs torch on several cores (a script that also
runs whisper) slows the loop in the same way; `app.py`'s main thread runs no torch.

Both counts are set through the libraries torch has loaded (found in /proc/self/maps);
where they cannot be found (not Linux, a torch built otherwise) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _thread_count_setters() -> tuple[Callable[[int], int] | None, Callable[[int], int] | None]:
    """(OpenMP's omp_set_num_threads, MKL's per-thread MKL_Set_Num_Threads_Local), as loaded."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None, None

    def symbol(library: str, name: str):
        for path in sorted(paths):
            if path.rsplit("/", 1)[-1].startswith(library):
                try:
                    return getattr(ctypes.CDLL(path), name)
                except (OSError, AttributeError):
                    return None
        return None

    omp = symbol("libgomp", "omp_set_num_threads")
    mkl = symbol("libtorch_cpu", "MKL_Set_Num_Threads_Local")  # MKL is linked into torch
    if omp is None:
        log.debug("libgomp not found: job threads keep torch's thread count")
    return omp, mkl


def single_threaded_here() -> None:
    """Run this thread's torch ops on one core (OpenMP and MKL), the rest of the process unchanged."""
    torch.get_num_threads()  # torch sets a thread's counts on its first use: first, or it would undo this
    omp, mkl = _thread_count_setters()
    if omp is not None:
        omp(1)
    if mkl is not None:
        mkl(1)


def in_passing_thread(work: Callable[[], T]) -> T:
    """`work()` run in a new thread that ends with it, so that the OpenMP team it starts
    ends too; its result returned, or its exception raised, here."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="passing", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
