"""Download the configured Whisper models into download_root, once, before replicas start.

    python deploy/fetch_model.py     # reads config.yaml and WHISPER_APP_* as app.py does

Replicas that share one model folder (a compose volume, a ReadWriteMany claim) must not
download into it at the same moment: whisper writes the file in place and checks its SHA-256
at the end, so a second download truncating the file makes the first one's check fail, and
that replica's model "failed to load". This takes an exclusive lock on the folder first
(fcntl), so one process downloads and the others then find the file complete and verified.
Models given as paths (a .pt file, a CTranslate2 folder) are left alone.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOCK_FILE = ".download.lock"


def whisper_cache() -> Path:
    """whisper's own default download folder (whisper.load_model's)."""
    return Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"


def main() -> int:
    import whisper

    from engine import load_settings

    settings = load_settings(REPO / "config.yaml")
    root = Path(settings.download_root) if settings.download_root else whisper_cache()
    names = [m for m in settings.allowed_models if m in whisper._MODELS]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        for name in names:
            # whisper's own downloader (private, but load_model's): verifies the SHA-256 of a
            # file already there and downloads it again only when it differs.
            print(whisper._download(whisper._MODELS[name], str(root), in_memory=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
