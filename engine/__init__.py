"""The transcription engine: everything that touches torch, whisper, audio and the GPU.

from engine import Engine, load_settings
engine = Engine(load_settings("config.yaml"))       # loads and warms the model
job = engine.submit("meeting.mp3")                  # queued at once; QueueFull when full
job.status, job.queue_position, job.progress        # live while it runs
result = job.result()                               # TranscriptionResult
engine.release()                                    # GPU memory back, safely
"""

from engine.audio.files import SAMPLE_RATE, check_audio, check_ffmpeg, load_audio
from engine.device import cuda
from engine.device.gpu_monitor import GpuMonitor, GpuReading, GpuSnapshot
from engine.engine import Engine, EngineStatus, ModelState, TranscriptionRequest
from engine.errors import (
    AudioError,
    AudioFileNotFound,
    AudioTooLong,
    AudioTooShort,
    DeviceError,
    EmptyAudio,
    EngineError,
    FfmpegMissing,
    InvalidRequest,
    JobCancelled,
    ModelLoadError,
    ModelNotOffered,
    NotAudio,
    QueueFull,
    SettingsError,
    TruncatedAudio,
    WindowTooLarge,
    WorkerShutDown,
    error_class,
)
from engine.job_options import JobOptions
from engine.languages import LANGUAGES, language_choices, normalise_language
from engine.models.cache import ReleaseReport
from engine.models.names import OPENAI_ALIASES, model_id
from engine.replicas import DeviceStatus
from engine.results import Segment, TranscriptionResult, Word
from engine.settings import Settings, load_settings
from engine.worker import JobHandle, JobStatus, TranscriptionWorker

__all__ = [name for name in dir() if not name.startswith("_")]
