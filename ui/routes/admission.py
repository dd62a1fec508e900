"""Whether a request's job gets into the queue, checked before work is spent on it.

    upload = await receive_upload(request, jobs, settings)   # 400, 413, 429, 507; 408 while it streams
    handle = await submit(jobs, upload, source, owner, options)   # 429 or 507 at the last moment

The API key is checked first (dependencies.api_caller), then room in the queue, the upload
size and room for it on data_dir's disk (from Content-Length), all before a byte of the
upload is read; the size, the disk and a stalled sender again while the body streams in
(ui/routes/uploads.py: a lying or chunked upload stops at the limit too, 413, 507 or 408,
and leaves no partial file); then the form and the model (ui/routes/readiness.py), the
audio's declared length (ffprobe, before decoding), and room in the queue again at submit.
A full queue is 429 with Retry-After: when the running job nearest its end should finish.
"""

from __future__ import annotations

import logging
import math
import time

import anyio
from fastapi import Request

from engine import JobHandle, JobOptions, JobStatus, QueueFull, Settings
from jobs import JobManager, has_room, is_disk_full
from ui.openai_compat import UNEXPECTED, ApiError, api_error, kind_of
from ui.routes.uploads import (
    FORM_OVERHEAD_BYTES,
    MIB,
    UPLOAD_HEADROOM_BYTES,
    Upload,
    out_of_space,
    receive_form,
    too_large,
)

log = logging.getLogger(__name__)

RETRY_AFTER_MAX_S = 3600  # the longest wait a refused client is told; a running job's estimate can be hours


async def receive_upload(request: Request, jobs: JobManager, settings: Settings) -> Upload:
    """Read the multipart form, the file into data_dir/uploads, enforcing max_upload_mb and
    the room left on data_dir's disk."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(
            400,
            "Send the audio as multipart/form-data with a 'file' field.",
            code="invalid_request",
            param="file",
        )
    limit = int(settings.max_upload_mb * MIB)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise too_large(settings.max_upload_mb)  # refused before reading a byte of it
    if not jobs.has_room():  # nor read, stored and probed for a queue that cannot take it
        raise queue_full(jobs)
    if declared.isdigit() and not await anyio.to_thread.run_sync(
        has_room, jobs.upload_dir, int(declared) + UPLOAD_HEADROOM_BYTES
    ):
        log.warning("An upload of %s bytes does not fit on the disk of data_dir; refused with 507", declared)
        raise out_of_space()
    return await receive_form(
        request, jobs.new_upload_path, limit, settings.max_upload_mb, settings.upload_idle_timeout_s
    )


async def submit(jobs: JobManager, upload: Upload, source: str, owner: str, options: JobOptions) -> JobHandle:
    """Store and queue the job (in a thread: ffprobe, file move, database commit)."""
    try:
        return await anyio.to_thread.run_sync(
            lambda: jobs.submit(upload.path, options, name=upload.name, owner=owner, source=source, move=True)
        )
    except QueueFull as exc:
        raise queue_full(jobs, exc) from None
    except Exception as exc:
        if is_disk_full(exc):  # the job's row or its recording did not fit: nothing of it was kept
            log.warning("An upload could not be stored, data_dir's disk is full: %s", exc)
            raise out_of_space() from None
        if kind_of(exc) is UNEXPECTED:
            log.exception("Submitting an upload failed")
        raise api_error(exc) from None


def queue_full(jobs: JobManager, error: QueueFull | None = None) -> ApiError:
    """429 in OpenAI's shape, with the seconds until the queue should have room in Retry-After."""
    status = jobs.engine.status()
    error = error or QueueFull(
        f"the queue is full ({status.queue_size} jobs waiting, "
        f"{status.busy_workers} running); try again in a minute"
    )
    return api_error(error, headers={"Retry-After": str(_retry_after_s(jobs))})


def _retry_after_s(jobs: JobManager) -> int:
    """Seconds until the queue should have room again: until the running job nearest its end
    finishes, at the pace it has shown so far (wall time per second of audio done). A job
    that has done nothing yet counts as the job manager's average of recent jobs."""
    now = time.time()
    estimates = []
    for handle in jobs.engine.worker.jobs():  # running first, then waiting
        if handle.status is not JobStatus.RUNNING or handle.started_at is None:
            continue
        if 0 < handle.seconds_done < handle.seconds_total:
            pace = (now - handle.started_at) / handle.seconds_done
            estimates.append(pace * (handle.seconds_total - handle.seconds_done))
        else:
            estimates.append(jobs.retry_after_s())
    if not estimates:
        return jobs.retry_after_s()
    return int(min(RETRY_AFTER_MAX_S, max(1, math.ceil(min(estimates)))))
