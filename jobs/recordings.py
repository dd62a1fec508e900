"""Where the job manager keeps a job's recording between its submission and its end.

    recordings = Recordings(store, folder, in_store=True)
    path = recordings.receive(audio, "3f2a9c01b7de.flac", move=True)   # the file the probe reads
    recordings.add(record, path)          # the row, and (in_store) the bytes with it; the file goes
    path = recordings.local(record)       # the file the engine reads, on the replica that claimed it
    recordings.forget(record, finished)   # its file here, once nobody needs it

Two places, one choice per deployment:

- **A folder** (`in_store=False`): data_dir/audio for the embedded SQLite store (one server),
  or `shared_audio_dir`, a volume every replica mounts. The row names the file; whichever replica
  claims the job reads it there, and the one that finishes it deletes it.
- **The database** (`in_store=True`, a shared store without `shared_audio_dir`): the bytes go
  into the store with the row, so replicas need nothing in common but the database. The
  claiming replica copies them into its own folder for the engine to read (ffmpeg wants a file)
  and deletes that copy when the job leaves it; the store drops the bytes when the job finishes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jobs.data_dir import PRIVATE_FILE
from jobs.store import JobRecord, JobStore

Audio = str | os.PathLike | bytes  # a path (copied, or moved) or the file's bytes
# Extensions a stored recording may keep (ffmpeg does not need one, but it is a hint for
# formats without a clear header, and a name a person can recognise). Anything else: none.
AUDIO_EXTENSIONS = frozenset(
    ".wav .mp3 .m4a .mp4 .flac .ogg .oga .opus .webm .mpeg .mpga .aac .wma .mkv .mov .avi .aif .aiff "
    ".amr .3gp .caf".split()
)


def stored_extension(name: str) -> str:
    """The extension a stored recording gets: the name's own if whitelisted, else none."""
    suffix = Path(str(name).replace("\\", "/")).suffix.lower()
    return suffix if suffix in AUDIO_EXTENSIONS else ""


class Recordings:
    """The recordings of one job manager's jobs; see the module docstring."""

    def __init__(self, store: JobStore, folder: Path, in_store: bool):
        self.store = store
        self.folder = folder  # the recordings' folder (a shared one, or this process's own copies)
        self.in_store = in_store  # the bytes travel in the database; `folder` holds local copies

    def receive(self, audio: Audio, name: str, move: bool) -> Path:
        """The recording as `folder/name`, readable by this user only (0600): a rename when
        `move` and it lies on the same disk, else a copy (or the bytes written)."""
        destination = self.folder / name
        if move and not isinstance(audio, bytes):
            shutil.move(os.fspath(audio), destination)
            os.chmod(destination, PRIVATE_FILE)
            return destination
        with open(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "wb") as out:
            if isinstance(audio, bytes):
                out.write(audio)
            else:
                with open(audio, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
        return destination

    def add(self, record: JobRecord, path: Path) -> None:
        """Commit the job's row; in the database, its recording with it (and the file goes:
        whichever replica claims the job reads the bytes back)."""
        self.store.add(record, recording=path if self.in_store else None)
        if self.in_store:
            path.unlink(missing_ok=True)

    def local(self, record: JobRecord) -> Path:
        """The file the engine is to read for `record` on this replica: its file in the folder,
        fetched from the database first when it travels there. A recording found nowhere gives
        a path that does not exist, which the engine's probe refuses in the client's terms."""
        path = self.folder / (record.audio or f"{record.id}")
        if self.in_store:
            self.store.read_recording(record.id, path)
        return path

    def forget(self, record: JobRecord, finished: bool = True) -> None:
        """The job left this replica: delete its file here if nobody needs it any more. A local
        copy always goes; the folder's own file only once the job is `finished` (a job another
        replica took over still needs it)."""
        if record.audio and (finished or self.in_store):
            (self.folder / record.audio).unlink(missing_ok=True)
