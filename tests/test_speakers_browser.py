"""Speakers on the page, in a real browser (headless Chromium through Playwright's Python
package, as tests/test_transcript_browser.py), on real weights (tiny.en and the GE2E speaker
encoder): the Speakers option, a two-speaker recording's turns in two colours under their
labels, renaming A to "Ada" in the segments view, the transcript and every download, the
names kept with the job so that Recent jobs shows it again with its option and names after a
reload, and the colours legible in the dark theme too.

The recording is built in the test from two LibriSpeech readers (tests/two_speakers.py). The
screenshot of the renamed transcript goes to tests/.artifacts/speakers-page.png; with
UPDATE_SCREENSHOT=1 also to docs/, for the README.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from browser import ARTIFACTS, DESKTOP, launch, needs_chromium, playwright  # noqa: F401 (a fixture)
from conftest import ROOT, app_server
from two_speakers import NAME, needs_speaker_encoder, speaker_of, two_speakers

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(tiny_en_model_dir, tmp_path_factory):
    needs_speaker_encoder()
    with app_server(
        tiny_en_model_dir,
        tmp_path_factory.mktemp("speakers-page") / "data",
        vad=True,
        max_new_tokens=224,
        workers=1,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return two_speakers(tmp_path_factory.mktemp("two-speakers"))


@pytest.fixture
def browser(playwright, tmp_path):
    context = launch(playwright, tmp_path / "profile")
    yield context
    context.close()


def open_page(browser, server, query=""):
    page = browser.new_page()
    page.goto(server.url + query)
    page.wait_for_selector("#gpu-panel", state="attached")
    page.wait_for_selector("#model-state.state-ready")
    return page


def choose(page, elem_id, option):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def download(page, suffix, links="#downloads a") -> str:
    hrefs = page.eval_on_selector_all(links, "links => links.map(a => a.href)")
    href = next(h for h in hrefs if h.split("?")[0].endswith(suffix))
    response = page.request.get(href)
    assert response.ok, href
    return response.text()


def name_field_of(page):
    return page.locator("#speaker-name input, #speaker-name textarea").first


def turns(page) -> list[tuple[str, str]]:
    """(label, label's background colour) of each turn of the segments view."""
    return page.eval_on_selector_all(
        "#segments .turn",
        "turns => turns.map(t => { const l = t.querySelector('.speaker-label');"
        " return [l.innerText, getComputedStyle(l).backgroundColor]; })",
    )


CONTRAST_JS = """(label) => {
    const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const lum = ([r, g, b]) => { const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
                                 return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const style = getComputedStyle(label);
    const [a, b] = [lum(rgb(style.color)), lum(rgb(style.backgroundColor))].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05); }"""


def legible(page) -> list[float]:
    """WCAG contrast of each speaker label's text on its colour."""
    return [label.evaluate(CONTRAST_JS) for label in page.locator("#segments .speaker-label").all()]


def screenshot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    # The whole page in one tall viewport (a full-page shot draws the sticky sidebar mid-page).
    page.set_viewport_size({"width": DESKTOP["width"], "height": 1950})
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot))
    page.set_viewport_size(DESKTOP)
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / name)


