"""HTTP routes on Gradio's own FastAPI app (placeholder until the HTTP API lands)."""


def add_routes(app, engine, settings) -> None:
    """Register /v1, /healthz and /metrics on `app` (a FastAPI instance)."""
