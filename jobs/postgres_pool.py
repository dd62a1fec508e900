"""Connections: a small pool of psycopg connections that a server restart cannot wedge, and how
the job store's URL becomes connection settings and its errors become messages.

    pool = Connections(connection_settings(dsn), size=10, wait_s=5, location=redact(dsn))
    with pool.connection() as connection:   # one transaction: committed at the end, rolled back on error
        connection.execute(...)             # the server gone: StoreUnavailable (HTTP 503), never a hang

Why not psycopg_pool: it reconnects in background threads with an exponential back-off, so
after a restart of the server the first calls can still time out for seconds while the
server is back. Here a call that finds no healthy idle connection connects itself, in its own
thread: during an outage it fails at once with libpq's reason ("Connection refused"), and the
first call after the server is back works. Each idle connection is checked (an empty query)
before it is handed out, as psycopg_pool's `check_connection` does, since a restart closes
them all without a word.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from jobs.errors import StorageError, StoreUnavailable

# libpq settings the URL may override: how soon a dead server or network shows as an error
# instead of a call that hangs (keepalives probe an idle connection, tcp_user_timeout bounds
# a write nobody acknowledges).
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
    "application_name": "whisper-app",
}
# SQLSTATE classes that mean the server is gone or going, not that the statement was wrong.
_UNREACHABLE_STATES = ("08", "57P01", "57P02", "57P03")


def redact(dsn: str) -> str:
    """The URL as messages show it: user, host, port and database, never the password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(an unreadable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def _unreachable(error: BaseException) -> bool:
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = getattr(error, "sqlstate", None)
    return state is None or state.startswith(_UNREACHABLE_STATES)  # None: libpq's own (no server reply)


def connection_settings(dsn: str) -> dict[str, Any]:
    """libpq keywords for `dsn`, with CONNECTION_DEFAULTS where it says nothing."""
    try:
        return {**CONNECTION_DEFAULTS, **conninfo_to_dict(dsn)}
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"job_store is not a URL PostgreSQL can read ({exc})") from None


def store_error(error: psycopg.Error, location: str, opening: bool = False) -> StorageError:
    """The StorageError for a database error; at opening, any failure to connect (a wrong
    password included) is StoreUnavailable, with what to check."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not isinstance(error, psycopg.OperationalError):
        return StorageError(f"Cannot use the job store {location} ({first}).")
    check = (
        "is its PostgreSQL server up and reachable from this machine, and are the user and "
        "password in job_store right?"
        if opening
        else "is its PostgreSQL server up and reachable?"
    )
    return StoreUnavailable(
        f"The job store {location} cannot be reached ({first}): {check} "
        "Jobs cannot be stored or read until it answers."
    )


class PoolExhausted(psycopg.OperationalError):
    """Every connection stayed busy for `wait_s`: the server is too slow to answer (or hangs)."""


class Connections:
    """At most `size` open connections to one database, shared by every thread."""

    def __init__(self, settings: dict[str, Any], size: int, wait_s: float, location: str):
        self._settings = settings  # libpq keywords (host, port, dbname, user, password, timeouts)
        self._wait_s = wait_s  # how long a call waits for a free connection
        self._location = location  # the URL as messages show it (redact)
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection] = []  # most recently used last
        self._lock = threading.Lock()
        self.closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection in one transaction; the server's absence as StoreUnavailable."""
        try:
            with self._pooled() as connection:
                yield connection
        except psycopg.Error as exc:
            if _unreachable(exc):
                raise store_error(exc, self._location) from None
            raise

    @contextlib.contextmanager
    def _pooled(self) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=self._wait_s):
            raise PoolExhausted(f"no free database connection within {self._wait_s:g} s")
        try:
            connection = self._take()
            try:
                yield connection
                connection.commit()
            except BaseException:
                if not connection.closed:
                    with contextlib.suppress(psycopg.Error):
                        connection.rollback()
                raise
            finally:
                self._give_back(connection)
        finally:
            self._slots.release()

    def _take(self) -> psycopg.Connection:
        while True:
            with self._lock:
                if self.closed:
                    raise psycopg.OperationalError("the job store is closed")
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return psycopg.connect(**self._settings, row_factory=dict_row)
            if _alive(connection):
                return connection
            connection.close()

    def _give_back(self, connection: psycopg.Connection) -> None:
        healthy = not connection.closed and not connection.broken
        with self._lock:
            if healthy and not self.closed:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _alive(connection: psycopg.Connection) -> bool:
    """Whether the server still answers on it: one empty query outside a transaction."""
    if connection.closed or connection.broken:
        return False
    try:
        connection.autocommit = True
        try:
            connection.execute("")
        finally:
            connection.autocommit = False
        return True
    except psycopg.Error:
        return False
