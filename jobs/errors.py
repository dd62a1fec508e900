"""The errors of the job service, in the engine's family (`engine.errors.EngineError`: a
message for people, `param` for the option to blame), so the front ends map them in the same
one table and a stored job's `error_type` finds its class through `engine.error_class`.

    EngineError
    ├── StorageError           the job store cannot be used as it is (also a RuntimeError)
    │   ├── DataDirInUse       another server process owns the folder
    │   ├── DataDirUnwritable  read-only file system, or no permission
    │   ├── DiskFull           no space left for a job's recording or row
    │   └── StoreUnavailable   the PostgreSQL job store cannot be reached now (503); it may come back
    ├── OutOfDiskSpace         an upload could not be received (also an OSError, ENOSPC)
    └── JobInterrupted         the server stopped in the job `max_attempts` times (a RuntimeError)
"""

from __future__ import annotations

import errno

from engine.errors import EngineError


class StorageError(EngineError, RuntimeError):
    """The job store cannot be used as it is; the message names the folder, file or database
    and what to do."""


class DataDirInUse(StorageError):
    """Another server process owns this data_dir."""


class DataDirUnwritable(StorageError):
    """data_dir (or a file in it) cannot be written."""


class DiskFull(StorageError):
    """The disk under data_dir has no space left."""


class StoreUnavailable(StorageError):
    """The job store's database server cannot be reached (down, restarting, network gone, or it
    refused the login); the store works again without being reopened once it answers."""


class OutOfDiskSpace(EngineError, OSError):
    """The server's disk (or the user's quota on it) is full; the message is written for people."""

    def __init__(self, what: str = "the upload could not be stored"):
        OSError.__init__(
            self,
            errno.ENOSPC,
            f"The server is out of disk space: {what}. Try again later, once space has been freed.",
        )

    def __str__(self) -> str:
        return self.strerror


class JobInterrupted(EngineError, RuntimeError):
    """The server stopped while the job ran, `max_attempts` times: it is not started again."""
