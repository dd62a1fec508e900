"""A real PostgreSQL server for the tests, started from the system's binaries (Debian's
`postgresql` package, which .ci/run installs): initdb and pg_ctl in a temporary folder, on a
free port of 127.0.0.1, with a password, as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root).

    server = PostgresServer.start()        # or raises Unavailable saying why
    dsn = server.new_database()            # postgresql://whisper:...@127.0.0.1:PORT/test_1
    server.stop(); server.start_again()    # the server gone from under a store, and back
    server.close()                         # stopped and its folder deleted

fsync is off: these tests restart the server cleanly, never cut its power, and a full sync per
commit would only make them slow.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "whisper"  # the database superuser initdb creates
PASSWORD = "test-password"  # a login the URL carries, so the tests see it is never shown
RUN_AS = ("postgres", "nobody")  # who runs the server when the tests run as root, first found


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why (a skip reason)."""


def find_bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin
    (the newest), which is not on PATH."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway server: its folder, its port, the user it runs as."""

    def __init__(self, bin_dir: Path, root: Path, run_as: str | None):
        self.bin_dir, self.root, self.run_as = bin_dir, root, run_as
        self.data, self.log = root / "data", root / "server.log"
        self.port = _free_port()
        self._databases = itertools.count(1)

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise Unavailable("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
        run_as = None
        if os.geteuid() == 0:
            run_as = next((name for name in RUN_AS if _user_exists(name)), None)
            if run_as is None or shutil.which("runuser") is None:
                raise Unavailable("running as root, and no postgres user (or no runuser) to run it as")
        root = Path(tempfile.mkdtemp(prefix="whisper-pg-"))
        server = cls(bin_dir, root, run_as)
        try:
            server._init()
            server.start_again()
        except (OSError, subprocess.SubprocessError, Unavailable) as exc:
            server.close()
            raise Unavailable(f"could not start PostgreSQL from {bin_dir}: {exc}") from None
        return server

    def _command(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command: list[str] = [str(self.bin_dir / name), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise Unavailable(f"{name} failed ({done.returncode}): {tail}")
        return done

    def _init(self) -> None:
        password = self.root / "password"
        password.write_text(PASSWORD + "\n")
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)
            for path in (self.root, password):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._command(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={password}",
            "-E",
            "UTF8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        )
        password.unlink()

    def start_again(self) -> None:
        """Start the (stopped) server, on the same port; returns once it takes connections."""
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._command(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
        )

    def stop(self) -> None:
        """Stop the server (fast: connections are closed, as a restart or a failover does)."""
        self._command("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def dsn(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        import psycopg

        name = f"test_{next(self._databases)}"
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._command("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
