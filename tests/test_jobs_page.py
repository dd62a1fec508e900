"""ui.page.recent_jobs: page recordings become durable jobs owned by a browser id or a login; the list
shows each owner only their own jobs, survives a restart, and downloads a result again."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pytest
from gradio.context import LocalContext

from conftest import JFK, fast_settings, shared_audio
from engine import Engine, JobOptions
from jobs.manager import JobManager
from jobs.sqlite_store import SqliteJobStore
from ui.page.recent_jobs import RecentJobs


@pytest.fixture(scope="module")
def engine(micro_checkpoint):
    engine = Engine(fast_settings(micro_checkpoint, language="en"))
    yield engine
    engine.close()


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def recent(engine, data_dir):
    jobs = JobManager(engine, SqliteJobStore(data_dir)).start()
    recent = RecentJobs(jobs)
    yield recent
    recent.cleanup()
    jobs.close()


def submit_from_page(recent: RecentJobs, request: gr.Request, audio: Path):
    """What the page's Transcribe handler does: submit while Gradio holds the request."""
    token = LocalContext.request.set(request)
    try:
        return recent.submit(str(audio), JobOptions(language="en"), name=audio.name)
    finally:
        LocalContext.request.reset(token)


def wait_done(recent: RecentJobs, job_id: str) -> None:
    deadline = time.monotonic() + 60
    while not recent.jobs.store.get(job_id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_each_browser_sees_its_own_jobs_and_downloads_them_again(recent):
    jfk = shared_audio(JFK)
    mine, theirs = gr.Request(session_hash="tab-1"), gr.Request(session_hash="tab-2")
    my_id, rows, _ = recent._on_load("", mine)  # first visit: a new id for this browser
    their_id, _, _ = recent._on_load("", theirs)
    assert my_id and their_id and my_id != their_id and rows == []

    handle = submit_from_page(recent, mine, jfk)
    handle.result(timeout=60)
    wait_done(recent, handle.id)
    assert recent.jobs.store.get(handle.id).owner == f"browser:{my_id}"

    # A reload is a new session with the id the browser kept.
    rows, choices = recent._on_refresh(my_id, gr.Request(session_hash="tab-1-reloaded"))
    assert [row[-1] for row in rows] == [handle.id] and rows[0][1] == "jfk.flac" and rows[0][2] == "done"
    assert choices.constructor_args["choices"] == [(choices.constructor_args["choices"][0][0], handle.id)]
    assert recent._on_refresh(their_id, theirs)[0] == []  # nobody else's jobs

    files = recent._on_choice(handle.id, my_id, mine)
    assert sorted(Path(f).name for f in files) == ["jfk.json", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.vtt"]
    assert all(Path(f).stat().st_size > 0 for f in files)
    assert recent._on_choice(handle.id, their_id, theirs) == []  # not their job: no files

    assert not recent.delete(handle.id, f"browser:{their_id}")  # not theirs to delete either
    table, _, files_left = recent._delete_event(handle.id, my_id, mine)
    assert files_left == [] and "jfk.flac" not in table
    assert recent.jobs.get(handle.id) is None and recent.jobs.store.get(handle.id) is None
    assert not (recent.files_root / handle.id).exists()  # the download copies are gone too
    assert recent._on_refresh(my_id, mine)[0] == []


def test_a_login_owns_jobs_across_browsers(recent):
    jfk = shared_audio(JFK)
    handle = submit_from_page(recent, gr.Request(username="ann", session_hash="laptop"), jfk)
    handle.result(timeout=60)
    wait_done(recent, handle.id)
    rows, _ = recent._on_refresh("some-other-browser", gr.Request(username="ann", session_hash="phone"))
    assert [row[-1] for row in rows] == [handle.id]
    assert recent._on_refresh("", gr.Request(username="bob", session_hash="x"))[0] == []


def test_the_list_survives_a_restart(engine, data_dir, recent):
    jfk = shared_audio(JFK)
    request = gr.Request(session_hash="tab")
    browser_id, _, _ = recent._on_load("", request)
    handle = submit_from_page(recent, request, jfk)
    handle.result(timeout=60)
    wait_done(recent, handle.id)
    secret = recent.secret
    recent.jobs.close()

    restarted = RecentJobs(JobManager(engine, SqliteJobStore(data_dir)).start())
    try:
        assert restarted.secret == secret  # the browser's encrypted id stays readable
        rows, _ = restarted._on_refresh(browser_id, gr.Request(session_hash="after-restart"))
        assert [row[-1] for row in rows] == [handle.id]
    finally:
        restarted.cleanup()
        restarted.jobs.close()


def test_renders_inside_a_page(recent):
    with gr.Blocks() as demo:
        button = gr.Button("Transcribe")
        recent.attach(button.click(lambda: None))  # what build_page's `extra` hook does
    ids = {c.get("props", {}).get("elem_id") for c in demo.get_config_file()["components"]}
    assert {"recent-jobs", "recent-jobs-table", "recent-job-choice", "recent-job-files"} <= ids


def test_the_table_escapes_cells_and_keeps_whole_errors():
    from ui.page.recent_jobs import table_html

    error = "failed: " + "the recording is cut off <at 12:31> " * 10
    html = table_html([["2026-12-02 10:00", "<b>x</b>.m4a", error, "", "0123456789ab"]])
    assert "&lt;b&gt;x&lt;/b&gt;.m4a" in html and "<b>x</b>" not in html
    assert html.count("cut off &lt;at 12:31&gt;") == 10  # not cut at 120 characters
    assert html.index("x&lt;/b&gt;.m4a") < html.index("2026-12-02")  # the file first, then its status
    assert "No recordings yet" in table_html([])
