"""The page's transcript views and options in a real browser (headless Chromium through
Playwright's Python package, as tests/test_app_browser.py): the segments view with each
segment's start time, a click on a segment or a word playing the recording from there, word
timestamps on the page and in the json download, and the subtitle options shaping the srt.

Random weights (the lively micro checkpoint) are enough here: the engine's word timings and
subtitles are tested on real weights elsewhere; this checks that the page asks for them,
shows them and hands them on. The screenshot of the segments view with word times goes to
tests/.artifacts/page-segments.png; with UPDATE_SCREENSHOT=1 also to docs/, for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from browser import ARTIFACTS, launch, needs_chromium, playwright  # noqa: F401 (a fixture)
from conftest import JFK, LONG_11_MIN, ROOT, app_server, shared_audio

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(micro_checkpoint, tmp_path_factory):
    # More tokens than fast_settings' 24, so the 11 s recording gives several segments.
    data_dir = tmp_path_factory.mktemp("transcript") / "data"
    with app_server(micro_checkpoint, data_dir, load_first=False, max_new_tokens=64) as server:
        yield server


@pytest.fixture(scope="module")
def real_server(tiny_en_model_dir, tmp_path_factory):
    """Real tiny.en (skipped where its package is absent): only for the README's screenshot,
    where a random model's one-word segments would show little."""
    data_dir = tmp_path_factory.mktemp("transcript-real") / "data"
    with app_server(tiny_en_model_dir, data_dir, load_first=False, max_new_tokens=224) as server:
        yield server


@pytest.fixture
def page(playwright, server, tmp_path):
    yield from _page(playwright, server, tmp_path)


def _page(playwright, server, tmp_path):
    context = launch(playwright, tmp_path / "profile", ["--autoplay-policy=no-user-gesture-required"])
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("#gpu-panel", state="attached")
    page.wait_for_selector("#model-state.state-ready")
    yield page
    context.close()


def upload(page, path):
    page.set_input_files("#audio-input input[type=file]", str(path))
    page.locator("#audio-input button[aria-label='Play']").wait_for()


def transcribe(page):
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
    page.locator("#segments .segment").first.wait_for()


def advanced(page):
    page.locator("#advanced-options button").first.click()  # open the accordion
    page.locator("#word-timestamps input").wait_for()


def set_number(page, elem_id, value):
    field = page.locator(f"#{elem_id} input")
    field.fill(str(value))
    field.press("Tab")  # Gradio takes a number field's value on blur


def download(page, suffix) -> str:
    """The text of the download whose name ends with `suffix`, fetched as the browser would."""
    hrefs = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.href)")
    href = next(h for h in hrefs if h.split("?")[0].endswith(suffix))
    response = page.request.get(href)
    assert response.ok, href
    return response.text()


def player_time(page) -> float:
    return page.evaluate("window.sttRecordingPlayer() ? window.sttRecordingPlayer().currentTime : -1")


def wait_player_at(page, start, slack=1.5):
    """Until the recording's player stands at `start` (or just after it: it plays on)."""
    page.wait_for_function(
        "([start, slack]) => { const p = window.sttRecordingPlayer();"
        " return p !== null && p.currentTime >= start - 0.05 && p.currentTime <= start + slack; }",
        arg=[start, slack],
        timeout=10_000,
    )


def screenshot(page, name, locator, docs=True):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    locator.screenshot(path=str(shot))
    if docs and os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / name)


def test_click_a_segment_to_play_the_recording_from_its_start(page):
    upload(page, shared_audio(JFK))
    transcribe(page)
    rows = page.locator("#segments .segment")
    assert rows.count() >= 2, page.inner_text("#segments")
    result = json.loads(download(page, ".json"))
    starts = [float(s) for s in rows.evaluate_all("rows => rows.map(r => r.dataset.start)")]
    assert starts == pytest.approx([s["start"] for s in result["segments"]], abs=1e-3)
    # each row: its start as [hh:mm:ss], then its text
    for row, segment in zip(rows.all(), result["segments"]):
        whole = int(segment["start"])
        assert (
            row.locator(".segment-time").inner_text()
            == f"[{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}]"
        )
        assert " ".join(row.locator(".segment-text").inner_text().split()) == " ".join(
            segment["text"].split()
        )
    assert page.locator("#segments .word").count() == 0  # no word timestamps asked
    assert page.input_value("#transcript textarea").count("-->") == len(starts)  # the copyable text stays

    second = starts[1]
    assert second > 0.5
    rows.nth(1).click()
    wait_player_at(page, second)
    assert "current" in rows.nth(1).get_attribute("class")
    # The player's own time display follows (Gradio's waveform shows m:ss).
    shown = f"{int(player_time(page)) // 60}:{int(player_time(page)) % 60:02d}"
    page.locator("#audio-input", has_text=shown).wait_for(timeout=10_000)

    rows.first.press("Enter")  # the keyboard works too
    wait_player_at(page, starts[0])


