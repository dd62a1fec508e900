"""The page's rough edges, each in a real browser (Debian's headless Chromium through Playwright's
Python package, as tests/test_app_browser.py): a phone-width screen (in dark mode too: whole
drop-down texts, the sidebar's arrow whole on screen), dark mode, the banner naming the model
the user picked, a Recent jobs table that fits its box with whole error messages, a machine
without a GPU, cancelling a running job, a refusal that stays on screen beside the button, a
second run that clears the first one's result, and a third tab waiting in the engine's queue
(a fourth refused with "queue full", then taking the third's place once it cancels its
waiting job).

Each state's screenshot goes to tests/.artifacts/; with UPDATE_SCREENSHOT=1 it also replaces
the copy in docs/ that the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid

import pytest

from browser import ARTIFACTS, DESKTOP, launch, needs_chromium, playwright  # noqa: F401 (a fixture)
from conftest import JFK, LONG_11_MIN, ROOT, DecodeGate, app_server, shared_audio

pytestmark = needs_chromium

LONG_5_MIN = LONG_11_MIN.parent / "lj050_0159_5min.mp3"  # long enough that jobs overlap and run several steps
PHONE = {"width": 390, "height": 844}
GATE = DecodeGate(timeout_s=120)  # decoding waits on it: a test holds jobs running while it looks
LONG_ERROR = (
    "The recording 'quarterly-board-meeting-minutes-final-v2-recorded-on-the-phone.m4a' is cut off: "
    "ffmpeg stopped at 12:31 of 58:02 (Invalid data found when processing input); upload the whole file "
    "again, or convert it first with: ffmpeg -i meeting.m4a meeting.wav"
)


@pytest.fixture(scope="module")
def second_checkpoint(checkpoint_dir):
    from checkpoints import write_checkpoint

    return write_checkpoint(checkpoint_dir / "micro-b.pt", "micro", seed=1)


@pytest.fixture(scope="module")
def server(micro_checkpoint, second_checkpoint, tmp_path_factory):
    # Two workers and room for one waiting job: a third tab waits, a fourth is refused.
    with app_server(
        micro_checkpoint,
        tmp_path_factory.mktemp("page") / "data",
        before_step=GATE,
        load_first=False,
        models=[str(second_checkpoint)],
        workers=2,
        queue_size=1,
    ) as server:
        yield server


@pytest.fixture
def browser(playwright, tmp_path):
    context = launch(playwright, tmp_path / "profile")
    yield context
    context.close()


def open_page(browser, url, viewport=DESKTOP, query=""):
    page = browser.new_page()
    page.set_viewport_size(viewport)
    page.goto(url + query)
    page.wait_for_selector("#gpu-panel", state="attached")
    page.wait_for_selector("#model-state")
    return page


def screenshot(page, name, locator=None):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.mouse.move(0, 0)
    page.wait_for_timeout(700)  # toasts and the sidebar slide in
    (locator or page).screenshot(path=str(shot))
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / name)


def upload(page, path):
    page.set_input_files("#audio-input input[type=file]", str(path))
    page.locator("#audio-input button[aria-label='Play']").wait_for()


def wait_transcript(page):
    page.wait_for_function("document.querySelector('#transcript textarea').value.length > 0")
    page.wait_for_function("document.querySelectorAll('#downloads a').length >= 4")


def notice(page, text):
    """The refusal under the Transcribe button, once it says `text`."""
    shown = page.locator("#transcribe-notice .notice-error", has_text=text)
    shown.wait_for()
    return shown


def error_badges(page):
    """Gradio's red "Error" status badges still on screen (the text of each, to show in a failure)."""
    return page.evaluate("""() => [...document.querySelectorAll('[data-testid=status-tracker] .error, span.error')]
        .filter(e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')
        .map(e => `${e.closest('[id]')?.id}: ${e.innerText}`)""")


def overflowing(page, selector):
    """Elements inside `selector` whose content is wider than their box (hidden behind a scroll)."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector + ' *')]
        .filter(e => e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
        .map(e => `${e.tagName}.${e.className} ${e.scrollWidth}>${e.clientWidth}`)""",
        selector,
    )


