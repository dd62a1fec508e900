"""The page's scripts, run in the browser once the page has loaded (ui/page/wiring.py adds them
to the Blocks' load event): a click on the segments view plays the recording from there; on a
phone the sidebar starts closed."""

from __future__ import annotations

NARROW_PX = 768  # at this width and below Gradio lays the sidebar over the page: it starts closed

# A click (or Enter) on a segment or a word of the segments view plays the recording from its
# `data-start`. Gradio's waveform player (WaveSurfer) plays through an <audio> element that it
# never adds to the page (the one inside #audio-input is a hidden fallback), so the script
# remembers the <audio> elements the page creates and seeks the newest one holding a
# recording: setting its currentTime moves the waveform's cursor and time too. Installed
# once per page load, before any recording is uploaded. `window.sttRecordingPlayer()` gives
# that element (the browser tests read its currentTime).
SEEK_JS = """() => {
  if (window.sttRecordingPlayer) return;
  const created = [];
  const createElement = document.createElement;
  document.createElement = function (tag, options) {
    const element = createElement.call(this, tag, options);
    if (String(tag).toLowerCase() === 'audio') created.push(new WeakRef(element));
    return element;
  };
  const loaded = (a) => a && a.readyState >= 1 && Number.isFinite(a.duration) && a.duration > 0;
  window.sttRecordingPlayer = () => {
    const shown = [...document.querySelectorAll('#audio-input audio')].filter(loaded);
    const made = created.map((ref) => ref.deref()).filter(loaded);
    return [...shown, ...made].pop() || null;
  };
  const play = (target) => {
    const player = window.sttRecordingPlayer();
    const start = parseFloat(target.dataset.start);
    if (!player || !Number.isFinite(start)) return;
    player.currentTime = Math.min(start, player.duration);
    const playing = player.play();
    if (playing) playing.catch(() => {});
    document.querySelectorAll('#segments .current').forEach((e) => e.classList.remove('current'));
    target.closest('.segment')?.classList.add('current');
  };
  document.addEventListener('click', (event) => {
    const target = event.target.closest?.('#segments [data-start]');
    if (target) play(target);
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    const target = event.target.closest?.('#segments .segment[data-start]');
    if (target) { event.preventDefault(); play(target); }
  });
}"""

# On a phone the open sidebar covers the page: close it once the page has loaded.
CLOSE_SIDEBAR_WHEN_NARROW_JS = f"""() => {{
  if (!window.matchMedia('(max-width: {NARROW_PX}px)').matches) return;
  const sidebar = document.querySelector('#sidebar');
  if (sidebar && sidebar.classList.contains('open')) sidebar.querySelector('.toggle-button')?.click();
}}"""
