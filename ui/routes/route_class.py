"""OpenAIRoute, the class of every API route: its errors answered in OpenAI's shape and counted.

A route class rather than app-wide exception handlers: those would change the answers of
Gradio's own routes too, and Starlette freezes them when the app starts, which it may
already have done when the routes are added.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ui.openai_compat import ApiError


class OpenAIRoute(APIRoute):
    """Answers ApiError, FastAPI's validation errors and HTTPException in OpenAI's error shape,
    and tells the app's metrics about each (`Metrics.refused` counts the refusals by reason)."""

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
            request.app.state.metrics.refused(error)
            return error.response()

        return handle