def test_word_timestamps_on_the_page_and_in_the_json(page):
    upload(page, shared_audio(JFK))
    advanced(page)
    assert not page.is_checked("#word-timestamps input")  # off by default
    page.check("#word-timestamps input")
    transcribe(page)
    page.locator("#segments .word").first.wait_for()

    result = json.loads(download(page, ".json"))
    assert result["segments"]
    for segment in result["segments"]:
        assert segment["words"], segment
        for word in segment["words"]:
            assert segment["start"] - 0.01 <= word["start"] <= word["end"] <= segment["end"] + 0.01, word
    words = [w for s in result["segments"] for w in s["words"] if w["word"].strip()]
    shown = page.locator("#segments .word")
    assert shown.count() == len(words)
    texts = shown.locator(".word-text").all_inner_texts()
    times = shown.locator(".word-time").all_inner_texts()
    assert texts == [w["word"].strip() for w in words]
    assert times == [f"{w['start']:.1f}" for w in words]  # seconds with a tenth (m:ss.s past a minute)
    assert all(
        re.fullmatch(r"\d+:\d\d\.\d{3} – \d+:\d\d\.\d{3}", t)
        for t in shown.evaluate_all("words => words.map(w => w.title)")
    )

    # The srt takes its times from the words: every cue starts with a word.
    srt = download(page, ".srt")
    cue_starts = [_seconds(m) for m in re.findall(r"^(\d\d:\d\d:\d\d,\d\d\d) --> ", srt, re.M)]
    word_starts = {round(w["start"], 2) for w in words}
    assert cue_starts and all(round(t, 2) in word_starts for t in cue_starts), (
        cue_starts,
        sorted(word_starts),
    )

    target = len(words) // 2  # a word in the middle: the player goes to its start
    shown.nth(target).click()
    wait_player_at(page, words[target]["start"])
    page.locator("#segments").scroll_into_view_if_needed()
    page.evaluate("document.querySelector('#segments .segments').scrollTop = 0")
    screenshot(page, "page-segments-random.png", page.locator("#segments").locator(".."), docs=False)


def _seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))


def test_subtitle_options_shape_the_srt(page, server):
    from output import SubtitleOptions, render

    settings = server.engine.settings
    upload(page, shared_audio(JFK))
    advanced(page)
    assert page.input_value("#subtitle-width input") == str(settings.subtitle_max_line_width)
    assert page.input_value("#subtitle-lines input") == str(settings.subtitle_max_lines)
    assert float(page.input_value("#subtitle-seconds input")) == settings.subtitle_max_cue_s
    assert page.is_checked("#subtitle-per-segment input") == settings.subtitle_per_segment
    assert page.is_checked("#vad input") == settings.vad

    # A width too small for words: a message naming the field, nothing transcribed.
    set_number(page, "subtitle-width", 5)
    page.click("#transcribe-button")
    refusal = page.locator("#transcribe-notice .notice-error", has_text="Max characters per line")
    refusal.wait_for()
    assert "from 10 to 200" in refusal.inner_text()
    assert page.input_value("#transcript textarea") == ""

    # Narrow one-line cues of at most 2 s (word timestamps: the random model then writes more segments).
    page.check("#word-timestamps input")
    set_number(page, "subtitle-width", 12)
    set_number(page, "subtitle-lines", 1)
    set_number(page, "subtitle-seconds", 2)
    transcribe(page)
    result = _result(json.loads(download(page, ".json")))
    srt = download(page, ".srt")
    narrow = SubtitleOptions(max_line_width=12, max_lines=1, max_cue_s=2.0)
    assert srt == render(result, "srt", subtitles=narrow)  # the page's choices reached the writer...
    # ... and they make a difference here
    assert srt != render(result, "srt", subtitles=SubtitleOptions.from_settings(settings))
    cues = _cues(srt)
    assert cues and all(len(cue) == 2 for cue in cues)  # one line each
    assert all(len(cue[1]) <= 12 or " " not in cue[1] for cue in cues), cues
    assert all(
        _seconds(cue[0].split(" --> ")[1]) - _seconds(cue[0].split(" --> ")[0]) <= 2.0 + 1e-3 for cue in cues
    )
    assert download(page, ".vtt") == render(result, "vtt", subtitles=narrow)

    # Plain: one cue per segment, whatever its length (the same recording gives the same result).
    page.check("#subtitle-per-segment input")
    plain = render(result, "srt", subtitles=SubtitleOptions(per_segment=True))
    assert plain != srt
    page.click("#transcribe-button")
    # (The previous files go when the run starts; wait for the new srt, then compare.)
    page.wait_for_function(
        "(plain) => { const a = [...document.querySelectorAll('#downloads a')]"
        ".find(a => a.href.endsWith('.srt'));"
        " return a && fetch(a.href).then(r => r.text()).then(t => t === plain); }",
        arg=plain,
        polling=500,
    )
    assert len(_cues(plain)) == len(result.segments)


