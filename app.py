"""Speech to text in the browser: python app.py [--config config.yaml] [--host H] [--port P] [--share]

Reads the configuration, starts the engine (the model loads in the background while the
page is already served), launches the Gradio page with the HTTP routes on the same server
and port, and runs until Ctrl-C.

For tests and other programs, `serve(settings)` does the same without blocking:

    from app import serve
    from engine import load_settings
    server = serve(load_settings("config.yaml", {"model": "/models/x.pt"}), port=0)  # 0 = any free port
    server.url        # "http://127.0.0.1:54321/"
    server.engine     # the Engine (server.engine.status().model.state: loading / ready / failed)
    server.app        # Gradio's FastAPI app, with ui.routes' routes on it
    server.close()    # stop serving, cancel running jobs, free the models
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a self-hosted server

import gradio as gr

from engine import DeviceError, Engine, FfmpegMissing, Settings, SettingsError, check_ffmpeg, load_settings
from jobs import (
    JobManager,
    JobStore,
    StorageError,
    open_store,
)
from ui.access import exposure_warnings
from ui.page import CSS_PATH, RecentJobs, build_page, upload_guard, use_private_cache
from ui.routes import add_routes

log = logging.getLogger("app")

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config.yaml"
SHUTDOWN_TIMEOUT_S = 10.0  # running jobs get this long to stop at their next batch on Ctrl-C


@dataclass
class Server:
    """A running app: the page and the HTTP routes on one server, and the engine behind them."""

    demo: gr.Blocks
    engine: Engine
    app: Any  # gradio.routes.App, a FastAPI subclass
    url: str  # local URL, ending in "/"
    share_url: str | None  # public *.gradio.live link, None when not asked or not available

    def close(self, drain: bool = False) -> None:
        """Stop serving; cancel running jobs (or finish them, drain=True); free the models."""
        self.demo.close(verbose=False)
        jobs = getattr(self.app.state, "jobs", None)  # the HTTP routes' JobManager, when they made one
        if jobs is not None:
            jobs.close()
        self.engine.close(drain=drain, timeout=SHUTDOWN_TIMEOUT_S)
        downloads = getattr(self.demo, "downloads", None)
        if downloads is not None:
            downloads.cleanup()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def parse_auth(auth: str | None):
    """ "user:password" -> ("user", "password") for Gradio's launch(auth=...)."""
    if not auth:
        return None
    user, _, password = auth.partition(":")
    return user, password


def serve(
    settings: Settings,
    *,
    engine: Engine | None = None,
    port: int | None = None,
    quiet: bool = True,
    store: JobStore | None = None,
) -> Server:
    """Start the engine (unless given one), build and launch the page with the HTTP routes;
    returns once the server answers. `port` overrides settings.port; 0 picks a free port.
    `store` is the jobs database in settings.data_dir when already opened (`open_store`).

    Raises jobs.manager.StorageError (DataDirInUse, DataDirUnwritable, DiskFull) when data_dir
    is another server's or cannot be written, OSError when the port cannot be served."""
    # Recordings and transcripts are private to the server's user: every file the process
    # writes, Gradio's cache folders included (it creates them itself), is 0600, each folder 0700.
    os.umask(0o077)
    engine = engine or Engine(settings, background=True)
    jobs = None
    try:
        # Durable jobs for the page and the HTTP API alike: stored in data_dir before they are
        # queued, queued again after a crash; the page lists each browser's (or login's) own.
        jobs = JobManager(engine, store).start()
        page_cache = use_private_cache(jobs.store.data_dir)  # GRADIO_TEMP_DIR, before the page is built
        recent = RecentJobs(jobs)
        demo = build_page(
            engine,
            submit=recent.submit,
            extra=recent.attach,
            cancel=recent.cancel,
            waiting=lambda: jobs.pending_count,
            shown=recent,
        )
        # Transcriptions pass Gradio's queue without a limit and wait in the engine's (see
        # ui/page/wiring.py); every waiting one holds a handler thread, so the pool has room for all.
        demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.workers)
        threads = max(40, engine.worker.workers + settings.queue_size + 16)  # 40: Gradio's default
        port = settings.port if port is None else (port or free_port(settings.host))
        auth = parse_auth(settings.auth)
        for warning in exposure_warnings(settings):  # what is open to whom beyond this machine
            log.warning(warning)
        routes = _RoutesAtStartup(lambda app: add_routes(app, engine, settings, jobs=jobs))
        try:
            app, local_url, share_url = demo.launch(
                server_name=settings.host,
                server_port=port,
                share=settings.share,
                auth=auth,
                auth_message="Log in to use the speech-to-text server." if auth else None,
                prevent_thread_lock=True,
                quiet=quiet,
                ssr_mode=False,
                show_error=True,
                max_threads=threads,
                max_file_size=f"{settings.max_upload_mb:g}mb",
                css_paths=[CSS_PATH],
                footer_links=["api", "settings"],
                theme=gr.themes.Soft(),
                app_kwargs={"lifespan": routes.lifespan, "middleware": [upload_guard(settings, page_cache)]},
            )
        except Exception:
            routes.raise_error()  # the real reason, not Gradio's "cannot find empty port"
            raise
        if settings.share and not share_url:
            log.warning(
                "No public share link could be created (no internet, or the tunnel is blocked); "
                "serving locally at %s only.",
                local_url,
            )
    except BaseException:
        if jobs is not None:
            jobs.close()
        elif store is not None:
            store.close()
        engine.close(drain=False, timeout=SHUTDOWN_TIMEOUT_S)
        raise
    return Server(demo, engine, app, local_url, share_url)


