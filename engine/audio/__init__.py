"""Audio in: files any ffmpeg reads as 16 kHz samples, their energy, speech (VAD) and the
sections a recording is cut into."""

# Hz: what every whisper model hears (whisper.audio.SAMPLE_RATE), here without torch for the numpy modules
SAMPLE_RATE = 16000
