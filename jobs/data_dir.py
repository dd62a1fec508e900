"""The folder of durable jobs (`data_dir`): owned by one process, readable by its user only.

    lock = DataDirLock("data")     # creates it (0700) and takes it, or raises DataDirInUse
    private_dir(lock.path / "audio")   # a 0700 folder inside
    lock.release()                 # (the kernel also releases it when the process dies)

One owner: two servers on one data_dir would each run the other's jobs again and write over
each other's results, so the second one refuses to start. The lock is `flock` on a file in
the folder, held for the life of the process: the kernel drops it however the process ends
(kill -9 included), so nothing stale is ever left to clean up. The file holds the owner's pid
and host only to name them in the refusal.

Private: recordings and transcripts are the most private thing the server keeps, so what it
creates here is 0600 (files) and 0700 (folders), and what it finds looser is tightened.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import sqlite3
import stat
from pathlib import Path

from jobs.errors import DataDirInUse, DataDirUnwritable, DiskFull, StorageError

log = logging.getLogger(__name__)

LOCK_NAME = "owner.lock"  # in data_dir: held (flock) by the server that owns the folder
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
NEARLY_FULL_BYTES = 1 << 20  # less free space than this under data_dir and an I/O error is a full disk
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def is_disk_full(error: BaseException | None, folder: Path | None = None) -> bool:
    """Whether `error`, or an error it was raised from, says the disk or a quota is full:
    DiskFull, ENOSPC / EDQUOT, or SQLite's SQLITE_FULL ("database or disk is full"); or, for an
    I/O error of SQLite's (it maps the -shm file, and reports that as "disk I/O error"), whether
    the disk of `folder` has (next to) no space left."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _says_disk_full(error, folder):
            return True
        error = error.__cause__ or error.__context__
    return False


def _says_disk_full(error: BaseException, folder: Path | None) -> bool:
    if isinstance(error, DiskFull):
        return True
    if isinstance(error, OSError):
        return error.errno in _DISK_FULL_ERRNOS
    if not isinstance(error, sqlite3.Error):
        return False
    name = getattr(error, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or "disk is full" in str(error):
        return True
    if name.startswith("SQLITE_IOERR") and folder is not None:
        try:
            return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def storage_error(error: BaseException, data_dir: Path, file: Path | None = None) -> StorageError:
    """The StorageError an OS or SQLite error on data_dir (or its `file`) stands for, saying what
    to do about it."""
    where = f"data_dir {data_dir.resolve()}"
    what = f"{file.name}: {error}" if file is not None else str(error)
    if is_disk_full(error, data_dir if data_dir.is_dir() else None):
        return DiskFull(
            f"The disk of {where} is full ({error}): free some space there, or set data_dir "
            "to a folder on another disk, and start again."
        )
    name = getattr(error, "sqlite_errorname", "")
    if (isinstance(error, OSError) and error.errno in _UNWRITABLE_ERRNOS) or name in (
        "SQLITE_READONLY",
        "SQLITE_CANTOPEN",
        "SQLITE_PERM",
        "SQLITE_AUTH",
    ):
        return DataDirUnwritable(
            f"Cannot write to {where} ({what}): the server keeps its jobs there. Make the folder "
            f"writable for user {_user()} (is it on a read-only mount?), or set data_dir (config.yaml or "
            "WHISPER_APP_DATA_DIR) to a writable folder, and start again."
        )
    return StorageError(f"Cannot use {where} ({what}).")


def tighten(path: Path) -> None:
    """Take group and other permissions off `path` (0600 files, 0700 folders) if it has any."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)
    except FileNotFoundError:
        return
    except OSError as exc:  # not our file: say so, it stays readable to others
        if exc.errno == errno.EROFS:
            return  # a read-only mount: the write that follows fails and says so
        log.warning("Could not make %s private to this user (%s); others on this host may read it", path, exc)


def private_dir(path: Path, data_dir: Path | None = None) -> Path:
    """Create the folder (0700) if absent, tighten it if present; returns it. Raises StorageError
    naming `data_dir` (the folder itself when None)."""
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, data_dir or path, None if data_dir is None else path) from None
    tighten(path)
    return path


class DataDirLock:
    """Ownership of one data_dir for this process; see the module docstring."""

    def __init__(self, data_dir: Path | str):
        self.path = private_dir(Path(data_dir))
        self.file = self.path / LOCK_NAME
        try:
            self._fd: int | None = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError as exc:
            raise storage_error(exc, self.path, self.file) from None
        tighten(self.file)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode("utf-8", "replace").strip() or "a process starting up"
            self.release()
            raise DataDirInUse(
                f"data_dir {self.path.resolve()} is in use by another server ({holder}, "
                f"holding {LOCK_NAME}): "
                "two servers on one data_dir would run each other's jobs again and overwrite their results. "
                "Stop that one first, or give this server its own data_dir."
            ) from None
        except OSError as exc:  # a file system without locks (some network or FUSE mounts)
            log.warning(
                "Cannot lock %s (%s): nothing stops a second server from using the same data_dir",
                self.file,
                exc,
            )
        self._write_holder()

    def _write_holder(self) -> None:
        holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, holder, 0)
        except OSError as exc:  # a full disk: the lock holds all the same, the refusal names no pid
            log.warning("Could not write this server's pid into %s (%s)", self.file, exc)

    def release(self) -> None:
        """Give the folder up (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