class _RoutesAtStartup:
    """Adds the HTTP routes to Gradio's FastAPI app in its lifespan start-up, which uvicorn
    runs before it accepts the first connection: /healthz and /v1 answer as soon as the
    page does, never a 404 in between. (FastAPI's `lifespan`, given through launch's
    app_kwargs, is the public hook Gradio 6 offers into the app it creates in launch().)

    None of Gradio's own route patterns covers /v1, /healthz or /metrics, so these are not
    shadowed whichever order they are matched in.
    """

    def __init__(self, add: Callable[[Any], Any]):
        self.add = add
        self.error: BaseException | None = None

    @asynccontextmanager
    async def lifespan(self, app):
        try:
            self.add(app)
        except BaseException as exc:  # uvicorn would only log it and Gradio report a port problem
            self.error = exc
            raise
        yield

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Speech-to-text web app (openai-whisper behind a Gradio page)."
    )
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="YAML configuration file (default: %(default)s)"
    )
    parser.add_argument(
        "--host", help="address to listen on, e.g. 0.0.0.0 for the local network (config: host)"
    )
    parser.add_argument("--port", type=int, help="port to listen on (config: port)")
    parser.add_argument(
        "--share",
        action="store_true",
        default=None,
        help="also ask Gradio for a public link; needs internet (config: share)",
    )
    parser.add_argument("--model", help="model name or checkpoint path (config: model)")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum, frame):  # docker stop / systemd: the same clean stop as Ctrl-C
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        settings = load_settings(
            args.config, {"host": args.host, "port": args.port, "share": args.share, "model": args.model}
        )
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        check_ffmpeg()
    except FfmpegMissing as exc:
        print(exc, file=sys.stderr)
        return 1
    try:  # before the model starts loading: a data_dir that cannot be used stops here, in one line
        store = open_store(settings)
    except StorageError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        engine = Engine(settings, background=True)
    except DeviceError as exc:
        store.close()
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        server = serve(settings, engine=engine, quiet=True, store=store)
    except StorageError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:  # port taken, address not available
        print(
            f"Cannot serve on {settings.host}:{settings.port}: {exc}. Choose another with --port.",
            file=sys.stderr,
        )
        return 1
    print(f"Serving on {server.url}" + (f" and {server.share_url}" if server.share_url else ""), flush=True)
    print("The model loads in the background; the page shows when it is ready. Ctrl-C stops.", flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("Stopping: cancelling running jobs and freeing the model...", flush=True)
    finally:
        server.close()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
