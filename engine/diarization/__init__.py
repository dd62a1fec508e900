"""Speaker diarization: who spoke when, onto the transcript's words and segments.

    from engine.diarization import DiarizationOptions, KnownSpeaker, diarize
    with engine.models.lease(DEFAULT_SPEAKER_MODEL) as encoder:      # engine.models.speaker_encoder
        result = diarize(audio, result, DiarizationOptions(num_speakers=2), encoder)

Modules, one concern each: options (what a job asks, refused early), speech (regions from
Silero), windows (short overlapping windows over them), embedding (batched on the device,
fitted to its free memory), clustering (speakers, counted or estimated), turns (windows to
who-speaks-when), known (reference clips to names), labels (onto words and segments),
pipeline (all of it for one recording).
"""

from engine.diarization.labels import assign_speakers, speaker_labels
from engine.diarization.options import MAX_SPEAKERS, DiarizationOptions, KnownSpeaker
from engine.diarization.pipeline import Diarization, diarize, find_speakers
from engine.diarization.turns import SpeakerTurn

__all__ = [
    "Diarization",
    "DiarizationOptions",
    "KnownSpeaker",
    "MAX_SPEAKERS",
    "SpeakerTurn",
    "assign_speakers",
    "diarize",
    "find_speakers",
    "speaker_labels",
]