def _result(data):
    """The json download as a TranscriptionResult."""
    from jobs.store import result_from_dict

    return result_from_dict({k: v for k, v in data.items() if k != "text"})


def _cues(srt: str):
    """srt cues as [timing line, text lines...]."""
    return [block.split("\n")[1:] for block in srt.strip().split("\n\n") if block.strip()]


def test_voice_activity_detection_choice_goes_with_the_job(page, server):
    upload(page, shared_audio(JFK))
    advanced(page)
    wanted = not server.engine.settings.vad
    page.set_checked("#vad input", wanted)
    page.check("#word-timestamps input")
    transcribe(page)
    stored = [r for r in server.app.state.jobs.store.recent(None, 50, any_owner=True) if r.name == JFK.name]
    assert stored[0].options.vad is wanted and stored[0].options.word_timestamps is True


def test_prompt_and_temperature_from_the_advanced_options_go_with_the_job(page, server):
    upload(page, shared_audio(JFK))
    advanced(page)
    assert page.input_value("#prompt textarea") == "" and float(page.input_value("#temperature input")) == 0
    prompt = "President Kennedy's inaugural address, 1961."
    page.fill("#prompt textarea", prompt)
    set_number(page, "temperature", 0.7)
    transcribe(page)
    stored = [r for r in server.app.state.jobs.store.recent(None, 50, any_owner=True) if r.name == JFK.name]
    assert stored[0].options.initial_prompt == prompt and stored[0].options.temperature == (0.7,)
    segments = json.loads(download(page, ".json"))["segments"]
    assert segments and all(s["temperature"] == 0.7 for s in segments), [s["temperature"] for s in segments]


def test_segments_with_word_times_on_real_weights_screenshot(playwright, real_server, tmp_path):
    for page in _page(playwright, real_server, tmp_path):
        upload(page, shared_audio(JFK))
        advanced(page)
        page.check("#word-timestamps input")
        transcribe(page)
        page.locator("#segments .word").first.wait_for()
        text = " ".join(page.locator("#segments .word-text").all_inner_texts()).lower()
        assert "ask not what your country can do for you" in text.replace(",", ""), text
        word = page.locator("#segments .word", has_text="country").first
        start = float(word.get_attribute("data-start"))
        assert 5.0 < start < 11.0
        word.click()
        wait_player_at(page, start)
        page.evaluate("window.sttRecordingPlayer().pause()")
        page.locator("#segments").scroll_into_view_if_needed()
        screenshot(page, "page-segments.png", page.locator("#segments").locator(".."))


PROGRESS_JS = """() => { const m = document.body.innerText.match(/([0-9.]+)\\s*\\/\\s*([0-9.]+)\\s*s of audio/);
    return m ? [parseFloat(m[1]), parseFloat(m[2])] : null; }"""  # the bar's "180/301 s of audio"


def test_progress_moves_from_the_first_seconds_of_a_long_job(playwright, real_server, tmp_path):
    """Issue 19's "Transcribing 0.0 %" for most of the job: the bar now counts the seconds decoded
    inside each window, and a recording's first section starts alone, so the first figure the
    page shows is a small part of the recording. Before, the eight sections' first windows were
    decoded side by side and ended together: the bar stood at 0 for 13 of the job's 24 s."""
    five_minutes = LONG_11_MIN.parent / "lj050_0159_5min.mp3"
    for page in _page(playwright, real_server, tmp_path):
        upload(page, shared_audio(five_minutes))
        page.click("#transcribe-button")
        shown = []  # (seconds of audio done, of in all) as the bar says them, in order
        while not page.evaluate("document.querySelector('#transcript textarea').value.length > 0"):
            reading = page.evaluate(PROGRESS_JS)
            if reading is not None and reading[0] > 0 and (not shown or shown[-1] != tuple(reading)):
                shown.append(tuple(reading))
                if len(shown) == 2:
                    screenshot(page, "page-progress.png", page.locator("body"))
            time.sleep(0.05)
        print(
            f"\nthe bar said, in s of audio: {[done for done, _ in shown]} of {shown[0][1] if shown else '?'}"
        )
        assert shown, "the bar never showed a figure above 0 before the transcript"
        first_done, total = shown[0]
        assert total == pytest.approx(301, abs=1)
        assert first_done < 0.35 * total, f"the first figure shown was {first_done:.0f} of {total:.0f} s"
        assert len(shown) >= 8, f"the bar moved in {len(shown)} steps only"  # 19 on an idle machine
