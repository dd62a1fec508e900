"""ModelLock: the one lock every forward pass on a shared model takes.

with lock:                 # a token step, a language detection, a warm-up
    ...
lock.let_waiters_in()      # the decode loop, between steps: whoever waits goes first
"""

from __future__ import annotations

import threading
import time


class ModelLock:
    """Every forward pass on a shared model goes through this lock: the decode loop's steps, a
    job's language detection and the warm-up. Word timing switches SDPA off for the whole
    MultiHeadAttention class, so two threads running models at once could disturb each other.

    The decode loop holds it one token step at a time and, between steps, lets anyone waiting
    go first (`let_waiters_in`): a plain lock released and taken again at once by the same
    thread may never be handed to a waiting one, and a new job's language detection would
    wait for every running job to end."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()

    def __enter__(self) -> ModelLock:
        with self._count:
            self._waiting += 1
        self._lock.acquire()
        with self._count:
            self._waiting -= 1
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def let_waiters_in(self, patience_s: float = 1.0) -> None:
        """Wait (not holding the lock) until nobody else waits for it, for `patience_s` at most."""
        deadline = time.monotonic() + patience_s
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.001)


MODEL_LOCK = ModelLock()
