"""Uploads that go wrong halfway, on the real app over 127.0.0.1: a file part without a file
name, a client that declares more than it sends (408 after upload_idle_timeout_s), a client
that leaves mid-upload (one INFO line, no traceback), each leaving nothing in data_dir/uploads;
and a Retry-After that follows the running job's real progress."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest

from conftest import JFK, app_server, shared_audio

FIVE_MIN = JFK.parent.parent / "long" / "lj050_0159_5min.mp3"
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    with app_server(
        micro_checkpoint,
        tmp_path_factory.mktemp("uploads") / "data",
        workers=1,
        queue_size=1,
        max_upload_mb=4,
        upload_idle_timeout_s=IDLE_TIMEOUT_S,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as http:
        yield http


def uploads(server) -> list:
    return list(server.app.state.jobs.upload_dir.iterdir())


def until_empty(server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while uploads(server):
        assert time.monotonic() < deadline, f"partial uploads left: {uploads(server)}"
        time.sleep(0.05)


def multipart(boundary: str, disposition: str, data: bytes) -> bytes:
    return (
        (
            f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_a_file_part_without_a_file_name_is_the_file(http):
    data = shared_audio(JFK).read_bytes()  # 1.15 MB: past Starlette's 1 MB limit on a text field
    assert len(data) > 1024 * 1024
    response = http.post("/v1/audio/transcriptions", files={"file": ("", data)})  # httpx sends no filename
    assert response.status_code == 200, response.text
    assert response.json()["text"]
    boundary = "empty-name"
    response = http.post(
        "/v1/jobs",
        content=multipart(boundary, 'name="file"; filename=""', data),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 202, response.text
    assert "/" not in response.json()["name"]  # no client name: the server's own, never a path


def raw_request(server, path: str, declared: int, body: bytes) -> socket.socket:
    """A POST that declares `declared` bytes and sends only `body`, on a socket left open."""
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=IDLE_TIMEOUT_S + 20)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
        "Content-Type: multipart/form-data; boundary=cut\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_answer(sock: socket.socket) -> str:
    """One HTTP response off the socket: its head and its Content-Length of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(
        next(
            line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_a_client_that_sends_less_than_it_declared_gets_408_and_leaves_nothing(server):
    body = multipart("cut", 'name="file"; filename="jfk.flac"', shared_audio(JFK).read_bytes())[:200_000]
    for path in ("/v1/audio/transcriptions", "/v1/jobs"):
        started = time.monotonic()
        with raw_request(server, path, declared=len(body) + 500_000, body=body) as sock:
            answer = read_answer(sock)  # times out (a test failure) if none comes
        elapsed = time.monotonic() - started
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert '"code":"request_timeout"' in answer and '"type":"invalid_request_error"' in answer
        assert IDLE_TIMEOUT_S <= elapsed < IDLE_TIMEOUT_S + 5
        until_empty(server)


def test_a_client_leaving_mid_upload_is_one_info_line_and_leaves_nothing(server, caplog):
    body = multipart("cut", 'name="file"; filename="jfk.flac"', shared_audio(JFK).read_bytes())[:300_000]
    uvicorn = logging.getLogger("uvicorn")  # uvicorn's loggers do not propagate to the root
    uvicorn.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            for path in ("/v1/audio/transcriptions", "/v1/jobs"):
                sock = raw_request(server, path, declared=len(body) + 500_000, body=body)
                time.sleep(0.3)  # the server has the first part on disk by now
                sock.close()
                until_empty(server)
            deadline = time.monotonic() + 5
            while len([r for r in caplog.records if "left during its upload" in r.getMessage()]) < 2:
                assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
                time.sleep(0.05)
    finally:
        uvicorn.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    ]
    left = [r for r in caplog.records if "left during its upload" in r.getMessage()]
    assert [r.levelno for r in left] == [logging.INFO, logging.INFO] and not any(r.exc_info for r in left)


class HoldAfter:
    """A `before_step` hook that lets `free` steps of the running decode go at full speed, then
    waits for `release` before each further one: a job that has made real progress and then
    goes slowly, as a long recording on a busy machine does."""

    def __init__(self, free: int):
        self.free = free
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, decode) -> None:
        self.calls += 1
        if self.calls > self.free and not self.release.wait(60):
            raise TimeoutError("never released")


def test_retry_after_follows_the_running_job(micro_checkpoint, tmp_path):
    """A 5-minute recording runs: a client refused for a full queue is told to come back when
    that job will end at the pace it has shown, not after the short jobs' average (1 s)."""
    five_min = shared_audio(FIVE_MIN)
    hold = HoldAfter(free=1 << 30)  # free until the short jobs are done
    with (
        app_server(
            micro_checkpoint, tmp_path / "data", before_step=hold, workers=1, queue_size=1, batch_size=1
        ) as server,
        httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as http,
    ):
        jfk = shared_audio(JFK).read_bytes()
        for _ in range(2):  # short jobs: the average job takes well under a second
            assert http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)}).status_code == 200
        hold.free = hold.calls + 24  # the long job decodes a window (24 tokens at most), then goes slowly
        long_job = http.post("/v1/jobs", files={"file": ("five.mp3", five_min.read_bytes())}).json()
        deadline = time.monotonic() + 60
        while (job := http.get(f"/v1/jobs/{long_job['id']}").json())["seconds_done"] <= 0:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        waiting = http.post("/v1/jobs", files={"file": ("jfk.flac", jfk)})  # fills the queue (1)
        assert waiting.status_code == 202, waiting.text
        time.sleep(2.0)  # the long job holds: its pace so far: one window in more than 2 s
        job = http.get(f"/v1/jobs/{long_job['id']}").json()
        refused = http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", jfk)})
        assert refused.status_code == 429, refused.text
        retry_after = int(refused.headers["retry-after"])
        elapsed = time.time() - job["started_at"]
        pace = job["seconds_total"] / job["seconds_done"]  # at least this many times the time so far
        print(
            f"\nRetry-After {retry_after} s after {elapsed:.1f} s, {job['seconds_done']:.0f} of "
            f"{job['seconds_total']:.0f} s done"
        )
        assert retry_after >= 0.8 * elapsed * (pace - 1) and retry_after > 10
        hold.release.set()
