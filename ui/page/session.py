"""What the page remembers per session (a browser tab) between its events.

`SessionJobs` knows which Transcribe presses each session has in flight, so its Cancel
button stops that tab's job, queued or running, and nobody else's. `SessionHandoff` carries
one value (the segments view, a refusal's notice) from the Transcribe call that made it to
the quick event that shows it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from engine import JobHandle

log = logging.getLogger(__name__)

Cancel = Callable[[JobHandle], object]


class TranscribePress:
    """One Transcribe press being served: its job once submitted, and whether Cancel was pressed."""

    def __init__(self):
        self.handle: JobHandle | None = None
        self.cancelled = False


class SessionJobs:
    """The Transcribe presses each page session has in flight, for its Cancel button.

    A press is registered before its recording is submitted, so a Cancel pressed while the
    upload is still being stored cancels the job as soon as it exists. `cancel` stops a job
    (`JobHandle.cancel` by default; a job manager's cancel records it as cancelled by the user).
    """

    def __init__(self, cancel: Cancel | None = None):
        self._cancel = cancel or (lambda handle: handle.cancel())
        self._presses: dict[str, list[TranscribePress]] = {}
        self._lock = threading.Lock()

    def begin(self, session: str) -> TranscribePress:
        press = TranscribePress()
        with self._lock:
            self._presses.setdefault(session, []).append(press)
        return press

    def started(self, press: TranscribePress, handle: JobHandle) -> None:
        with self._lock:
            press.handle = handle
            cancelled = press.cancelled
        if cancelled:
            self._cancel(handle)

    def end(self, session: str, press: TranscribePress) -> None:
        with self._lock:
            presses = self._presses.get(session, [])
            if press in presses:
                presses.remove(press)
            if not presses:
                self._presses.pop(session, None)

    def cancel(self, session: str) -> int:
        """Cancel every job of `session` not finished yet; returns how many there were."""
        with self._lock:
            presses = list(self._presses.get(session, []))
            for press in presses:
                press.cancelled = True
        for press in presses:
            if press.handle is not None and not press.handle.done():
                log.info("Cancel pressed on the page: job %s", press.handle.id)
                self._cancel(press.handle)
        return len(presses)


class SessionHandoff:
    """Each page session's latest value (its segments view; its error notice), from the
    Transcribe call that made it to the quick event that shows it (ui/page/wiring.py).

    Not a gr.State output: a State makes every tab hold one more connection open (Gradio's
    heartbeat), and a browser opens only six per server (Chromium), so a fourth tab's
    Transcribe would wait for a free one. A value not taken (a gradio_client call has no page
    to show it) is dropped after KEEP_VIEW_S or when MAX_VIEWS are waiting."""

    MAX_VIEWS = 64
    KEEP_VIEW_S = 600.0

    def __init__(self):
        self._views: OrderedDict[str, tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, session: str, view: object) -> None:
        now = time.monotonic()
        with self._lock:
            self._views.pop(session, None)
            self._views[session] = (now, view)
            while self._views and (
                len(self._views) > self.MAX_VIEWS
                or next(iter(self._views.values()))[0] < now - self.KEEP_VIEW_S
            ):
                self._views.popitem(last=False)

    def take(self, session: str) -> object | None:
        with self._lock:
            entry = self._views.pop(session, None)
        return None if entry is None else entry[1]


def session_of(request) -> str:
    """The page session (browser tab) a Gradio request comes from; "" without one."""
    return getattr(request, "session_hash", None) or ""
