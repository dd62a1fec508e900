"""Durable jobs: /v1/jobs.

    POST   /v1/jobs                   the transcription form's fields (plus task); 202 with the job at once
    GET    /v1/jobs                   the caller's jobs, newest first, paged as OpenAI's lists
    GET    /v1/jobs/{id}              status, queue position, progress, and the result once done
    GET    /v1/jobs/{id}/result       ?format=txt|srt|vtt|tsv|json|rttm, as a download
    PATCH  /v1/jobs/{id}              {"speaker_names": {"A": "Ada"}}: name a diarized job's speakers
    DELETE /v1/jobs/{id}              cancel an unfinished job; delete a finished one with its result

Jobs belong to the API key that created them (ui/access.py): listing, reading, fetching and
cancelling see only the caller's own; another key's job id is answered 404, as an unknown
one is, so ids cannot be probed for existence.

A diarized job's body carries `speaker_names` (label -> the name given), and its result and
downloads use the names; the stored transcript keeps diarization's labels, so PATCH takes them
as keys (null takes a name off) and never changes a word.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from engine import EngineError, TranscriptionResult
from jobs import JobInfo, JobManager, name_speakers
from output import ALL_FORMATS, render, safe_basename
from ui.openai_compat import ApiError, api_error, content_disposition, job_body, parse_form
from ui.routes.admission import receive_upload, submit
from ui.routes.dependencies import EngineDep, JobsDep, OwnerDep, SettingsDep, SubtitlesDep
from ui.routes.readiness import prepared_options
from ui.routes.route_class import OpenAIRoute

JOB_ID = re.compile(r"^[0-9a-f]{12}$")  # what JobManager issues; anything else is not found, never a lookup
LIST_LIMIT, MAX_LIST_LIMIT = 20, 100  # GET /v1/jobs: jobs per page by default, at most (as OpenAI's lists)
RESULT_FORMATS = {**{f: f for f in ALL_FORMATS}, "text": "txt"}  # ?format= of the result download
RESULT_MEDIA_TYPES = {
    "txt": "text/plain",
    "srt": "text/plain",
    "vtt": "text/vtt",
    "tsv": "text/tab-separated-values",
    "json": "application/json",
    "rttm": "text/plain",  # a diarized job's speaker turns (empty for one without speakers)
}

router = APIRouter(route_class=OpenAIRoute)


@router.post("/jobs", status_code=202)
async def create_job(
    request: Request, engine: EngineDep, jobs: JobsDep, settings: SettingsDep, owner: OwnerDep
) -> Response:
    upload = await receive_upload(request, jobs, settings)
    try:
        form = parse_form(upload.fields, job=True, streams=False)
        options = prepared_options(form, form.task or "transcribe", engine, wait_for_model=True)
        handle = await submit(jobs, upload, source="jobs", owner=owner, options=options)
    finally:
        upload.path.unlink(missing_ok=True)
    info = jobs.get(handle.id)
    return JSONResponse(
        _body(info, engine),
        status_code=202,
        headers={"Location": f"/v1/jobs/{handle.id}"},
    )


@router.get("/jobs")
async def list_jobs(
    engine: EngineDep, jobs: JobsDep, owner: OwnerDep, limit: int = LIST_LIMIT, after: str | None = None
) -> dict:
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
    if after is not None:
        await _owned_job(jobs, after, owner, param="after")  # a cursor must be one of the caller's jobs
    infos = await anyio.to_thread.run_sync(lambda: jobs.recent(owner=owner, limit=limit + 1, after=after))
    data = [_body(info, engine, with_result=False) for info in infos[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(infos) > limit,
    }


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, engine: EngineDep, jobs: JobsDep, owner: OwnerDep) -> dict:
    return _body(await _owned_job(jobs, job_id, owner), engine)


@router.patch("/jobs/{job_id}")
async def rename_speakers(
    job_id: str, request: Request, engine: EngineDep, jobs: JobsDep, owner: OwnerDep
) -> dict:
    """{"speaker_names": {"A": "Ada", "B": null}}: names for a done, diarized job's speakers, by
    the labels diarization gave them, merged into those it has (null takes one off); the job
    afterwards, its result with the names."""
    info = await _owned_job(jobs, job_id, owner)
    changes = _speaker_names_field(await _json_object(request))
    _finished_result(info, job_id)
    try:
        named = await anyio.to_thread.run_sync(name_speakers, jobs, info, changes)
    except EngineError as exc:  # a bad label or name (400), the store away (503)
        raise api_error(exc) from None
    if named is None:  # deleted by another request meanwhile
        raise ApiError(404, f"No job with id {job_id!r}.", code="job_not_found", param="job_id")
    return _body(named, engine)


@router.get("/jobs/{job_id}/result")
async def job_result(
    job_id: str,
    engine: EngineDep,
    jobs: JobsDep,
    owner: OwnerDep,
    subtitles: SubtitlesDep,
    format: str = "txt",
) -> Response:
    fmt = RESULT_FORMATS.get(format.lower().lstrip("."))
    if fmt is None:
        raise ApiError(
            400,
            f"format: choose one of {', '.join(ALL_FORMATS)}, got {format!r}",
            code="invalid_value",
            param="format",
        )
    info = await _owned_job(jobs, job_id, owner)
    result = _finished_result(info, job_id)
    # rows from before ids may hold a path
    result = replace(result, model=engine.model_names.public(result.model))
    stem = safe_basename(Path(info.record.name).stem or job_id)
    return PlainTextResponse(
        render(result, fmt, subtitles=subtitles, file_id=stem),
        media_type=RESULT_MEDIA_TYPES[fmt],
        headers={"Content-Disposition": content_disposition(f"{stem}.{fmt}")},
    )


@router.delete("/jobs/{job_id}")
async def cancel_or_delete_job(job_id: str, engine: EngineDep, jobs: JobsDep, owner: OwnerDep) -> dict:
    """An unfinished job is cancelled (answered with the job); a finished one is deleted with
    its result, as OpenAI deletes a file: {"id", "object", "deleted": true}."""
    info = await _owned_job(jobs, job_id, owner)
    if not info.finished:
        info = await anyio.to_thread.run_sync(jobs.cancel, job_id)
        return _body(info, engine)
    if not await anyio.to_thread.run_sync(jobs.delete, job_id):
        # deleted by another request meanwhile
        raise ApiError(404, f"No job with id {job_id!r}.", code="job_not_found", param="job_id")
    return {"id": job_id, "object": "transcription.job.deleted", "deleted": True}


def _body(info: JobInfo, engine, with_result: bool = True) -> dict:
    """job_body, its model named by the engine's public id."""
    return job_body(info, with_result=with_result, public_model=engine.model_names.public)


