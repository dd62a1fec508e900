"""Receiving an HTTP API upload: the multipart form, its audio straight into data_dir/uploads.

    upload = await receive_form(request, jobs.new_upload_path, limit_bytes, max_upload_mb, idle_timeout_s)
    upload.fields, upload.path, upload.name

The `file` part is written where the job will keep it (data_dir/uploads, on the same disk
as data_dir/audio, so submitting it is a rename), not spooled through the system's
temporary folder first: one copy, one disk to run out of, and a full disk is met while the
bytes arrive. Whatever stops an upload halfway (a full disk, the size limit, a client that
stops sending or leaves) deletes its partial file at once and answers in OpenAI's shape; a
client that leaves is one INFO line in the log, not an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from jobs import OutOfDiskSpace, is_disk_full
from ui.openai_compat import ApiError, api_error, split_fields

log = logging.getLogger(__name__)

MIB = 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the text fields around the file
MAX_FORM_FIELDS = 32  # a transcription form has 8; more is not a real client
UPLOAD_HEADROOM_BYTES = 1 * MIB  # needed beyond the upload itself: its job's row, the database's journal


@dataclass
class Upload:
    """An audio upload received into data_dir/uploads, with the form's text fields."""

    fields: dict[str, list[str]]  # text fields by name (a name may repeat: timestamp_granularities[])
    path: Path  # where the file's bytes are, named by the server; moved into the job's storage
    name: str  # the client's file name, for display and download names only


class AudioPartParser(MultiPartParser):
    """Starlette's multipart parser, except for the part named `file`: it is written straight to
    `new_path(filename)`, and it is the file even without a filename. (A client asked for an
    empty file name sends none at all, httpx and requests do, and Starlette would then read
    the audio as a text field and refuse it past 1 MB as "Part exceeded maximum size".)"""

    def __init__(
        self, headers: Headers, stream: AsyncIterator[bytes], new_path: Callable[[str], Path], **kwargs
    ):
        super().__init__(headers, stream, **kwargs)
        self.new_path = new_path
        self.paths: list[Path] = []  # files created, to delete when the upload does not complete

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._current_part.content_disposition)
        if options.get(b"name") != b"file":
            return super().on_headers_finished()
        self._current_files += 1
        if self._current_files > self.max_files:
            raise MultiPartException("send one file, in the 'file' field")
        filename = options.get(b"filename", b"").decode(self._charset or "utf-8", errors="replace")
        path = self.new_path(filename)
        self.paths.append(path)
        out = open(path, "wb")
        self._files_to_close_on_error.append(out)
        self._current_part.field_name = "file"
        self._current_part.file = UploadFile(
            out, size=0, filename=filename, headers=Headers(raw=self._current_part.item_headers)
        )


async def _body(
    stream: AsyncIterator[bytes], limit: int, max_upload_mb: float, idle_timeout_s: float
) -> AsyncIterator[bytes]:
    """The request body, stopped with 413 as soon as it passes `limit` bytes and with 408 when
    no byte has come for `idle_timeout_s` (a client that declared more than it sends)."""
    received = 0
    chunks = stream.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ApiError(
                408,
                f"The upload stopped: no data for {idle_timeout_s:g} s after {received:,} "
                "bytes. Send the whole file (and a Content-Length that matches it).",
                code="request_timeout",
                param="file",
            ) from None
        received += len(chunk)
        if received > limit:
            raise too_large(max_upload_mb)
        yield chunk


def too_large(max_upload_mb: float) -> ApiError:
    return ApiError(
        413,
        f"The file is larger than this server accepts ({max_upload_mb:g} MB). "
        "Compress it (e.g. to mp3 or opus) or split it.",
        code="file_too_large",
        param="file",
    )


def out_of_space(what: str = "the upload could not be stored") -> ApiError:
    """507 Insufficient Storage in OpenAI's shape: the request was fine, the server's disk is full."""
    return api_error(OutOfDiskSpace(what))


async def receive_form(
    request: Request, new_path: Callable[[str], Path], limit: int, max_upload_mb: float, idle_timeout_s: float
) -> Upload:
    """Read the multipart form, its `file` into `new_path(filename)`; ApiError for anything that
    stops it, with nothing of the upload left on disk."""
    body = _body(request.stream(), limit + FORM_OVERHEAD_BYTES, max_upload_mb, idle_timeout_s)
    parser = AudioPartParser(request.headers, body, new_path, max_files=1, max_fields=MAX_FORM_FIELDS)
    form = FormData()
    try:
        try:
            form = await parser.parse()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400,
                    "The request has no 'file' field with the audio.",
                    code="invalid_request",
                    param="file",
                )
            await upload.close()  # flushed here, so a full disk is met here and not later
            if upload.size is not None and upload.size > limit:
                raise too_large(max_upload_mb)
            return Upload(split_fields(form.multi_items()), parser.paths[0], upload.filename or "")
        finally:
            await form.close()
    except MultiPartException as exc:
        error: BaseException = ApiError(400, f"The form could not be read: {exc}", code="invalid_request")
    except ClientDisconnect:
        log.info("A client left during its upload to %s; its partial upload was deleted", request.url.path)
        error = ApiError(
            400,
            "The client closed the connection before the upload was complete.",
            code="client_disconnected",
            param="file",
        )
    except OSError as exc:
        if not is_disk_full(exc):
            _delete(parser.paths)
            raise
        log.warning(
            "An upload to %s did not fit on the disk of data_dir (%s); refused with 507",
            request.url.path,
            exc.strerror,
        )
        error = out_of_space()
    except BaseException as exc:
        if isinstance(exc, ApiError) and exc.code == "request_timeout":
            log.info(
                "An upload to %s stopped sending; dropped after %g s, its partial upload deleted",
                request.url.path,
                idle_timeout_s,
            )
        _delete(parser.paths)
        raise
    _delete(parser.paths)
    raise error from None


def _delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
