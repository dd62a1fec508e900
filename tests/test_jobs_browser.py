"""The page's "Recent jobs" in a real browser (Debian's headless Chromium through Playwright's
Python package, as tests/test_app_browser.py): a transcription appears in the list, is still
there after a reload, its files can be downloaded again, another browser sees none of it, and
Delete forgets it."""

from __future__ import annotations

import pytest

from browser import launch, needs_chromium, playwright  # noqa: F401 (a fixture)
from conftest import JFK, app_server, shared_audio

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    with app_server(micro_checkpoint, tmp_path_factory.mktemp("recent") / "data", load_first=False) as server:
        yield server


def new_browser(playwright, profile):
    """A browser with its own profile: its own localStorage, so its own owner id."""
    return launch(playwright, profile)


def open_recent(page, url):
    page.goto(url)
    page.wait_for_selector("#transcribe-button")
    page.locator("#recent-jobs button").first.click()  # open the accordion
    page.wait_for_selector("#recent-jobs-table")


def test_recent_jobs_survive_a_reload_and_belong_to_their_browser(server, playwright, tmp_path):
    jfk = shared_audio(JFK)
    mine = new_browser(playwright, tmp_path / "mine")
    theirs = new_browser(playwright, tmp_path / "theirs")
    try:
        page = mine.new_page()
        open_recent(page, server.url)
        page.set_input_files("#audio-input input[type=file]", str(jfk))
        page.click("#transcribe-button")
        page.wait_for_function("document.querySelector('#transcript textarea').value.length > 0")
        table = page.locator("#recent-jobs-table")
        table.filter(has_text="jfk.flac").wait_for()  # refreshed after the transcription
        page.wait_for_function("document.querySelector('#recent-jobs-table').innerText.includes('done')")

        page.reload()  # what a closed tab or a reload does: the list comes back from the server
        open_recent(page, server.url)
        page.locator("#recent-jobs-table", has_text="jfk.flac").wait_for()
        page.locator("#recent-job-choice input").click()
        page.locator("[role=option]", has_text="jfk.flac").first.click()
        page.wait_for_function("document.querySelectorAll('#recent-job-files a').length >= 4")
        files = page.locator("#recent-job-files").inner_text()
        assert all(ext in files for ext in ("txt", "srt", "vtt", "tsv", "json"))

        other = theirs.new_page()
        open_recent(other, server.url)
        other.wait_for_timeout(1000)  # the load event has filled the table by now
        assert "jfk.flac" not in other.locator("#recent-jobs-table").inner_text()

        page.click("#recent-job-delete")  # the chosen job: transcript and files forgotten
        page.wait_for_function("!document.querySelector('#recent-jobs-table').innerText.includes('jfk.flac')")
        assert page.locator("#recent-job-files a").count() == 0
        page.reload()
        open_recent(page, server.url)
        page.wait_for_timeout(1000)
        assert "jfk.flac" not in page.locator("#recent-jobs-table").inner_text()
    finally:
        mine.close()
        theirs.close()
