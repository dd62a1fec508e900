"""OpenAI's audio routes: POST /v1/audio/transcriptions and /v1/audio/translations.

They answer when the transcript is done (or, with stream=true on transcriptions, as its
segments complete: ui/routes/streaming.py). Each request is a durable job all the same: its
upload and its row are on disk before it is queued, so a client cut off by a restart finds
its result under GET /v1/jobs; the id is also in the X-Job-Id header.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine import Engine, JobHandle, Settings, TranscriptionResult
from jobs import JobManager
from output import SubtitleOptions
from ui.openai_compat import api_error, parse_form, transcription_response
from ui.routes.admission import receive_upload, submit
from ui.routes.dependencies import EngineDep, JobsDep, OwnerDep, SettingsDep, SubtitlesDep
from ui.routes.readiness import prepared_options_in_thread
from ui.routes.route_class import OpenAIRoute
from ui.routes.streaming import streaming_response

router = APIRouter(route_class=OpenAIRoute)


@router.post("/audio/transcriptions")
async def transcriptions(
    request: Request,
    engine: EngineDep,
    jobs: JobsDep,
    settings: SettingsDep,
    owner: OwnerDep,
    subtitles: SubtitlesDep,
) -> Response:
    return await _transcribe_now(request, "transcribe", engine, jobs, settings, owner, subtitles)


@router.post("/audio/translations")
async def translations(
    request: Request,
    engine: EngineDep,
    jobs: JobsDep,
    settings: SettingsDep,
    owner: OwnerDep,
    subtitles: SubtitlesDep,
) -> Response:
    return await _transcribe_now(request, "translate", engine, jobs, settings, owner, subtitles)


async def _transcribe_now(
    request: Request,
    task: str,
    engine: Engine,
    jobs: JobManager,
    settings: Settings,
    owner: str,
    subtitles: SubtitleOptions,
) -> Response:
    upload = await receive_upload(request, jobs, settings)
    try:
        form = parse_form(upload.fields, streams=task == "transcribe")
        options = await prepared_options_in_thread(form, task, engine, wait_for_model=False)
        handle = await submit(jobs, upload, source="api", owner=owner, options=options)
    finally:
        upload.path.unlink(missing_ok=True)  # gone already once the job took it
    if form.stream:  # events as segments complete; the job goes on if the client leaves
        return streaming_response(handle, form.logprobs, segments=form.response_format == "diarized_json")
    try:
        result = await _result(handle)
    except Exception as exc:
        raise api_error(exc, accepted=True) from None
    return transcription_response(result, form, headers={"X-Job-Id": handle.id}, subtitles=subtitles)


async def _result(handle: JobHandle) -> TranscriptionResult:
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
