"""/v1: the resources' routers under one prefix and the API key check, and an answer in
OpenAI's shape for every other path under it: 404, or 405 with Allow when the path is a
route's asked with another method (Starlette's own answers would be plain text)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ui.openai_compat import ApiError
from ui.routes import audio, jobs, models
from ui.routes.dependencies import api_caller
from ui.routes.route_class import OpenAIRoute

RESOURCES = (audio.router, models.router, jobs.router)

router = APIRouter(prefix="/v1", route_class=OpenAIRoute, dependencies=[Depends(api_caller)])
for resource in RESOURCES:
    router.include_router(resource)


@router.api_route(
    "/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def unknown(request: Request, path: str) -> Response:
    """Any path no resource has (this route comes after theirs)."""
    allowed = _methods_allowed("/" + path)
    if allowed:
        raise ApiError(
            405,
            f"{request.method} is not allowed on {request.url.path}; use {' or '.join(sorted(allowed))}.",
            code="method_not_allowed",
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    raise ApiError(404, f"There is no route /v1/{path} on this server.", code="unknown_url")


def _methods_allowed(path: str) -> set[str]:
    """The methods of the resources' routes whose path (below /v1) this is."""
    allowed: set[str] = set()
    for resource in RESOURCES:
        for route in resource.routes:
            if route.path_regex.match(path):
                allowed |= route.methods
    return allowed
