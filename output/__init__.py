"""What a transcript becomes for people: txt, srt, vtt, tsv, json and rttm files, the subtitle layout,
the speakers' names in them.

Above the engine and below the front ends: it reads `engine.results` and nothing else of the
engine, and the engine never imports it.
"""

from output.formats import ALL_FORMATS, FORMATS, formats_for, render, safe_basename, write_files
from output.speakers import has_speakers, speaker_turns
from output.subtitles import SubtitleOptions
