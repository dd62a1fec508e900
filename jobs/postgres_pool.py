"""Connections: a small pool of psycopg connections that a server restart cannot wedge.

    pool = Connections({"host": "db", "dbname": "stt", ...}, size=10, wait_s=5)
    with pool.connection() as connection:   # one transaction: committed at the end, rolled back on error
        connection.execute(...)

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
from psycopg.rows import dict_row


class PoolExhausted(psycopg.OperationalError):
    """Every connection stayed busy for `wait_s`: the server is too slow to answer (or hangs)."""


class Connections:
    """At most `size` open connections to one database, shared by every thread."""

    def __init__(self, settings: dict[str, Any], size: int, wait_s: float):
        self._settings = settings  # libpq keywords (host, port, dbname, user, password, timeouts)
        self._wait_s = wait_s  # how long a call waits for a free connection
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection] = []  # most recently used last
        self._lock = threading.Lock()
        self.closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
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
