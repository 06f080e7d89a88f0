"""Running named fedmpi jobs for the experiment scripts: one ``python -m fedmpi.launch`` per job, resumable.

A job is a name and its config overrides. Its result file is <output-dir>/<name>.h5 with a .log
beside it; a job whose result file is already complete is skipped, so an interrupted sweep
continues where it stopped. ``--jobs N`` runs N at once with the cores split between them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without an install

from fedmpi.analyze import ResultFileError, load_run  # noqa: E402


@dataclass(frozen=True)
class Job:
    name: str
    overrides: tuple[str, ...]


def is_complete(path: Path) -> bool:
    try:
        return load_run(path).complete
    except ResultFileError:
        return False


def run_job(job: Job, output_dir: Path, *, num_threads: int | None, extra: list[str], counter: str) -> Path | None:
    """Run one job unless its complete result exists; the result path, or None if it failed."""
    path = output_dir / f"{job.name}.h5"
    if is_complete(path):
        print(f"{counter} {job.name}: complete result exists, skipped", flush=True)
        return path
    cmd = [sys.executable, "-m", "fedmpi.launch", *job.overrides, f"output.dir={output_dir}",
           f"output.name={job.name}", "output.overwrite=true"]
    if num_threads:
        cmd.append(f"runtime.num_threads={num_threads}")
    cmd += extra  # last: the caller's overrides win
    start = time.perf_counter()
    with path.with_suffix(".log").open("w") as log:
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    if code != 0 or not is_complete(path):
        print(f"{counter} {job.name}: FAILED (exit {code}); see {path.with_suffix('.log')}", flush=True)
        return None
    print(f"{counter} {job.name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def run_jobs(jobs: list[Job], output_dir: Path, *, parallel: int = 1, extra: list[str] = ()) -> list[Path]:
    """Run ``jobs`` (``parallel`` at a time); the complete result files, in job order."""
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    counters = [f"[{i + 1}/{len(jobs)}]" for i in range(len(jobs))]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        paths = list(pool.map(lambda jc: run_job(jc[0], output_dir, num_threads=threads, extra=list(extra),
                                                 counter=jc[1]), zip(jobs, counters)))
    return [p for p in paths if p is not None]
