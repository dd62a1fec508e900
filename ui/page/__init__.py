"""The Gradio page: what app.py builds and serves (the page, its recent jobs, its private files)."""

from ui.page.files import use_private_cache
from ui.page.layout import CSS_PATH
from ui.page.recent_jobs import RecentJobs
from ui.page.upload_guard import upload_guard
from ui.page.wiring import build_page

__all__ = ["CSS_PATH", "RecentJobs", "build_page", "upload_guard", "use_private_cache"]
