"""Errors that more than one layer of the engine raises, kept where every layer may import them.

So far: JobCancelled, raised by the decode loop when a job's cancel flag is seen and by the
worker for a job cancelled while it waited. The rest of the engine's errors still live beside
the code that raises them (audio.errors, models.cache, device.cuda, engine.engine, worker).
"""


class JobCancelled(RuntimeError):
    """The job was cancelled before it finished."""