def until(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_phone_width_sidebar_is_a_drawer_with_its_arrow_on_screen(browser, server):
    page = open_page(browser, server.url, PHONE)
    sidebar, toggle = page.locator("#sidebar"), page.locator("#sidebar .toggle-button")
    # Starts closed on a phone: the page is there to use, the arrow at the left edge.
    page.wait_for_function("!document.querySelector('#sidebar').classList.contains('open')")
    page.wait_for_timeout(500)  # the slide-out transition
    assert page.locator("#transcribe-button").is_visible()
    box = toggle.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
    screenshot(page, "page-phone.png")

    toggle.click()
    page.wait_for_function("document.querySelector('#sidebar').classList.contains('open')")
    page.wait_for_timeout(500)
    panel = sidebar.bounding_box()
    box = toggle.bounding_box()
    # the page shows beside it
    assert panel["x"] >= -1 and panel["x"] + panel["width"] <= 0.86 * PHONE["width"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]  # the close arrow entirely on screen
    assert sidebar.locator("#gpu-panel").is_visible()
    screenshot(page, "page-phone-sidebar.png")
    toggle.click()
    page.wait_for_function("!document.querySelector('#sidebar').classList.contains('open')")


def test_phone_in_dark_mode_shows_whole_choices_and_the_whole_sidebar_arrow(browser, server):
    page = open_page(browser, server.url, PHONE, "?__theme=dark")
    assert page.evaluate("document.body.classList.contains('dark')")
    page.wait_for_function("!document.querySelector('#sidebar').classList.contains('open')")
    page.wait_for_timeout(500)  # the slide-out transition
    # The drop-downs show their whole choice ("Detect automatically", not "Detect automa").
    for selector in ("#language input", "#model input"):
        assert page.input_value(selector)
        width = page.evaluate(
            "(s) => { const e = document.querySelector(s); return [e.scrollWidth, e.clientWidth]; }", selector
        )
        assert width[0] <= width[1], (selector, width)
    assert page.input_value("#language input") == "Detect automatically"
    assert overflowing(page, "#timestamps") == []  # its label is not cut either
    # The closed sidebar's arrow is a whole button inside the screen: not flush with the left
    # edge with its left side missing (Gradio's tab, which reads as cut off in dark mode).
    toggle = page.locator("#sidebar .toggle-button")
    box = toggle.bounding_box()
    assert box["x"] > 0 and box["x"] + box["width"] <= PHONE["width"], box
    assert toggle.evaluate("e => parseFloat(getComputedStyle(e).borderLeftWidth)") >= 1
    title = page.locator("#page-intro h1").bounding_box()  # beside the title, not over it
    text_left = page.evaluate("""() => { const h = document.querySelector('#page-intro h1');
        const r = document.createRange(); r.selectNodeContents(h); return r.getBoundingClientRect().left; }""")
    assert text_left >= box["x"] + box["width"], (title, box, text_left)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(page, "page-phone-dark.png")


def test_a_refusal_stays_beside_the_button_until_the_next_action(browser, server, tmp_path):
    page = open_page(browser, server.url)
    fake = tmp_path / "notes.mp3"  # a text file with an audio name
    fake.write_text("minutes of the meeting, typed, not recorded\n" * 20)
    upload(page, fake)
    page.click("#transcribe-button")
    shown = notice(page, "not an audio or video file")
    assert "notes.mp3" in shown.inner_text()
    page.wait_for_timeout(10_000)  # a toast would have faded by now
    assert shown.is_visible() and "notes.mp3" in shown.inner_text()
    assert error_badges(page) == []  # no empty red "Error" on the transcript or the downloads
    assert page.locator(".toast-body").count() == 0  # said once, under the button
    screenshot(page, "page-error.png")

    # A field out of range: the message names it, and replaces the last one.
    page.locator("#advanced-options button").first.click()
    field = page.locator("#temperature input")
    field.fill("1.5")
    field.press("Tab")
    page.click("#transcribe-button")
    notice(page, "Temperature: must be a number from 0 to 1")
    assert "notes.mp3" not in page.inner_text("#transcribe-notice") and error_badges(page) == []
    field.fill("")
    field.press("Tab")

    # A new recording clears the message; the page works on.
    page.locator("#audio-input button[aria-label='Clear']").click()
    upload(page, shared_audio(JFK))
    page.wait_for_function("document.querySelector('#transcribe-notice').innerText.trim() === ''")
    page.click("#transcribe-button")
    wait_transcript(page)
    assert page.inner_text("#transcribe-notice").strip() == "" and error_badges(page) == []


def test_a_new_run_clears_the_previous_result(browser, server):
    page = open_page(browser, server.url)
    upload(page, shared_audio(JFK))
    page.click("#transcribe-button")
    wait_transcript(page)
    page.locator("#segments .segment").first.wait_for()
    GATE.clear()  # the second run holds in its first decoding step
    try:
        page.click("#transcribe-button")
        progress_text(page, "Transcribing").wait_for()
        # Nothing of the first run is left under the progress: no summary to read through it,
        # no segment to click, no file of the previous result to download.
        assert page.input_value("#transcript textarea") == ""
        assert page.locator("#segments .segment").count() == 0
        assert page.locator("#downloads a").count() == 0
        assert "Language:" not in page.inner_text("#details")  # the summary line
        screenshot(page, "page-rerun.png")
    finally:
        GATE.set()
    wait_transcript(page)
    page.locator("#segments .segment").first.wait_for()


def _contrast(page, selector):
    """WCAG contrast ratio of an element's text against the background of the nearest box that has one."""
    return page.evaluate(
        """(selector) => {
        const rgb = s => s.match(/[\\d.]+/g).slice(0, 4).map(Number);
        const lum = ([r, g, b]) => { const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
                                     return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
        const el = document.querySelector(selector);
        let box = el, bg = null;
        while (box) { const c = rgb(getComputedStyle(box).backgroundColor); if (c.length < 4 || c[3] > 0) { bg = c; break; } box = box.parentElement; }
        const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(bg)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05); }""",
        selector,
    )


def test_dark_mode_banner_is_legible(browser, server):
    page = open_page(browser, server.url, DESKTOP, "?__theme=dark")
    page.wait_for_selector("#model-state.state-ready")
    assert page.evaluate("document.body.classList.contains('dark')")
    for selector in ("#model-state b", "#model-state"):
        assert _contrast(page, selector) >= 4.5, selector  # WCAG AA for normal text
    screenshot(page, "page-dark.png")


def pick_model(page, label):
    page.locator("#model input").click()
    page.locator("[role=option]", has_text=label).first.click()  # "micro" comes before "micro-b"


def test_banner_names_the_model_the_user_picked(browser, server):
    page = open_page(browser, server.url)
    banner = page.locator("#model-state")
    default_only = re.compile(r"\bmicro\b(?!-)")  # the default's id, "micro", not "micro-b"
    banner.filter(has_text=default_only).wait_for()
    pick_model(page, "micro-b")
    banner.filter(has_text="micro-b").wait_for()
    assert not default_only.search(banner.inner_text())
    page.wait_for_timeout(2500)  # a sidebar refresh (every 2 s) must not put the default back
    assert "micro-b" in banner.inner_text()

    upload(page, shared_audio(JFK))
    page.click("#transcribe-button")
    wait_transcript(page)
    assert "model micro-b" in page.inner_text("#details")
    banner.filter(has_text="micro-b is ready").wait_for()
    screenshot(page, "page-model-picked.png")
    pick_model(page, "micro")
    banner.filter(has_text=re.compile(r"\bmicro is ready")).wait_for()


def test_recent_jobs_fit_their_box_and_show_whole_errors(browser, server):
    from jobs.store import JobRecord

    page = open_page(browser, server.url)
    upload(page, shared_audio(JFK))
    page.click("#transcribe-button")
    wait_transcript(page)
    store = server.app.state.jobs.store
    done = next(r for r in store.recent(None, 50, any_owner=True) if r.name == "jfk.flac" and r.owner)
    # A job of this browser that failed with a long message (as a cut-off upload does).
    failed = JobRecord(
        id=uuid.uuid4().hex[:12],
        created_at=time.time(),
        status="failed",
        source="page",
        owner=done.owner,
        name="quarterly-board-meeting-minutes-final-v2-recorded-on-the-phone.m4a",
        error=LONG_ERROR,
        error_type="TruncatedAudio",
        finished_at=time.time(),
    )
    store.add(failed)

    for viewport, name in ((DESKTOP, "page-recent-jobs.png"), (PHONE, "page-recent-jobs-phone.png")):
        if viewport is PHONE:  # the same browser (so the same jobs) on a phone-width screen
            page = open_page(browser, server.url, PHONE)
            page.wait_for_function("!document.querySelector('#sidebar').classList.contains('open')")
        page.locator("#recent-jobs button").first.click()  # open the accordion
        page.click("#recent-jobs-refresh")
        table = page.locator("#recent-jobs-table")
        table.filter(has_text="ffmpeg -i meeting.m4a").wait_for()
        text = table.inner_text()
        assert " ".join(LONG_ERROR.split()) in " ".join(text.split())  # the whole message, not 120 characters
        assert done.id in text and failed.id in text and "jfk.flac" in text
        assert overflowing(page, "#recent-jobs-table") == [], viewport
        table_box, box = table.bounding_box(), page.locator("#recent-jobs").bounding_box()
        assert table_box["x"] + table_box["width"] <= box["x"] + box["width"] + 1
        page.locator("#recent-jobs").scroll_into_view_if_needed()
        screenshot(page, name, page.locator("#recent-jobs"))


def test_without_a_gpu_the_sidebar_says_so_and_releases_model_memory(browser, server):
    page = open_page(browser, server.url)
    sidebar = page.locator("#sidebar")
    button = page.locator("#release-button")
    if server.engine.plan.is_cuda:
        assert "GPU memory" in sidebar.inner_text() and button.inner_text() == "Release GPU memory"
        return
    page.wait_for_selector("#model-state.state-ready")
    text = sidebar.inner_text()
    assert "No NVIDIA GPU: running on the CPU" in text and "MB of RAM" in text
    assert "GPU memory" not in text  # neither the heading nor the button talk of GPU memory
    assert button.inner_text().strip() == "Release model memory"
    button.click()
    report = page.locator("#release-report", has_text="Released")
    report.wait_for()
    words = report.inner_text()
    assert "Released" in words and "micro" in words and "from memory" in words
    assert "This process's memory (RSS):" in words and "→" in words
    assert "0 MB → 0 MB" not in words and "0 MB -> 0 MB" not in words and "GPU" not in words
    page.wait_for_function("document.querySelector('#model-state').innerText.includes('released')")
    screenshot(page, "page-no-gpu-release.png", page.locator("#sidebar"))
    # The next transcription loads the model again.
    upload(page, shared_audio(JFK))
    page.click("#transcribe-button")
    wait_transcript(page)


def progress_text(page, text):
    return page.get_by_text(text).first


def test_cancel_a_running_job_and_the_app_keeps_serving(browser, server):
    long = shared_audio(LONG_5_MIN)
    page = open_page(browser, server.url)
    cancel = page.locator("#cancel-button")
    cancel.click()
    page.locator(".toast-body", has_text="no transcription to cancel").wait_for()
    page.locator("[data-testid=toast-close]").first.click()
    upload(page, long)
    GATE.clear()  # the job starts and holds in its first decoding step
    try:
        page.click("#transcribe-button")
        progress_text(page, "Transcribing").wait_for()
        assert server.engine.status().busy_workers == 1
        cancel.click()
        page.locator(".toast-body", has_text="stops after the current decoding step").wait_for()
        progress_text(page, "Cancelling").wait_for()
    finally:
        GATE.set()  # the step finishes; the job stops before the next one
    page.locator("#details", has_text="Cancelled").wait_for()
    page.locator(".toast-body", has_text="cancelled").wait_for()
    assert page.input_value("#transcript textarea") == ""
    details = page.inner_text("#details")
    assert re.search(r"stopped after \d+ of \d+ s of audio", details), details
    screenshot(page, "page-cancelled.png")
    stored = [
        r for r in server.app.state.jobs.store.recent(None, 50, any_owner=True) if r.name == LONG_5_MIN.name
    ]
    assert stored and stored[0].status == "cancelled"
    until(lambda: server.engine.status().busy_workers == 0, "the worker to be free")

    page.locator("#audio-input button[aria-label='Clear']").click()
    upload(page, shared_audio(JFK))
    page.click("#transcribe-button")
    wait_transcript(page)
    assert "-->" in page.input_value("#transcript textarea")


def test_a_third_tab_sees_its_place_in_the_job_queue_and_a_fourth_is_refused(browser, server):
    jfk, long = shared_audio(JFK), shared_audio(LONG_5_MIN)
    engine, jobs = server.engine, server.app.state.jobs
    tabs = [open_page(browser, server.url) for _ in range(4)]
    for tab, audio in zip(tabs, (long, long, jfk, jfk)):
        upload(tab, audio)
    GATE.clear()
    try:
        for tab in tabs[:2]:
            tab.click("#transcribe-button")
        until(lambda: engine.status().busy_workers == 2, "two jobs running")
        third, fourth = tabs[2], tabs[3]
        third.click("#transcribe-button")
        progress_text(third, "Waiting in queue: position 1").wait_for()
        assert jobs.pending_count == 1  # it waits in the job queue, not Gradio's
        assert third.get_by_text("queue: 1/1").count() == 0
        screenshot(third, "page-third-tab-waiting.png")

        fourth.click("#transcribe-button")
        notice(fourth, "queue is full")
        assert error_badges(fourth) == []
        screenshot(fourth, "page-queue-full.png")
        assert jobs.pending_count == 1  # the refused one left nothing behind

        # The third tab gives up: its waiting job is cancelled at once, which makes room...
        third.click("#cancel-button")
        third.locator("#details", has_text="Cancelled").wait_for()
        assert "before it started" in third.inner_text("#details")
        until(lambda: jobs.pending_count == 0, "the cancelled job to leave the queue")
        # ... and the fourth, trying again, now waits in its place (the old message gone).
        fourth.click("#transcribe-button")
        progress_text(fourth, "Waiting in queue: position 1").wait_for()
        assert fourth.inner_text("#transcribe-notice").strip() == ""
    finally:
        GATE.set()
    for tab in (tabs[0], tabs[1], fourth):  # nobody that was accepted (and not cancelled) is dropped
        wait_transcript(tab)
    assert third.input_value("#transcript textarea") == ""
