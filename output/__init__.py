"""What a transcript becomes for people: txt, srt, vtt, tsv and json files, and the subtitle layout.

Above the engine and below the front ends: it reads `engine.results` and nothing else of the
engine, and the engine never imports it.
"""

from output.formats import FORMATS, render, safe_basename, write_files
from output.subtitles import SubtitleOptions