def test_speakers_in_colour_renamed_in_every_download_and_kept_with_the_job(browser, server, recording):
    path, spans = recording
    page = open_page(browser, server)
    assert page.input_value("#speakers input") == "Off"  # a plain transcript unless asked
    assert not page.locator("#speaker-panel").first.is_visible()
    choose(page, "speakers", "2")
    page.set_input_files("#audio-input input[type=file]", str(path))
    page.locator("#audio-input button[aria-label='Play']").wait_for()
    page.click("#transcribe-button")
    page.locator("#segments .turn").first.wait_for(timeout=600_000)
    page.wait_for_function("document.querySelectorAll('#downloads a').length >= 6")  # rttm too

    # Each turn under its speaker's label; the two speakers in two colours, legible.
    shown = turns(page)
    assert [label for label, _ in shown] == ["A", "B", "A"], shown
    colours = dict(shown)
    assert colours["A"] != colours["B"]
    assert min(legible(page)) >= 4.5
    assert "2 speakers" in page.inner_text("#details")
    stored = json.loads(download(page, ".json"))
    for segment in stored["segments"]:  # reader 1089 is A, 2412 is B
        assert (
            segment["speaker"]
            == {"1089": "A", "2412": "B"}[speaker_of(segment["start"], segment["end"], spans)]
        )
    words = [(w["word"], w["start"], w["end"]) for s in stored["segments"] for w in s["words"]]
    lines = page.input_value("#transcript textarea").splitlines()
    assert lines and all("]  A: " in line or "]  B: " in line for line in lines), lines

    # Rename A to Ada: the view, the transcript and every download follow; the words do not change.
    assert page.locator("#speaker-panel").first.is_visible()
    assert page.input_value("#speaker-choice input") == "A"
    name_field = name_field_of(page)
    name_field.fill("Ada")
    page.click("#rename-button")
    page.locator("#segments .speaker-label", has_text="Ada").first.wait_for()
    renamed = turns(page)
    assert [label for label, _ in renamed] == ["Ada", "B", "Ada"]
    assert dict(renamed)["Ada"] == colours["A"] and dict(renamed)["B"] == colours["B"]  # A keeps its colour
    assert page.input_value("#speaker-choice input") == "A → Ada"
    text = page.input_value("#transcript textarea")
    assert "]  Ada: " in text and "]  A: " not in text and "]  B: " in text
    page.wait_for_function(
        "() => [...document.querySelectorAll('#downloads a')].some(a => a.href.endsWith('.srt'))"
    )
    srt = download(page, ".srt")
    cues = [block.split("\n")[2] for block in srt.strip().split("\n\n")]
    assert cues[0].startswith("[Ada] ") and any(c.startswith("[B] ") for c in cues)
    assert not any(c.startswith("[A] ") for c in cues)
    assert "<v Ada>" in download(page, ".vtt")
    txt = download(page, ".txt")
    assert txt.startswith("Ada: ") and "\nB: " in txt
    assert {line.split()[7] for line in download(page, ".rttm").splitlines()} == {"Ada", "B"}
    renamed_json = json.loads(download(page, ".json"))
    assert [(w["word"], w["start"], w["end"]) for s in renamed_json["segments"] for w in s["words"]] == words
    assert {s["speaker"] for s in renamed_json["segments"]} == {"Ada", "B"}
    screenshot(page, "speakers-page.png")

    # A refused name says why and changes nothing.
    choose(page, "speaker-choice", "B")
    page.wait_for_function(  # picking B puts its name (none yet) in the field
        "document.querySelector('#speaker-name input, #speaker-name textarea').value === ''"
    )
    name_field.fill("x" * 41)
    page.click("#rename-button")
    page.locator("#speaker-notice", has_text="at most 40").wait_for()
    assert [label for label, _ in turns(page)] == ["Ada", "B", "Ada"]

    # The names are the job's: after a reload, Recent jobs shows it with its option and names.
    (record,) = [r for r in server.app.state.jobs.store.recent(limit=5, any_owner=True) if r.name == NAME]
    assert record.speaker_names == {"A": "Ada"} and record.options.num_speakers == 2
    page.close()
    page = open_page(browser, server, "?__theme=dark")
    assert page.input_value("#speakers input") == "Off"
    page.locator("#recent-jobs button").first.click()
    page.locator("#recent-job-choice input").click()
    page.locator("[role=option]", has_text=NAME).first.click()
    page.click("#recent-job-open")
    page.locator("#segments .speaker-label", has_text="Ada").first.wait_for()
    assert page.input_value("#speakers input") == "2"
    assert [label for label, _ in turns(page)] == ["Ada", "B", "Ada"]
    assert page.input_value("#speaker-choice input") == "A → Ada"
    assert name_field_of(page).input_value() == "Ada"
    assert min(legible(page)) >= 4.5  # the dark theme's palette
    assert download(page, ".txt").startswith("Ada: ")
    page.wait_for_function("document.querySelectorAll('#recent-job-files a').length >= 6")
    assert download(page, ".srt", "#recent-job-files a").split("\n")[2].startswith("[Ada] ")
