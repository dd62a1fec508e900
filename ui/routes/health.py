"""Monitoring: GET /healthz (readiness), /livez (liveness) and /metrics (Prometheus text).

Open to anyone unless protect_metrics is set, then they need an API key as /v1 does
(`add_routes` adds the key check to this router).
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from engine import Engine, EngineStatus
from jobs import JobManager, disk_space
from ui.routes.dependencies import EngineDep, JobsDep, MetricsDep, SettingsDep
from ui.routes.readiness import without_paths
from ui.routes.route_class import OpenAIRoute

router = APIRouter(route_class=OpenAIRoute)


@router.get("/healthz")
async def healthz(engine: EngineDep, settings: SettingsDep, jobs: JobsDep) -> Response:
    """Readiness: 200 when the server can serve, 503 with the reasons while it cannot, so a
    load balancer takes it out of rotation; either way the model, the queue and the disk."""
    status = engine.status()
    disk = await anyio.to_thread.run_sync(disk_space, jobs.store.data_dir, settings.min_free_disk_mb)
    warning = disk.warning()
    reasons = await _reasons_unavailable(status, engine, jobs)
    waiting = await anyio.to_thread.run_sync(lambda: jobs.pending_count)  # a query of the store
    model = {
        "name": engine.model_names.public(status.model.model),
        "state": status.model.state,
        "error": without_paths(status.model.error, engine) or None,
    }
    body = {
        "status": "unavailable" if reasons else "ok",
        "reasons": reasons,
        "model": model,
        "device": status.device,
        "workers": status.workers,
        "busy_workers": status.busy_workers,
        "queue_length": waiting,
        "queue_size": status.queue_size,
        "disk": {"free_bytes": disk.free_bytes, "min_free_bytes": disk.min_free_bytes, "low": disk.low},
        "warnings": [warning] if warning else [],
    }
    return JSONResponse(body, status_code=503 if reasons else 200)


@router.get("/livez")
async def livez() -> dict:
    """Liveness: the process answers. A failed model is not cured by a restart loop, so a
    liveness probe must not kill the server for what /healthz (readiness) reports."""
    return {"status": "alive"}


@router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    body, content_type = await anyio.to_thread.run_sync(metrics.render)  # GPU readings may shell out
    return Response(body, media_type=content_type)


async def _reasons_unavailable(status: EngineStatus, engine: Engine, jobs: JobManager) -> list[str]:
    """Why the server cannot serve: the default model failed to load, the job store cannot be read."""
    reasons = []
    if status.model.state == "failed":
        reasons.append(f"the model {engine.model_names.public(status.model.model)!r} failed to load")
    store_error = await anyio.to_thread.run_sync(_store_error, jobs)
    if store_error:
        reasons.append(f"the job store cannot be read ({store_error})")
    return reasons


def _store_error(jobs: JobManager) -> str:
    """Why the job store cannot be read, or "" when it can: one tiny query."""
    try:
        jobs.store.get("000000000000")
    except Exception as exc:  # closed, locked for too long, the disk gone
        return type(exc).__name__
    return ""
