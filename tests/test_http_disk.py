"""A full disk under data_dir, on a real 20 MB tmpfs (tests/small_disk.py): uploads are refused
with 507 in OpenAI's shape and leave nothing in data_dir/uploads, the page says the server is
out of disk space, /healthz and /metrics report the low disk, the server keeps serving, and the
same upload transcribes once space is back."""

from __future__ import annotations

import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import JFK, app_server, shared_audio
from small_disk import fill, small_disk

MB = 1024 * 1024


def samples(http: httpx.Client) -> dict:
    found = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def assert_out_of_space(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "insufficient_storage"
    assert "out of disk space" in error["message"] and "/tmp" not in error["message"]


def chunked(data: bytes, boundary: str):
    """A multipart body without Content-Length: the space check must hold while it streams in."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="jfk.flac"\r\n'
        "Content-Type: audio/flac\r\n\r\n"
    ).encode()
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_a_full_disk_is_507_and_the_same_upload_works_once_space_is_back(
    micro_checkpoint, tmp_path, monkeypatch, caplog
):
    from gradio_client import Client, handle_file

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "page-cache"))  # page uploads: not on the small disk
    data = shared_audio(JFK).read_bytes()  # 1.15 MB
    with small_disk(20) as root:
        with (
            app_server(
                micro_checkpoint, root / "data", load_first=False, workers=1, queue_size=2, min_free_disk_mb=8
            ) as server,
            httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as http,
        ):
            uploads = server.app.state.jobs.upload_dir
            health = http.get("/healthz").json()
            assert health["disk"]["low"] is False and health["warnings"] == []
            assert health["disk"]["free_bytes"] > 8 * MB
            filler = fill(root, leave_bytes=len(data) // 2)
            with caplog.at_level(logging.INFO):
                for route in ("/v1/audio/transcriptions", "/v1/jobs"):
                    # with Content-Length: refused before reading
                    assert_out_of_space(http.post(route, files={"file": ("jfk.flac", data)}))
                    response = http.post(
                        route,
                        content=chunked(data, "b"),  # streamed: ENOSPC while writing
                        headers={"Content-Type": "multipart/form-data; boundary=b"},
                    )
                    assert_out_of_space(response)
                    assert list(uploads.iterdir()) == []  # no partial file
                page = Client(server.url, verbose=False)
                with pytest.raises(Exception, match="out of disk space"):
                    page.predict(handle_file(str(JFK)), api_name="/transcribe")
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
            health = http.get("/healthz").json()
            assert health["status"] == "ok" and health["disk"]["low"] is True
            assert health["disk"]["free_bytes"] < len(data) and "Low disk space" in health["warnings"][0]
            metrics = samples(http)
            assert metrics[("whisper_data_dir_low_disk", ())] == 1
            assert metrics[("whisper_data_dir_free_bytes", ())] < len(data)
            assert metrics[("whisper_data_dir_free_threshold_bytes", ())] == 8 * MB
            assert metrics[("whisper_requests_refused_total", (("reason", "out_of_space"),))] == 4
            assert list((root / "data" / "audio").iterdir()) == []

            filler.unlink()  # space is back: the same requests work, without a restart
            response = http.post("/v1/audio/transcriptions", files={"file": ("jfk.flac", data)})
            assert response.status_code == 200, response.text
            assert response.json()["text"]
            job = http.post(
                "/v1/jobs",
                content=chunked(data, "b"),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            assert job.status_code == 202, job.text
            text, _, _ = page.predict(handle_file(str(JFK)), api_name="/transcribe")
            assert text
            assert http.get("/healthz").json()["disk"]["low"] is False
            assert samples(http)[("whisper_data_dir_low_disk", ())] == 0
