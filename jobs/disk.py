"""Free disk space under data_dir, and telling a full disk from other storage errors.

    disk_space("data", min_free_mb=1024)   # DiskSpace(free_bytes=..., low=...)

A full disk is an operator's problem that passes (space is freed, a quota raised), so the
front ends answer it with a clear "out of disk space" (HTTP 507) and keep serving, instead of
a traceback; /healthz and /metrics warn before it happens. Which errors mean a full disk is
`jobs.data_dir.is_disk_full`'s to say.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class DiskSpace:
    """Free space on the file system that holds a directory, against a warning threshold."""

    free_bytes: int  # what an unprivileged writer can still use (statvfs f_bavail)
    total_bytes: int
    min_free_bytes: int  # the warning threshold (min_free_disk_mb); 0 = never warn

    @property
    def low(self) -> bool:
        return self.free_bytes < self.min_free_bytes

    def warning(self) -> str | None:
        """One line for /healthz when space is low, else None."""
        if not self.low:
            return None
        return (
            f"Low disk space under data_dir: {self.free_bytes / MIB:,.0f} MB free, below "
            f"min_free_disk_mb ({self.min_free_bytes / MIB:,.0f} MB); uploads are refused once it "
            "is full."
        )


def disk_space(path: str | os.PathLike, min_free_mb: float = 0) -> DiskSpace:
    usage = shutil.disk_usage(path)
    return DiskSpace(usage.free, usage.total, int(min_free_mb * MIB))


def has_room(path: str | os.PathLike, nbytes: int) -> bool:
    """Whether `nbytes` more would fit under `path` now."""
    return shutil.disk_usage(path).free >= nbytes