async def _json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, 'The body must be a JSON object, e.g. {"speaker_names": {"A": "Ada"}}.')
    return body


def _speaker_names_field(body: dict) -> dict:
    """The body's speaker_names, the one field a job takes changes to."""
    other = sorted(set(body) - {"speaker_names"})
    if other:
        raise ApiError(
            400,
            f"{other[0]}: cannot be changed; only speaker_names can",
            code="invalid_value",
            param=other[0],
        )
    changes = body.get("speaker_names")
    if not isinstance(changes, dict) or not changes:
        raise ApiError(
            400,
            'speaker_names: must be an object of labels and names, e.g. {"A": "Ada"}',
            code="invalid_value",
            param="speaker_names",
        )
    return changes


async def _owned_job(jobs: JobManager, job_id: str, owner: str, param: str = "job_id") -> JobInfo:
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


def _finished_result(info: JobInfo, job_id: str) -> TranscriptionResult:
    """A done job's result; 409 for a job that has none (yet, or ever)."""
    if info.status != "done":
        code = {"failed": "job_failed", "cancelled": "job_cancelled"}.get(info.status, "job_not_finished")
        detail = f": {info.record.error}" if info.record.error else ""
        raise ApiError(
            409, f"Job {job_id} is {info.status}{detail}; there is no result to download.", code=code
        )
    return info.result()
