"""A small file system of its own, for the tests of what a full disk does.

    from small_disk import small_disk
    with small_disk(20) as root:      # a 20 MB tmpfs mounted at `root`, unmounted afterwards
        ...

It is a real tmpfs, so ENOSPC comes from the kernel exactly as on a full data disk. Mounting
needs root (CI runs as root); elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(size_mb: int) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="small-disk-"))
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        root.rmdir()
        pytest.skip("a small tmpfs needs root and mount(8); run as root (CI does) to test a full disk")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        root.rmdir()
        pytest.skip(f"could not mount a {size_mb} MB tmpfs: {done.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
        root.rmdir()


def fill(root: Path, leave_bytes: int = 0) -> Path:
    """Write one file that takes all but about `leave_bytes` of the free space; returns it
    (delete it to give the space back)."""
    filler = root / "filler"
    free = shutil.disk_usage(root).free - leave_bytes
    with open(filler, "wb") as out:
        chunk = b"\0" * (1 << 20)
        while free > 0:
            try:
                out.write(chunk[: min(len(chunk), free)])
                out.flush()
            except OSError:
                break
            free -= len(chunk)
    return filler
