"""The page's files on the real app: the recording's cached copy and the transcript downloads are
readable by the server's user only (0600 files, 0700 folders), after a real transcription through
gradio_client; Gradio's upload route, open without `auth`, is bounded (page_files_max_mb, the
disk's free space, a stalled or departing client) and leaves no partial file."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from pathlib import Path

import httpx

from conftest import JFK, app_server, shared_audio
from small_disk import fill, small_disk

MB = 1024 * 1024


def modes(folder: Path) -> dict:
    """{path: (is a folder, permission bits)} for the folder and everything under it."""
    found = {folder: (True, stat.S_IMODE(folder.stat().st_mode))}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            found[path] = (path.is_dir(), stat.S_IMODE(path.lstat().st_mode))
    return found


def test_the_page_s_files_are_private(micro_checkpoint, tmp_path):
    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    with app_server(micro_checkpoint, tmp_path / "data", load_first=False) as server:
        page = Client(server.url, verbose=False, download_files=str(tmp_path / "client"))
        text, files, _ = page.predict(handle_file(str(shared_audio(JFK))), api_name="/transcribe")
        assert text and len(files) == 5  # txt, srt, vtt, tsv, json
        cache = Path(get_upload_folder())
        found = {**modes(cache), **modes(server.demo.downloads.root)}
        names = {path.name for path in found}
        assert "jfk.flac" in names and "jfk.srt" in names  # the cached recording and a download
        loose = {
            str(path): oct(mode)
            for path, (folder, mode) in found.items()
            if mode != (0o700 if folder else 0o600)
        }
        assert not loose, loose
        downloads = [path for path in found if path.suffix == ".srt"]
        assert len(downloads) == 1  # served where it was written: Gradio made no second copy


def upload(http: httpx.Client, data: bytes, name: str = "jfk.flac") -> httpx.Response:
    return http.post("/gradio_api/upload", files={"files": (name, data)})


def temporary_files(cache: Path) -> list:
    return [p for p in cache.iterdir() if p.is_file() and p.name.startswith("tmp")]


def test_page_uploads_are_bounded_and_leave_nothing_partial(micro_checkpoint, tmp_path, monkeypatch, caplog):
    data = shared_audio(JFK).read_bytes()  # 1.15 MB
    with small_disk(20) as root:
        cache = root / "page-cache"
        monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # this server's cache, on a small disk
        with (
            app_server(
                micro_checkpoint,
                tmp_path / "data",
                load_first=False,
                page_files_max_mb=3,
                upload_idle_timeout_s=1,
            ) as server,
            httpx.Client(base_url=server.url.rstrip("/"), timeout=30) as http,
        ):
            uvicorn = logging.getLogger("uvicorn")  # uvicorn's loggers do not propagate to the root
            uvicorn.addHandler(caplog.handler)
            try:
                with caplog.at_level(logging.INFO):
                    _leave_mid_upload(server, data)
                    stalled = _stall(server, data)
            finally:
                uvicorn.removeHandler(caplog.handler)
            assert stalled.startswith("HTTP/1.1 408")
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert [r for r in caplog.records if "left during its page upload" in r.getMessage()]
            _until(lambda: not temporary_files(cache), "partial uploads deleted")

            assert upload(http, data).status_code == 200
            assert upload(http, data[:-1]).status_code == 200  # another file: 2.3 MB held
            refused = upload(http, data[:-2])  # would pass 3 MB
            assert refused.status_code == 507 and "page uploads" in refused.text and "3.0 MB" in refused.text

            for held in cache.iterdir():  # room under the cap again; now the disk is what is short
                if held.is_dir():
                    for path in held.iterdir():
                        path.unlink()
            filler = fill(root, leave_bytes=len(data) // 2)
            full = upload(http, data)
            assert full.status_code == 507 and "out of disk space" in full.text
            boundary = "b"  # streamed, no Content-Length: the disk fills while Gradio writes it
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.flac"\r\n\r\n'
            body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            full = http.post(
                "/gradio_api/upload",
                content=chunks,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            assert full.status_code == 507 and "out of disk space" in full.text
            assert not temporary_files(cache)
            filler.unlink()
            assert upload(http, data).status_code == 200  # space is back


def _raw_upload(server, data: bytes) -> socket.socket:
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    part = (
        b'--cut\r\nContent-Disposition: form-data; name="files"; filename="cut.flac"\r\n\r\n' + data[:300_000]
    )
    sock.sendall(
        (
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data) + 500}\r\n"
            "Content-Type: multipart/form-data; boundary=cut\r\n\r\n"
        ).encode()
        + part
    )
    return sock


def _leave_mid_upload(server, data: bytes) -> None:
    sock = _raw_upload(server, data)
    time.sleep(0.3)
    sock.close()
    _until(lambda: not temporary_files(Path(os.environ["GRADIO_TEMP_DIR"])), "the partial upload deleted")


def _stall(server, data: bytes) -> str:
    with _raw_upload(server, data) as sock:
        return sock.recv(65536).decode(errors="replace")


def _until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)
