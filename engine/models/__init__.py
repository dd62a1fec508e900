"""Whisper models: the cache that keeps them resident, loading by name, path or CTranslate2
directory, their public ids, int8 quantisation and CPU attention; and the speaker encoders
diarization uses, cached the same way."""
