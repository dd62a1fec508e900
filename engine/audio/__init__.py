"""Audio in: files any ffmpeg reads as 16 kHz samples, their energy, speech (VAD) and the
sections a recording is cut into."""
