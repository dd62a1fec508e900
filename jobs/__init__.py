"""Durable jobs: every accepted recording is a row in a store before it is queued, so nothing is
lost to a restart; the store's folder (data_dir), its disk space and its retention.

Between the front ends and the engine: it submits to `engine.Engine` and the engine never
imports it. The bounded queue that runs jobs (engine/worker.py) stays in the engine, whose
facade hands out its JobHandles: durability is this package's concern, execution the engine's.
"""

from jobs.data_dir import is_disk_full
from jobs.disk import DiskSpace, disk_space, has_room
from jobs.errors import (
    DataDirInUse,
    DataDirUnwritable,
    DiskFull,
    JobInterrupted,
    OutOfDiskSpace,
    StorageError,
    StoreUnavailable,
)
from jobs.manager import JobInfo, JobManager, open_store
from jobs.owners import ANONYMOUS_CALLER, api_owner
from jobs.speaker_names import MAX_SPEAKER_NAME_CHARS, merged_speaker_names, name_speakers
from jobs.store import JobRecord, JobStore, Progress, new_replica_id, open_job_store
