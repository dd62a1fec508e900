"""HTTP routes on Gradio's own FastAPI app (one server, one port).

    POST /v1/audio/transcriptions, /v1/audio/translations   OpenAI-compatible, answer when done
    GET  /v1/models, /v1/models/{id}                         the models the config allows, by name (never a path)
    POST /v1/jobs            same fields; answers at once (202) with a durable job
    GET  /v1/jobs            recent API jobs, newest first
    GET  /v1/jobs/{id}       status, queue position, progress, and the result once done
    GET  /v1/jobs/{id}/result?format=txt|srt|vtt|tsv|json
    DELETE /v1/jobs/{id}     cancel
    GET  /healthz, /metrics  readiness (503 with the reasons when it cannot serve); Prometheus text
    GET  /livez              liveness: 200 while the process runs

Every request goes through the `JobManager`, the synchronous ones too: the upload and the
job are on disk before the job is queued, so an accepted request is never lost (a client
cut off by a restart finds its result under GET /v1/jobs; the id is also in the X-Job-Id
header), and every front end shares one set of limits, one history and one metric set.

Limits are checked before work is spent: the API key first, then room in the queue, the
upload size and room for it on data_dir's disk (from Content-Length), all before a byte of
the upload is read; the size, the disk and a stalled sender again while the body streams in
(ui/uploads.py: a lying or chunked upload stops at the limit too, 413, 507 or 408, and leaves
no partial file), then the audio's declared length (ffprobe, before decoding), then room in
the queue again at submit.

Jobs belong to the API key that created them (ui/access.py): listing, reading, fetching
and cancelling see only the caller's own; another key's job id is answered 404, as an
unknown one is. Every refusal is counted in /metrics by reason (ui/metrics.py). Errors come back in OpenAI's shape (ui/openai_compat.py).
The routes use a route class that turns every error into that shape itself, instead of
app-wide exception handlers: those would change the answers of Gradio's own routes too,
and Starlette freezes them when the app starts, which it may already have done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from engine import (
    OPENAI_ALIASES,
    Engine,
    InvalidRequest,
    JobHandle,
    JobOptions,
    JobStatus,
    QueueFull,
    Settings,
)
from jobs import JobInfo, JobManager, disk_space, has_room, is_disk_full
from output import FORMATS, SubtitleOptions, render, safe_basename
from ui.access import KeyRing, api_owner, caller_dependency
from ui.metrics import Metrics
from ui.openai_compat import (
    OPENAI_DEFAULT_MODEL,
    UNEXPECTED,
    ApiError,
    TranscriptionForm,
    api_error,
    content_disposition,
    job_body,
    kind_of,
    parse_form,
    transcription_response,
)
from ui.openai_stream import streaming_response
from ui.uploads import (
    FORM_OVERHEAD_BYTES,
    MIB,
    UPLOAD_HEADROOM_BYTES,
    Upload,
    out_of_space,
    receive_form,
    too_large,
)

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{12}$")  # what JobManager issues; anything else is not found, never a lookup
LOADING_RETRY_AFTER_S = 10  # a model loads in seconds to a minute
RETRY_AFTER_MAX_S = 3600  # the longest wait a refused client is told; a running job's estimate can be hours
LIST_LIMIT, MAX_LIST_LIMIT = 20, 100  # GET /v1/jobs: jobs per page by default, at most (as OpenAI's lists)
RESULT_FORMATS = {**{f: f for f in FORMATS}, "text": "txt"}  # ?format= of the result download
RESULT_MEDIA_TYPES = {
    "txt": "text/plain",
    "srt": "text/plain",
    "vtt": "text/vtt",
    "tsv": "text/tab-separated-values",
    "json": "application/json",
}


class OpenAIRoute(APIRoute):
    """Answers ApiError, FastAPI's validation errors and HTTPException in OpenAI's error shape,
    and tells `on_error` (the metrics' refusal counter, set by `build_router`) about each."""

    on_error: Callable[[ApiError], None] | None = None

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                error = exc
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                param = str(first.get("loc", ["", ""])[-1]) or None
                error = ApiError(
                    400, f"{param}: {first.get('msg', 'invalid value')}", code="invalid_value", param=param
                )
            except HTTPException as exc:
                error = ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
            if self.on_error is not None:
                self.on_error(error)
            return error.response()

        return handle


def add_routes(
    app: FastAPI,
    engine: Engine,
    settings: Settings,
    jobs: JobManager | None = None,
    metrics: Metrics | None = None,
) -> APIRouter:
    """Register /v1, /healthz and /metrics on `app` (Gradio's FastAPI app).

    `jobs` is the app's JobManager (started); without one, a JobManager on
    settings.data_dir is created and started here. Returns the router.
    """
    if jobs is None:
        jobs = JobManager(engine).start()
    metrics = metrics or Metrics(engine, jobs)
    router = build_router(engine, settings, jobs, metrics)
    app.include_router(router)
    app.state.jobs = jobs
    app.state.metrics = metrics
    return router


def build_router(engine: Engine, settings: Settings, jobs: JobManager, metrics: Metrics) -> APIRouter:
    subtitles = SubtitleOptions.from_settings(settings)  # the srt/vtt layout of every answer
    route_class = type("CountedOpenAIRoute", (OpenAIRoute,), {"on_error": staticmethod(metrics.refused)})
    keys = KeyRing(settings.named_api_keys)
    require_key = Depends(caller_dependency(keys, _unauthorized))
    v1 = APIRouter(prefix="/v1", route_class=route_class, dependencies=[require_key])
    open_routes = APIRouter(
        route_class=route_class, dependencies=[require_key] if settings.protect_metrics else []
    )

    # -- OpenAI-compatible ------------------------------------------------------------------
    @v1.post("/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await _transcribe_now(request, "transcribe")

    @v1.post("/audio/translations")
    async def translations(request: Request) -> Response:
        return await _transcribe_now(request, "translate")

    async def _transcribe_now(request: Request, task: str) -> Response:
        upload = await _receive(request, jobs, settings)
        try:
            form = parse_form(upload.fields, streams=task == "transcribe")
            options = _options(form, task, engine, wait_for_model=False)
            handle = await _submit(jobs, upload, source="api", owner=_owner(request), options=options)
        finally:
            upload.path.unlink(missing_ok=True)  # gone already once the job took it
        if form.stream:  # events as segments complete; the job goes on if the client leaves
            return streaming_response(handle, form.logprobs)
        try:
            result = await _wait(handle)
        except Exception as exc:
            raise api_error(exc, accepted=True) from None
        return transcription_response(result, form, headers={"X-Job-Id": handle.id}, subtitles=subtitles)

    names = engine.model_names

    def model_entry(model_id: str) -> dict:
        alias = model_id in OPENAI_ALIASES
        return {
            "id": model_id,
            "object": "model",
            "created": 0,
            "owned_by": "openai-whisper",
            "default": alias or model_id == names.default_id,
            "alias_of": names.default_id if alias else None,
        }

    @v1.get("/models")
    async def models() -> dict:
        """The configured models by id, the default first, then whisper-1 (OpenAI's name) as its alias."""
        return {"object": "list", "data": [model_entry(i) for i in [*names.ids, OPENAI_DEFAULT_MODEL]]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        if model_id not in names.by_id and model_id not in OPENAI_ALIASES:
            raise _unknown_model(model_id, names, status=404)
        return model_entry(model_id)

    # -- durable jobs -------------------------------------------------------------------------
    @v1.post("/jobs", status_code=202)
    async def create_job(request: Request) -> Response:
        upload = await _receive(request, jobs, settings)
        try:
            form = parse_form(upload.fields, job=True, streams=False)
            options = _options(form, form.task or "transcribe", engine, wait_for_model=True)
            handle = await _submit(jobs, upload, source="jobs", owner=_owner(request), options=options)
        finally:
            upload.path.unlink(missing_ok=True)
        info = jobs.get(handle.id)
        return JSONResponse(
            job_body(info, public_model=names.public),
            status_code=202,
            headers={"Location": f"/v1/jobs/{handle.id}"},
        )

    @v1.get("/jobs")
    async def list_jobs(request: Request, limit: int = LIST_LIMIT, after: str | None = None) -> dict:
        """The caller's own jobs (newest first), sent with its key; the page's jobs belong to
        their browsers or logins and are listed only on the page. Pages as OpenAI's lists do:
        `limit` (1-100), `after` the last id of the previous page, `has_more`."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ApiError(
                400,
                f"limit: must be between 1 and {MAX_LIST_LIMIT}, got {limit}",
                code="invalid_value",
                param="limit",
            )
        owner = _owner(request)
        if after is not None:
            await _job(jobs, after, owner, param="after")  # a cursor must be one of the caller's jobs
        infos = await anyio.to_thread.run_sync(lambda: jobs.recent(owner=owner, limit=limit + 1, after=after))
        data = [job_body(info, with_result=False, public_model=names.public) for info in infos[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(infos) > limit,
        }

    @v1.get("/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> dict:
        return job_body(await _job(jobs, job_id, _owner(request)), public_model=names.public)

    @v1.get("/jobs/{job_id}/result")
    async def job_result(request: Request, job_id: str, format: str = "txt") -> Response:
        fmt = RESULT_FORMATS.get(format.lower().lstrip("."))
        if fmt is None:
            raise ApiError(
                400,
                f"format: choose one of {', '.join(FORMATS)}, got {format!r}",
                code="invalid_value",
                param="format",
            )
        info = await _job(jobs, job_id, _owner(request))
        if info.status != "done":
            code = {"failed": "job_failed", "cancelled": "job_cancelled"}.get(info.status, "job_not_finished")
            detail = f": {info.record.error}" if info.record.error else ""
            raise ApiError(
                409, f"Job {job_id} is {info.status}{detail}; there is no result to download.", code=code
            )
        result = info.result()
        result = replace(result, model=names.public(result.model))  # rows from before ids may hold a path
        stem = safe_basename(Path(info.record.name).stem or job_id)
        return PlainTextResponse(
            render(result, fmt, subtitles=subtitles),
            media_type=RESULT_MEDIA_TYPES[fmt],
            headers={"Content-Disposition": content_disposition(f"{stem}.{fmt}")},
        )

    @v1.delete("/jobs/{job_id}")
    async def cancel_or_delete_job(request: Request, job_id: str) -> dict:
        """An unfinished job is cancelled (answered with the job); a finished one is deleted with
        its result, as OpenAI deletes a file: {"id", "object", "deleted": true}."""
        info = await _job(jobs, job_id, _owner(request))
        if not info.finished:
            info = await anyio.to_thread.run_sync(jobs.cancel, job_id)
            return job_body(info, public_model=names.public)
        if not await anyio.to_thread.run_sync(jobs.delete, job_id):
            # deleted by another request meanwhile
            raise ApiError(404, f"No job with id {job_id!r}.", code="job_not_found", param="job_id")
        return {"id": job_id, "object": "transcription.job.deleted", "deleted": True}

    known_routes = [route for route in v1.routes if isinstance(route, APIRoute)]

    @v1.api_route(
        "/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    async def unknown(request: Request, path: str) -> Response:
        allowed: set[str] = set()
        for route in known_routes:  # the path exists, for other methods: 405 and what it allows
            if route.path_regex.match(request.url.path):
                allowed |= route.methods
        if allowed:
            raise ApiError(
                405,
                f"{request.method} is not allowed on {request.url.path}; use {' or '.join(sorted(allowed))}.",
                code="method_not_allowed",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        raise ApiError(404, f"There is no route /v1/{path} on this server.", code="unknown_url")

    # -- health and metrics ---------------------------------------------------------------------
    @open_routes.get("/healthz")
    async def healthz() -> dict:
        status = engine.status()
        disk = await anyio.to_thread.run_sync(disk_space, jobs.store.data_dir, settings.min_free_disk_mb)
        warning = disk.warning()
        problems = []  # why it cannot serve: a readiness probe takes it out of rotation (503)
        if status.model.state == "failed":
            problems.append(f"the model {names.public(status.model.model)!r} failed to load")
        store_error = await anyio.to_thread.run_sync(_store_error, jobs)
        if store_error:
            problems.append(f"the job store cannot be read ({store_error})")
        model = {
            "name": names.public(status.model.model),
            "state": status.model.state,
            "error": _without_path(status.model.error, engine) or None,
        }
        body = {
            "status": "unavailable" if problems else "ok",
            "reasons": problems,
            "model": model,
            "device": status.device,
            "workers": status.workers,
            "busy_workers": status.busy_workers,
            "queue_length": status.queue_length,
            "queue_size": status.queue_size,
            "disk": {"free_bytes": disk.free_bytes, "min_free_bytes": disk.min_free_bytes, "low": disk.low},
            "warnings": [warning] if warning else [],
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    @open_routes.get("/livez")
    async def livez() -> dict:
        """Liveness: the process answers. A failed model is not cured by a restart loop, so a
        liveness probe must not kill the server for what /healthz (readiness) reports."""
        return {"status": "alive"}

    @open_routes.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = await anyio.to_thread.run_sync(metrics.render)  # GPU readings may shell out
        return Response(body, media_type=content_type)

    router = APIRouter()
    router.include_router(v1)
    router.include_router(open_routes)
    return router


# --- pieces of the routes ----------------------------------------------------------------------


def _store_error(jobs: JobManager) -> str:
    """Why the job store cannot be read, or "" when it can: one tiny query."""
    try:
        jobs.store.get("000000000000")
    except Exception as exc:  # closed, locked for too long, the disk gone
        return type(exc).__name__
    return ""


def _unauthorized() -> ApiError:
    return ApiError(
        401,
        'Missing or wrong API key: send it as "Authorization: Bearer <key>".',
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _owner(request: Request) -> str:
    """The stored owner for the caller (its key's name, set by the key check on every /v1 route)."""
    return api_owner(request.state.api_caller)


async def _receive(request: Request, jobs: JobManager, settings: Settings) -> Upload:
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
        raise _queue_full(jobs)
    if declared.isdigit() and not await anyio.to_thread.run_sync(
        has_room, jobs.upload_dir, int(declared) + UPLOAD_HEADROOM_BYTES
    ):
        log.warning("An upload of %s bytes does not fit on the disk of data_dir; refused with 507", declared)
        raise out_of_space()
    return await receive_form(
        request, jobs.new_upload_path, limit, settings.max_upload_mb, settings.upload_idle_timeout_s
    )


def _unknown_model(model: str | None, names, status: int = 400) -> ApiError:
    return ApiError(status, names.not_offered(model), code="model_not_found", param="model")


def _without_path(message: str, engine: Engine) -> str:
    """A model error's text with configured paths replaced by the models' ids."""
    for spec in engine.settings.allowed_models:
        message = message.replace(spec, engine.model_names.public(spec))
    return message


def _options(form: TranscriptionForm, task: str, engine: Engine, wait_for_model: bool) -> JobOptions:
    """The job the form asks for, prepared by the engine (400 for a model not offered or an
    option it cannot do); 503 when the model is not ready.

    A durable job may wait in the queue while the model loads (`wait_for_model`); a request
    that holds its connection open gets 503 and Retry-After instead."""
    try:
        options = engine.prepare(form.job_options(task))
    except InvalidRequest as exc:
        raise api_error(exc) from None
    state = engine.status().model
    if options.model == engine.model_names.public(state.model) and state.state == "failed":
        raise ApiError(
            503,
            f"The model {options.model!r} failed to load: {_without_path(state.error, engine)}",
            type="server_error",
            code="model_failed",
        )
    if (
        options.model == engine.model_names.public(state.model)
        and state.state == "loading"
        and not wait_for_model
    ):
        raise ApiError(
            503,
            "The model is still loading; try again shortly.",
            type="server_error",
            code="model_loading",
            headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
        )
    return options


def _queue_full(jobs: JobManager, error: QueueFull | None = None) -> ApiError:
    status = jobs.engine.status()
    error = error or QueueFull(
        f"the queue is full ({status.queue_size} jobs waiting, {status.busy_workers} running); "
        "try again in a minute"
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


async def _submit(
    jobs: JobManager, upload: Upload, source: str, owner: str, options: JobOptions
) -> JobHandle:
    """Store and queue the job (in a thread: ffprobe, file move, database commit)."""
    try:
        return await anyio.to_thread.run_sync(
            lambda: jobs.submit(upload.path, options, name=upload.name, owner=owner, source=source, move=True)
        )
    except QueueFull as exc:
        raise _queue_full(jobs, exc) from None
    except Exception as exc:
        if is_disk_full(exc):  # the job's row or its recording did not fit: nothing of it was kept
            log.warning("An upload could not be stored, data_dir's disk is full: %s", exc)
            raise out_of_space() from None
        if kind_of(exc) is UNEXPECTED:
            log.exception("Submitting an upload failed")
        raise api_error(exc) from None


async def _wait(handle: JobHandle):
    """The job's result, awaited without holding a thread: the done-callback wakes the loop."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def wake(_: JobHandle) -> None:
        try:
            loop.call_soon_threadsafe(done.set)
        except RuntimeError:  # the loop is gone (server stopped); nobody is waiting any more
            pass

    handle.add_done_callback(wake)
    await done.wait()
    return handle.result()


async def _job(jobs: JobManager, job_id: str, owner: str, param: str = "job_id") -> JobInfo:
    """The caller's job; another owner's is "not found" exactly as an unknown id is, so ids
    cannot be probed for existence."""
    info = await anyio.to_thread.run_sync(jobs.get, job_id) if JOB_ID.match(job_id) else None
    if info is None or info.record.owner != owner:
        raise ApiError(
            404,
            f"No job with id {job_id!r} (finished jobs are kept for a limited time).",
            code="job_not_found",
            param=param,
        )
    return info
