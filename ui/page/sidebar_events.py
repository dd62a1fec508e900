"""What the sidebar's timer, the model drop-down and the Release button do: read the engine
and redraw the memory panel and the model's line (their HTML: ui/page/sidebar.py)."""

from __future__ import annotations

from collections.abc import Callable

from engine import Engine
from ui.page.sidebar import gpu_panel_html, model_state_html, process_rss_mb, release_markdown


class SidebarEvents:
    """The event functions of one page's sidebar, each a reading of `engine`; `selected` is the
    model picked in the drop-down, which the model's line is about. `waiting()` counts the jobs
    waiting (the job manager's queue, which may be shared by several replicas)."""

    def __init__(self, engine: Engine, waiting: Callable[[], int] | None = None):
        self.engine = engine
        self.waiting = waiting
        self.names = engine.model_names
        self.on_gpu = engine.plan.is_cuda

    def refresh(self, selected: str | None = None):
        status = self.engine.status()
        return (
            gpu_panel_html(self.engine.monitor.snapshot(), status, self._waiting()),
            model_state_html(status, self.names.resolve(selected)),
        )

    def show_model(self, selected: str | None):
        return model_state_html(self.engine.status(), self.names.resolve(selected))

    def release(self, selected: str | None = None):
        selected = self.names.resolve(selected)
        before, rss_before = self.engine.monitor.snapshot(), process_rss_mb()
        report = self.engine.release()
        after, rss_after = self.engine.monitor.snapshot(), process_rss_mb()
        status = self.engine.status()
        return (
            release_markdown(report, before, after, self.on_gpu, rss_before, rss_after),
            gpu_panel_html(after, status, self._waiting()),
            model_state_html(status, selected),
        )

    def _waiting(self) -> int | None:
        if self.waiting is None:
            return None
        try:
            return self.waiting()
        except Exception:  # the store away: the panel still draws, with the engine's queue
            return None
