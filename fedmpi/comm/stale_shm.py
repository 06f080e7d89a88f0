"""Removing the shared-memory files that MPICH leaves behind when a job step is killed.

MPICH (the PyPI wheel included) backs its intra-node channel with ``/dev/shm/mpich_shm_*``,
named from the job and step ids. Slurm's requeue gives the restarted job the same ids, so a
file left by the killed step is found again, and MPI_Init fails ("Message truncated") or
hangs. Run before the job's MPI step, once per node:
``srun --ntasks-per-node=1 --mpi=none python -m fedmpi.comm.stale_shm``. A file is removed
only if it is this user's and no process maps it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PATTERN = "mpich_shm_*"


def mapped_files(proc: Path = Path("/proc")) -> set[str]:
    """Paths that some process we may inspect has mapped."""
    mapped = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # gone, or another user's
            continue
        mapped.update(line.split(maxsplit=5)[5].removesuffix(" (deleted)") for line in text.splitlines() if line.count(" ") >= 5 and "/" in line)
    return mapped


def remove_stale(folder: Path = Path("/dev/shm")) -> list[Path]:
    """Remove this user's unmapped MPICH shared-memory files in ``folder``; the ones removed."""
    in_use = mapped_files()
    removed = []
    for path in folder.glob(PATTERN):
        try:
            if path.stat().st_uid == os.getuid() and str(path) not in in_use:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


if __name__ == "__main__":
    for path in remove_stale():
        print(f"fedmpi: removed stale MPICH shared memory {path} (left by a killed step of this job)", file=sys.stderr)
