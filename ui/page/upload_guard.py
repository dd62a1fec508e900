"""`PageUploadGuard` stands in front of Gradio's upload route (`/gradio_api/upload`, open to
anyone who reaches the page unless `auth` is set), so that the page's files stay bounded.

    launch(..., app_kwargs={"middleware": [upload_guard(settings, cache)]})   # cache: ui/page/files.py

Gradio limits each file to `max_file_size` (our max_upload_mb) but neither how many files
nor how much space they take, keeps them a day, and on a full disk or a client that leaves
answers 500 with a traceback and keeps the partial file. The guard refuses an upload that
would take the page's files past `page_files_max_mb` or not fit on the disk (507, plain
text, which the page shows as "HTTP 507: ..."), drops one that stops sending (408), and
deletes what a failed one left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from pathlib import Path

import anyio
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import Settings
from jobs import OutOfDiskSpace, has_room, is_disk_full

log = logging.getLogger(__name__)

MIB = 1024 * 1024
HEADROOM_BYTES = 1 * MIB  # room kept beyond an upload's own size
UPLOAD_PATH = re.compile(r"/gradio_api/upload/?$")
TEMPORARY_NAME = re.compile(r"^tmp[a-z0-9_]{8}$")  # Gradio's NamedTemporaryFile for an upload being received


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += Path(root, name).lstat().st_size
            except OSError:
                pass
    return total


def _mb(nbytes: int) -> str:
    return f"{nbytes / MIB:,.0f} MB" if nbytes >= 10 * MIB else f"{nbytes / MIB:.1f} MB"


class _Stop(Exception):
    """Ends an upload from inside its body: answered with `status` and `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class PageUploadGuard:
    """ASGI middleware for Gradio's upload route; see the module docstring."""

    def __init__(self, app: ASGIApp, cache: Path, max_bytes: int, idle_timeout_s: float):
        self.app = app
        self.cache = cache  # Gradio's upload folder
        self.max_bytes = max_bytes  # page_files_max_mb
        self.idle_timeout_s = idle_timeout_s  # upload_idle_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not UPLOAD_PATH.search(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        declared = int(declared) if declared.isdigit() else 0
        held = await anyio.to_thread.run_sync(folder_bytes, self.cache)
        refusal = await anyio.to_thread.run_sync(self._refusal, held, declared)
        if refusal is not None:
            await self._answer(scope, receive, send, refusal)
            return
        started, answered = time.time(), False

        async def watched_send(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, self._body(receive, held), watched_send)
        except (_Stop, ClientDisconnect, OSError) as exc:
            if isinstance(exc, OSError) and not is_disk_full(exc):
                raise
            await anyio.to_thread.run_sync(self._delete_partial, started)
            if isinstance(exc, ClientDisconnect):
                log.info("A client left during its page upload; its partial upload was deleted")
                return
            stop = (
                exc
                if isinstance(exc, _Stop)
                else _Stop(507, str(OutOfDiskSpace("the recording could not be stored")))
            )
            log.warning("A page upload was stopped (%d): %s", stop.status, stop.message)
            if not answered:
                await PlainTextResponse(stop.message, status_code=stop.status)(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refusal(self, held: int, declared: int) -> _Stop | None:
        if held + declared > self.max_bytes:
            return _Stop(507, self._full_message(held))
        if not has_room(self.cache, declared + HEADROOM_BYTES):
            return _Stop(507, str(OutOfDiskSpace("the recording could not be stored")))
        return None

    def _full_message(self, held: int) -> str:
        return (
            f"The server holds as many page uploads as it keeps ({_mb(held)} of {_mb(self.max_bytes)}); "
            "older ones expire within a day. Try again later."
        )

    def _body(self, receive: Receive, held: int) -> Receive:
        """`receive`, stopped with 408 when nothing comes for idle_timeout_s and with 507 once the
        upload would take the page's files past page_files_max_mb (a chunked upload declares nothing)."""
        received = 0

        async def timed() -> Message:
            nonlocal received
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise _Stop(408, f"The upload stopped: no data for {self.idle_timeout_s:g} s.") from None
            received += len(message.get("body", b""))
            if held + received > self.max_bytes:
                raise _Stop(507, self._full_message(held))
            return message

        return timed

    def _delete_partial(self, started: float) -> None:
        """Delete the temporary file a failed upload left in the cache's top folder: the ones made
        since it began when no other upload is under way, and any another upload left long ago."""
        stale = time.time() - self.idle_timeout_s - 60  # a live upload writes more often than this
        alone = self.in_flight == 1
        for path in self.cache.iterdir():
            try:
                if not TEMPORARY_NAME.match(path.name) or not path.is_file():
                    continue
                modified = path.stat().st_mtime
                if modified < stale or (alone and modified >= started - 1):
                    path.unlink()
            except OSError:
                pass

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send, stop: _Stop) -> None:
        log.warning("A page upload was refused (%d): %s", stop.status, stop.message)
        await PlainTextResponse(stop.message, status_code=stop.status)(scope, receive, send)


def upload_guard(settings: Settings, cache: Path) -> Middleware:
    """The guard for launch(app_kwargs={"middleware": [...]}), Gradio 6's public hook into its app."""
    return Middleware(
        PageUploadGuard,
        cache=cache,
        max_bytes=int(settings.page_files_max_mb * MIB),
        idle_timeout_s=settings.upload_idle_timeout_s,
    )
