"""Where the page's files live: Gradio's cache (its copies of uploaded recordings, and of any
file a handler returns that lies outside it) and the transcript downloads, private to the
server's user (their size is bounded by ui/page/upload_guard.py).

    cache = use_private_cache(settings.data_dir)   # GRADIO_TEMP_DIR, 0700; before the page is built
    downloads = DownloadDir()                       # one folder per job's downloads, inside the cache

By default Gradio keeps them in the system's temporary folder (/tmp/gradio, 0755, files
0644, shared with every Gradio app on the host); here they live in `data_dir/page-files`
(0700), on the disk /healthz watches, unless the operator set GRADIO_TEMP_DIR. The download
folders are made inside the cache, so Gradio serves them where they are instead of copying
them (it copies only what lies outside its cache).

Gradio reads GRADIO_TEMP_DIR when a component or its app is created *and* on every request
(the check that an input file lies in its cache), so it is set once per process and never
moved: a second server in the same process (tests) shares the first one's cache.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

CACHE_DIR_NAME = "page-files"  # under data_dir
# How long Gradio keeps its copies (the page's delete_cache, ui/page/layout.py); a killed process's
# older files are pruned at the next start.
KEEP_CACHE_S = 24 * 3600.0
DOWNLOAD_FORMATS = ("txt", "srt", "vtt", "tsv", "json")  # offered as downloads (all the API's result formats)
KEEP_DOWNLOADS_S = 3600.0  # downloads older than this are deleted (Gradio keeps its own copy meanwhile)


def use_private_cache(data_dir: str | os.PathLike) -> Path:
    """Gradio's cache folder for this process, created 0700: GRADIO_TEMP_DIR when set (by the
    operator, or by a first server in this process), else data_dir/page-files, which is also
    pruned of files older than a day that a killed process left."""
    chosen = os.environ.get("GRADIO_TEMP_DIR")
    cache = Path(chosen or Path(data_dir).resolve() / CACHE_DIR_NAME)
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not chosen:
        cache.chmod(0o700)
        prune(cache, KEEP_CACHE_S)
        os.environ["GRADIO_TEMP_DIR"] = str(cache)
    return cache


def gradio_cache() -> Path:
    """Gradio's cache folder (GRADIO_TEMP_DIR), created private if it is not there yet."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


class DownloadDir:
    """Where transcript files are written: one folder per job (0700, files 0600) inside
    Gradio's cache folder, so Gradio serves them there instead of copying them, pruned after
    KEEP_DOWNLOADS_S and removed with the app."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="whisper-app-downloads-", dir=gradio_cache()))

    @staticmethod
    def private(files: dict[str, Path]) -> list[str]:
        """The written files as paths for gr.File, readable by the server's user only."""
        for path in files.values():
            path.chmod(0o600)
        return [str(path) for path in files.values()]

    def new_job_dir(self) -> Path:
        self.prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def prune(self, older_than_s: float = KEEP_DOWNLOADS_S) -> None:
        cutoff = time.time() - older_than_s
        for folder in self.root.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def prune(folder: Path, older_than_s: float) -> None:
    """Delete files older than `older_than_s` under `folder`, then the folders left empty."""
    cutoff = time.time() - older_than_s
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = Path(root, name)
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
        for name in dirs:
            try:
                Path(root, name).rmdir()  # only if empty
            except OSError:
                pass
