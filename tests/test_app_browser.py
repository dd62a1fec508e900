"""The page in a real browser: Debian's headless Chromium driven by Playwright's Python package
(never `playwright install`). Uploads a recording, records one through Chromium's fake
microphone, shows an error for a file that is not audio and then works again, reads the GPU
sidebar, releases GPU memory, and takes the README's screenshot.

The screenshot goes to tests/.artifacts/screenshot.png; with UPDATE_SCREENSHOT=1 it also
replaces docs/screenshot.png, the one the README shows.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from browser import ARTIFACTS, launch, needs_chromium, playwright  # noqa: F401 (a fixture)
from conftest import JFK, ROOT, app_server, shared_audio

pytestmark = needs_chromium

JFK_WAV = JFK.with_suffix(".wav")  # Chromium's fake microphone plays a WAV file


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    with app_server(
        micro_checkpoint, tmp_path_factory.mktemp("browser") / "data", load_first=False
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    args = ["--disable-quic", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    if JFK_WAV.is_file():
        args.append(f"--use-file-for-fake-audio-capture={JFK_WAV}")
    context = launch(
        playwright, tmp_path_factory.mktemp("chromium-profile"), args, permissions=["microphone"]
    )
    yield context
    context.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#gpu-panel")
    yield page
    page.close()


def wait_for_audio(page) -> None:
    """Until the recording is in the component (uploaded, or recorded and processed)."""
    page.locator("#audio-input button[aria-label='Play']").wait_for()


def transcribe_and_wait(page) -> str:
    # The transcript, or a refusal (failing here with its text rather than timing out).
    # An earlier refusal still on screen is marked: only a new one (or the transcript) ends the wait.
    page.evaluate("document.querySelector('#transcribe-notice .notice-error')?.setAttribute('data-seen', '')")
    page.click("#transcribe-button")
    page.wait_for_function(
        "document.querySelector('#transcript textarea').value.length > 0"
        " || document.querySelector('#transcribe-notice .notice-error:not([data-seen])') !== null"
    )
    refusals = page.locator("#transcribe-notice .notice-error:not([data-seen])").all_inner_texts()
    assert not refusals, f"the page showed an error: {refusals}"
    page.wait_for_function("document.querySelectorAll('#downloads a').length >= 4")
    return page.input_value("#transcript textarea")


def test_upload_transcribe_download_and_screenshot(page, server):
    jfk = shared_audio(JFK)
    page.set_input_files("#audio-input input[type=file]", str(jfk))
    wait_for_audio(page)
    text = transcribe_and_wait(page)
    assert "-->" in text
    downloads = page.locator("#downloads").inner_text()
    # every result format the API offers
    for name in ("jfk.txt", "jfk.srt", "jfk.vtt", "jfk.tsv", "jfk.json"):
        assert name.split(".")[1] in downloads
    assert "11.0 s of audio" in page.inner_text("#details")

    panel = page.inner_text("#gpu-panel")
    if server.engine.monitor.snapshot().gpus:
        assert "GPU 0" in panel and "MB used" in panel
    else:
        assert "No NVIDIA GPU: running on the CPU" in panel
    assert "Workers busy" in panel and "Loaded models" in panel
    assert "is ready" in page.inner_text("#model-state")

    # Let the sidebar's timer catch up with the finished job, then take the README's picture.
    page.wait_for_function("document.querySelector('#gpu-panel').innerText.includes('Workers busy: 0 /')")
    page.mouse.move(0, 0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "screenshot.png"
    page.screenshot(path=str(shot))
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")


def test_not_audio_shows_the_error_then_a_good_upload_works(page, tmp_path):
    jfk = shared_audio(JFK)
    fake = tmp_path / "minutes.mp3"
    fake.write_text("minutes of the meeting, typed, not recorded\n" * 20)
    page.set_input_files("#audio-input input[type=file]", str(fake))
    wait_for_audio(page)
    page.click("#transcribe-button")
    refusal = page.locator("#transcribe-notice .notice-error", has_text="not an audio or video file")
    refusal.wait_for()
    assert "minutes.mp3" in refusal.inner_text()

    page.locator("#audio-input button[aria-label='Clear']").click()
    page.set_input_files("#audio-input input[type=file]", str(jfk))
    wait_for_audio(page)
    refusal.wait_for(state="detached")  # a new recording: the old message goes
    assert "-->" in transcribe_and_wait(page)


def test_microphone_recording_is_transcribed(page):
    if not JFK_WAV.is_file():
        pytest.skip(f"{JFK_WAV} is absent: Chromium's fake microphone needs a WAV file to play")
    page.click("#audio-input button[aria-label='Record audio']")
    page.locator("#audio-input button:visible", has_text="Record").first.click()
    stop = page.locator("#audio-input button:visible", has_text="Stop").first
    stop.wait_for()  # recording has started (the microphone can take a moment on a busy machine)
    time.sleep(3)  # three seconds of JFK through the fake microphone
    # Stopping uploads the recording; the component then loads it back from the server
    # (a file= request) once it holds it as its value. Wait for that, else a busy machine can
    # press Transcribe before the component holds the recording. (Not any /run/predict: the
    # sidebar's timer answers those every 2 s.)
    with page.expect_response(lambda response: "/gradio_api/file=" in response.url, timeout=30_000):
        stop.click()
    wait_for_audio(page)
    text = transcribe_and_wait(page)
    assert "-->" in text
    details = page.inner_text("#details")
    seconds = float(details.split(" s of audio")[0].split("·")[-1])
    assert 1.0 <= seconds <= 10.0, details  # the recording, not the whole file


def test_release_button_reports_memory_before_and_after(page, server):
    page.click("#release-button")
    report = page.locator("#release-report", has_text="Released")
    report.wait_for()
    text = report.inner_text()  # GPU memory on a GPU; on a CPU the process's RAM, not "0 MB -> 0 MB"
    assert "→" in text and ("reserved" in text if server.engine.plan.is_cuda else "(RSS)" in text)
    page.wait_for_function("document.querySelector('#model-state').innerText.includes('released')")
