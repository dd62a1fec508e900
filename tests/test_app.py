"""The web app: `app.serve` on a free port with a micro checkpoint, driven by `gradio_client`
as a program would drive it (/transcribe), plus `python app.py` itself as a user starts it
(flags, share without internet, login, a model that cannot load, Ctrl-C), and the sidebar's
HTML from fake GPU readings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import JFK, ROOT, DecodeGate, app_server, shared_audio
from engine import DeviceStatus, EngineStatus, GpuReading, GpuSnapshot, ModelState, ReleaseReport

GATE = DecodeGate(timeout_s=60)  # decoding waits on it, so a test can hold a job running


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("app") / "data"
    with app_server(micro_checkpoint, data_dir, before_step=GATE, workers=1, queue_size=1) as server:
        yield server


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(
        server.url,
        verbose=False,
        analytics_enabled=False,
        download_files=str(tmp_path_factory.mktemp("downloads")),
    )


@pytest.fixture(scope="module")
def jfk():
    return shared_audio(JFK)


# --- the page through gradio_client ---------------------------------------------------------


def test_transcribe_returns_text_and_files(client, jfk):
    text, files, details = client.predict(handle_file(str(jfk)), api_name="/transcribe")
    assert isinstance(text, str) and "-->" in text  # timestamps are on by default
    # as the API offers
    assert sorted(Path(f).suffix for f in files) == [".json", ".srt", ".tsv", ".txt", ".vtt"]
    tsv = next(Path(f) for f in files if f.endswith(".tsv")).read_text(encoding="utf-8")
    assert tsv.startswith("start\tend\ttext\n")
    assert all(Path(f).stem == "jfk" for f in files)
    srt = next(Path(f) for f in files if f.endswith(".srt")).read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:") and " --> " in srt
    assert "11.0 s of audio" in details


def test_options_by_name(client, jfk):
    text, files, details = client.predict(
        handle_file(str(jfk)), language="en", task="translate", timestamps=False, api_name="/transcribe"
    )
    assert "-->" not in text
    assert "Language: **en**" in details
    assert len(files) == 5


def test_api_takes_the_audio_first_and_defaults_the_rest(client, server):
    api = client.view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/transcribe"]  # timer and release button stay private
    parameters = api["named_endpoints"]["/transcribe"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == [
        "audio",
        "language",
        "task",
        "timestamps",
        "model",
        "word_timestamps",
        "vad",
        "max_line_width",
        "max_lines",
        "max_cue_s",
        "per_segment",
        "prompt",
        "temperature",
        "speakers",
    ]
    assert not parameters[0]["parameter_has_default"]
    assert all(p["parameter_has_default"] for p in parameters[1:])
    assert parameters[4]["parameter_default"] == server.engine.model_names.public(
        server.engine.settings.model
    )
    assert parameters[-1]["parameter_default"] == "off"  # no diarization unless asked


def test_the_engines_queue_is_where_transcriptions_wait(server):
    from ui.page.wiring import TRANSCRIBE_CONCURRENCY_ID

    settings = server.engine.settings
    # Gradio lets every transcription through to the handler, which queues it in the engine
    # (its position shown) or is refused there ("queue full"); none waits in Gradio's queue.
    (transcribe,) = [fn for fn in server.demo.fns.values() if fn.name == "transcribe"]
    assert transcribe.concurrency_id == TRANSCRIBE_CONCURRENCY_ID and transcribe.concurrency_limit is None
    assert server.demo.max_threads >= settings.workers + settings.queue_size  # a thread for each waiting one
    (release,) = [fn for fn in server.demo.fns.values() if fn.name == "release"]
    assert release.concurrency_limit == 1
    assert server.demo._queue.max_size == settings.queue_size
    timer_fns = [fn for fn in server.demo.fns.values() if fn.name == "refresh"]
    assert timer_fns and not any(fn.queue for fn in timer_fns)  # readings never wait behind the GPU


def test_not_audio_is_a_readable_error_and_the_page_keeps_working(client, jfk, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are meeting notes, not a recording\n" * 20)
    with pytest.raises(AppError, match="not an audio or video file"):
        client.predict(handle_file(str(fake)), api_name="/transcribe")
    text, files, _ = client.predict(handle_file(str(jfk)), api_name="/transcribe")
    assert isinstance(text, str) and len(files) == 5


def test_prompt_and_temperature_reach_the_job(client, server, jfk):
    from jobs.store import result_from_dict

    prompt = "Minutes of the Kubernetes meeting, with Dr. Nguyen."
    _, files, _ = client.predict(
        handle_file(str(jfk)), prompt=prompt, temperature=0.6, api_name="/transcribe"
    )
    stored = next(
        r for r in server.app.state.jobs.store.recent(None, 50, any_owner=True) if r.name == "jfk.flac"
    )
    assert stored.options.initial_prompt == prompt and stored.options.temperature == (0.6,)
    result = json.loads(next(Path(f) for f in files if f.endswith(".json")).read_text(encoding="utf-8"))
    segments = result_from_dict({k: v for k, v in result.items() if k != "text"}).segments
    assert segments and all(s.temperature == 0.6 for s in segments)  # sampled at exactly that temperature

    # Empty fields and 0 keep the config's prompt and fallback ladder, as the HTTP form does.
    client.predict(handle_file(str(jfk)), prompt="  ", temperature=0, api_name="/transcribe")
    stored = next(
        r for r in server.app.state.jobs.store.recent(None, 50, any_owner=True) if r.name == "jfk.flac"
    )
    assert stored.options.initial_prompt is None and stored.options.temperature is None
    for bad in (1.5, -0.1):
        with pytest.raises(AppError, match=r"Temperature: must be a number from 0 to 1"):
            client.predict(handle_file(str(jfk)), temperature=bad, api_name="/transcribe")


def test_full_queue_is_a_readable_error(client, server, jfk):
    engine = server.engine
    GATE.clear()
    try:
        running = engine.submit(str(jfk))  # holds the one worker
        deadline = time.monotonic() + 30
        while running.status.value != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = engine.submit(str(jfk))  # fills the queue (queue_size 1)
        with pytest.raises(AppError, match="busy.*queue is full"):
            client.predict(handle_file(str(jfk)), api_name="/transcribe")
    finally:
        GATE.set()
    assert running.result(60).segments is not None and waiting.result(60) is not None


def _until(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_second_request_waits_in_the_job_queue_and_sees_its_place(client, server, jfk):
    engine = server.engine  # workers=1: the engine runs one job at a time
    GATE.clear()
    try:
        first = client.submit(handle_file(str(jfk)), api_name="/transcribe")
        _until(lambda: engine.status().busy_workers == 1, "the first job to run")
        # The running job's progress bar counts seconds of audio.
        _until(
            lambda: any(unit.unit == "s of audio" for unit in first.status().progress_data or []),
            "progress in seconds of audio",
        )
        second = client.submit(handle_file(str(jfk)), api_name="/transcribe")
        _until(
            lambda: any(
                unit.desc == "Waiting in queue: position 1" for unit in second.status().progress_data or []
            ),
            "the second request to show its place in the job queue",
        )
        assert server.app.state.jobs.pending_count == 1  # it waits in the job queue, not Gradio's
    finally:
        GATE.set()
    assert isinstance(first.result(timeout=60)[0], str) and isinstance(second.result(timeout=60)[0], str)


def test_http_routes_answer_as_soon_as_serve_returns(server):
    # The routes are added in the app's start-up, before the first connection: no 404 window.
    assert httpx.get(server.url + "healthz", timeout=10).status_code != 404


# --- python app.py ---------------------------------------------------------------------------


def _app_process(args, env_extra=None, log_path=None):
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env_extra or {})}
    env = {k: v for k, v in env.items() if not k.startswith("WHISPER_APP_") or k in (env_extra or {})}
    log = open(log_path, "w") if log_path else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("modle: large-v3\n")
    process = _app_process(["--config", str(config)])
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 2
    assert output.strip().splitlines()[-1].startswith("Configuration error:")
    assert "unknown key 'modle'" in output and "did you mean 'model'" in output
    assert "Traceback" not in output


def test_app_serves_shares_offline_with_login_reports_a_failed_model_and_stops_on_ctrl_c(tmp_path):
    from app import free_port

    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {tmp_path / 'missing.pt'}\ndevice: cpu\nprecision: fp32\nshare: false\n"
        f"data_dir: {tmp_path / 'data'}\n"
    )
    log_path = tmp_path / "app.log"
    process = _app_process(
        ["--config", str(config), "--port", str(port), "--share"],
        env_extra={"WHISPER_APP_AUTH": "ada:secret"},
        log_path=log_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while "Serving on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/config").status_code == 401  # the page needs the login
            assert http.post("/login", data={"username": "ada", "password": "wrong"}).status_code == 400
            assert http.post("/login", data={"username": "ada", "password": "secret"}).status_code == 200
            assert http.get("/config").status_code == 200
        deadline = time.monotonic() + 30
        while "does not exist" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = log_path.read_text()
        assert "does not exist" in log  # the background load failed with its reason...
        assert "No public share link could be created" in log  # ...no internet here...
        assert "without a login" not in log  # ...and the login is set, so no warning
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, log_path.read_text()
    assert "Stopped." in log_path.read_text()


# --- the sidebar's HTML ----------------------------------------------------------------------


def _status(state="ready", error="", loaded=()):
    return EngineStatus(
        model=ModelState(state, "/models/large-v3.pt", error),
        device="cuda:0 (NVIDIA H200), fp16",
        loaded=list(loaded),
        busy_workers=1,
        workers=2,
        queue_length=3,
        queue_size=16,
        devices=[
            DeviceStatus("cuda:0 (NVIDIA H200), fp16", 1, 4, 2, []),
            DeviceStatus("cuda:1 (NVIDIA H200), fp16", 0, 3, 0, []),
        ],
    )


def _gpu(index, used, total=143771.0, above=False):
    return GpuReading(
        index=index,
        name="NVIDIA H200 <x>",
        used_mb=used,
        total_mb=total,
        free_mb=total - used,
        utilization=37.0,
        source="gputil",
        above_threshold=above,
    )


def test_sidebar_shows_each_gpu_the_threshold_warning_and_the_queue():
    from ui.page.sidebar import gpu_panel_html

    snapshot = GpuSnapshot(
        gpus=[_gpu(0, 120000.0, above=True), _gpu(1, 3200.0)],
        reason="",
        process_allocated_mb=3100.0,
        process_reserved_mb=3500.0,
        threshold_mb=100000.0,
    )
    html = gpu_panel_html(snapshot, _status())
    assert "GPU 0 &middot; NVIDIA H200 &lt;x&gt;" in html and "GPU 1" in html  # names are escaped
    assert "120,000 / 143,771 MB used" in html and "Utilisation 37 %" in html
    assert 'class="gpu-warning"' in html and "above the 100,000 MB threshold" in html
    assert "3,100 MB allocated, 3,500 MB reserved" in html
    assert "Workers busy: <b>1 / 2</b>" in html and "Queue: <b>3 / 16</b>" in html
    # each device the jobs are placed on, with its jobs and live windows
    assert "<b>cuda:0 (NVIDIA H200), fp16</b>: 1 running, 2 windows live, 4 done" in html
    assert "<b>cuda:1 (NVIDIA H200), fp16</b>: 0 running, 0 windows live, 3 done" in html


def test_sidebar_without_gpu_says_so_instead_of_numbers():
    from ui.page.sidebar import gpu_panel_html

    snapshot = GpuSnapshot(
        gpus=[],
        reason="No NVIDIA GPU detected, running on CPU",
        process_allocated_mb=0.0,
        process_reserved_mb=0.0,
        threshold_mb=None,
    )
    html = gpu_panel_html(snapshot, _status())
    assert "No NVIDIA GPU detected, running on CPU" in html
    assert "MB used" not in html and "gpu-warning" not in html


def test_model_state_failed_shows_the_reason_and_what_to_do():
    from ui.page.sidebar import model_state_html

    html = model_state_html(
        _status("failed", "Could not download model 'large-v3' <offline>; set model: ...")
    )
    assert "large-v3" in html and "/models/" not in html  # a checkpoint shows by its id (the stem)
    assert "&lt;offline&gt;" in html and "restart" in html
    assert "is loading" in model_state_html(_status("loading"))


def test_release_report_shows_memory_before_and_after():
    from ui.page.sidebar import release_markdown

    before = GpuSnapshot([_gpu(0, 9000.0)], "", 3100.0, 3500.0, None)
    after = GpuSnapshot([_gpu(0, 5500.0)], "", 0.0, 0.0, None)
    text = release_markdown(ReleaseReport(["large-v3"], [], 3500.0, 0.0), before, after)
    assert "Released large-v3" in text and "9,000 MB → 5,500 MB" in text and "3,500 MB → 0 MB" in text


def test_release_report_on_a_cpu_shows_the_process_memory_not_gpu_zeros():
    from ui.page.sidebar import release_markdown

    none = GpuSnapshot([], "No NVIDIA GPU: running on the CPU", 0.0, 0.0, None)
    text = release_markdown(
        ReleaseReport(["/models/small.pt"], [], 0.0, 0.0),
        none,
        none,
        on_gpu=False,
        rss_before_mb=2400.0,
        rss_after_mb=900.0,
    )
    assert "Released small from memory" in text and "(RSS): 2,400 MB → 900 MB" in text
    assert "GPU" not in text and "0 MB → 0 MB" not in text and "->" not in text


def test_release_while_a_job_runs_says_plainly_the_model_is_freed_when_it_finishes():
    """Not "No model was in memory" while the sidebar lists the model as in use."""
    from ui.page.sidebar import release_markdown

    none = GpuSnapshot([], "No NVIDIA GPU: running on the CPU", 0.0, 0.0, None)
    text = release_markdown(ReleaseReport([], ["/models/tiny.en.pt"], 0.0, 0.0), none, none, on_gpu=False)
    assert "No model was in memory" not in text
    assert (
        "Nothing was released yet: tiny.en is in use by a running transcription and will be released as soon "
        "as it finishes." in text
    )
    both = release_markdown(ReleaseReport(["small"], ["tiny.en"], 0.0, 0.0), none, none, on_gpu=False)
    assert "Released small from memory.** tiny.en is in use" in both


def test_model_state_names_the_model_picked_not_the_default():
    from ui.page.sidebar import model_state_html

    status = _status()  # the default, /models/large-v3.pt, is ready; nothing else is resident
    html = model_state_html(status, "small")
    assert "<b>small</b>" in html and "large-v3" not in html and "loaded when you transcribe" in html
    assert "large-v3</b> is ready" in model_state_html(status, "/models/large-v3.pt")


def test_timestamps_format():
    from ui.page.render import format_timestamp

    assert format_timestamp(1.5) == "00:01.500"
    assert format_timestamp(3723.25) == "1:02:03.250"


def test_the_page_never_hands_out_the_model_s_server_path(server, micro_checkpoint, client, jfk):
    """The drop-down offers model ids (the checkpoint's stem), as /v1/models does: Gradio
    sends the page's whole configuration to every browser."""
    import httpx

    config = httpx.get(server.url.rstrip("/") + "/config", timeout=30).text
    assert str(micro_checkpoint.parent) not in config and micro_checkpoint.stem in config
    _, files, details = client.predict(handle_file(str(jfk)), api_name="/transcribe")
    assert str(micro_checkpoint.parent) not in details
    result = next(Path(f) for f in files if f.endswith(".json")).read_text(encoding="utf-8")
    assert str(micro_checkpoint.parent) not in result and '"model": "micro"' in result
    with pytest.raises(Exception, match="not in the list of choices"):  # the drop-down takes ids only
        client.predict(handle_file(str(jfk)), model=str(micro_checkpoint), api_name="/transcribe")
    _, files, details = client.predict(handle_file(str(jfk)), model="micro", api_name="/transcribe")
    assert "model micro" in details
