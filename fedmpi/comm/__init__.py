"""Communication layer: pick the implementation, and end a job cleanly when a rank fails.

``create_comm`` chooses MPI when the process was started by an MPI launcher (or when
asked to), else the single-process stand-in. ``collective`` runs one phase of local work
on every rank and agrees on the outcome, so an exception on any rank ends the job on all
of them with the message printed once, instead of leaving the others blocked in the next
collective.
"""

from __future__ import annotations

import os
import traceback
from typing import Callable, TypeVar

from fedmpi.comm.base import Communicator, LocalComm

T = TypeVar("T")

# Environment variables that MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm's srun) set.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def launcher_rank() -> int:
    """This process's world rank as the launcher announced it, read before MPI is initialised."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def create_comm(kind: str = "auto") -> Communicator:
    """``kind``: "auto" (MPI when launched by an MPI launcher), "mpi" or "local"."""
    if kind == "local" or (kind == "auto" and not launched_by_mpi()):
        return LocalComm()
    from fedmpi.comm.mpi import MPIComm

    return MPIComm()


class RankFailure(RuntimeError):
    """Raised on every rank when any rank failed in a collective phase."""

    def __init__(self, phase: str, failures: list[tuple[int, str]]) -> None:
        self.phase = phase
        self.failures = failures
        super().__init__(self.describe())

    def describe(self) -> str:
        by_message: dict[str, list[int]] = {}
        for rank, message in self.failures:
            by_message.setdefault(message, []).append(rank)
        parts = []
        for message, ranks in by_message.items():
            who = "rank " + ",".join(map(str, ranks)) if len(ranks) < 2 else "ranks " + ",".join(map(str, ranks))
            parts.append(f"{self.phase} failed on {who}:\n{message}")
        return "\n".join(parts)


def collective(comm: Communicator, phase: str, work: Callable[[], T], *, debug: bool = False) -> T:
    """Run ``work`` on every rank; if it raised anywhere, raise RankFailure everywhere."""
    try:
        result, error = work(), None
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        result = None
        error = traceback.format_exc() if debug or not isinstance(exc, ValueError) else f"{exc}"
    errors = comm.allgather(error)
    failures = [(rank, msg) for rank, msg in enumerate(errors) if msg is not None]
    if failures:
        raise RankFailure(phase, failures)
    return result  # type: ignore[return-value]


__all__ = ["Communicator", "LocalComm", "RankFailure", "collective", "create_comm", "launched_by_mpi", "launcher_rank"]
