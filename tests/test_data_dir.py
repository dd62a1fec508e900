"""data_dir at start-up, as an operator meets it: a second server on the same folder refuses to
start (and starts once the first is killed), and a read-only or full data_dir stops `python
app.py` with one line naming the folder and what to do, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, fast_settings
from small_disk import fill, small_disk


def _app(config, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_APP_")}
    command = [sys.executable, str(ROOT / "app.py"), "--config", str(config), "--port", str(port)]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**env, "GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _config(tmp_path, data_dir, model) -> os.PathLike:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {model}\ndevice: cpu\nprecision: fp32\nwarm_up: false\ndata_dir: {data_dir}\n")
    return config


def _refusal(config, port: int) -> str:
    """What `python app.py` prints when it refuses to start; asserts it exits 1 in one line."""
    process = _app(config, port)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(
            f"{config} started where it should have refused: {process.communicate()[0]}"
        ) from None
    assert process.returncode == 1, output
    assert "Traceback" not in output and "terminate called" not in output, output
    assert "Serving on" not in output
    return output.strip().splitlines()[-1]


def _wait_for(process: subprocess.Popen, text: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += process.stdout.readline()
    return seen


def test_a_second_server_on_the_same_data_dir_refuses_until_the_first_is_killed(micro_checkpoint, tmp_path):
    from app import free_port, serve
    from jobs import DataDirInUse

    data_dir = tmp_path / "data"
    config = _config(tmp_path, data_dir, micro_checkpoint)
    first = _app(config, free_port())
    try:
        _wait_for(first, "Serving on")
        line = _refusal(config, free_port())
        assert str(data_dir) in line and f"pid {first.pid}" in line and "in use by another server" in line
        with pytest.raises(DataDirInUse, match=f"pid {first.pid}"):  # serve() says the same, as an exception
            serve(fast_settings(micro_checkpoint, data_dir=str(data_dir)), port=0)
    finally:
        first.send_signal(signal.SIGKILL)  # nothing is left behind that keeps the folder taken
        first.wait(timeout=30)
    server = serve(fast_settings(micro_checkpoint, data_dir=str(data_dir)), port=0)
    try:
        assert (data_dir / "owner.lock").read_text().startswith(f"pid {os.getpid()} ")
    finally:
        server.close()


def test_a_read_only_data_dir_stops_the_start_with_one_line(micro_checkpoint, tmp_path):
    from app import free_port, serve
    from jobs import DataDirUnwritable
    from jobs.sqlite_store import SqliteJobStore

    with small_disk(5) as root:
        SqliteJobStore(root / "data").close()  # a data_dir with its database, then mounted read-only
        remount = subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only: {remount.stderr.strip()}")
        for data_dir in (root / "data", root / "new"):  # one that exists, one to be created
            line = _refusal(_config(tmp_path, data_dir, micro_checkpoint), free_port())
            assert line.startswith(f"Cannot write to data_dir {data_dir} ") and "writable" in line, line
        with pytest.raises(DataDirUnwritable, match="Read-only file system"):
            serve(fast_settings(micro_checkpoint, data_dir=str(root / "data")), port=0)


def test_a_full_disk_stops_the_start_with_one_line(micro_checkpoint, tmp_path):
    from app import free_port
    from jobs.sqlite_store import SqliteJobStore

    with small_disk(5) as root:
        SqliteJobStore(root / "old").close()
        fill(root)
        for data_dir in (root / "old", root / "new"):  # with its database, and a first start
            line = _refusal(_config(tmp_path, data_dir, micro_checkpoint), free_port())
            assert line.startswith(f"The disk of data_dir {data_dir} is full"), line
            assert "free some space" in line, line
