"""Communication layer: pick the implementation, and end a job cleanly when a rank fails.

``create_comm`` chooses MPI when the process was started by an MPI launcher (or when
asked to), else the single-process stand-in. ``collective`` runs one phase of local work
on every rank and agrees on the outcome, so an exception on any rank ends the job on all
of them with the message printed once, instead of leaving the others blocked in the next
collective. The agreement has a deadline (``phase_timeout``): a rank that does not reach it
in time (stopped, stalled on a file system, hung in a device) is named in a
``PhaseTimeout``, and the job is aborted rather than left hanging.
"""

from __future__ import annotations

import os
import traceback
from typing import Callable, TypeVar

from fedmpi.comm.base import Communicator, LocalComm, pickled_size

T = TypeVar("T")

# Environment variables that MPI launchers (MPICH/Hydra, Open MPI, PMIx, Slurm's srun) set.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def launcher_size() -> int:
    """How many processes the launcher says it started (1 if it says nothing)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def alone_in_world_message(comm: Communicator) -> str | None:
    """Why a rank that sees a world of 1 while the launcher started N tasks must stop, or None.

    Under Slurm's default ``MpiDefault=none``, srun gives the tasks no PMI: each one is a
    separate world of one process, they all think they are rank 0 and race for one file.
    """
    expected = launcher_size()
    if comm.size != 1 or expected <= 1:
        return None
    return (
        f"this process is alone in its MPI world, but the launcher started {expected} tasks: srun gave "
        "them no PMI to find each other. Use srun --mpi=pmi2 (python -m fedmpi.submit --mpi pmi2, the default), "
        "or MpiDefault=pmi2 in slurm.conf, or the MPI that mpi4py was built with (srun --mpi=list shows the choices)"
    )


def launcher_rank() -> int:
    """This process's world rank as the launcher announced it, read before MPI is initialised."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


# The first agreements (setup, opening the output, the first round) wait this many times
# ``phase_timeout``: ranks load models and data at their own pace, and first calls compile.
WARMUP_FACTOR = 4.0


def debug_enabled() -> bool:
    """FEDMPI_DEBUG=1 (or ``--debug``): failures carry their full traceback."""
    return os.environ.get("FEDMPI_DEBUG", "") not in ("", "0")


def create_comm(kind: str = "auto", phase_timeout: float | None = None) -> Communicator:
    """``kind``: "auto" (MPI when launched by an MPI launcher), "mpi" or "local".

    ``phase_timeout``: seconds a rank waits at a phase's agreement for the others (None: forever).
    """
    if kind == "local" or (kind == "auto" and not launched_by_mpi()):
        comm: Communicator = LocalComm()
    else:
        from fedmpi.comm.mpi import MPIComm

        comm = MPIComm()
    comm.phase_timeout = phase_timeout
    return comm


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
            separator = "\n" if "\n" in message.strip() else " "
            parts.append(f"{self.phase} failed on {who}:{separator}{message.strip()}")
        return "\n".join(parts)


class PhaseTimeout(RankFailure):
    """Raised on the rank that waited in vain at a phase's agreement; the job must be aborted."""

    def __init__(self, phase: str, missing: list[int], timeout: float, *, waiting_rank: int) -> None:
        self.missing = missing
        self.timeout = timeout
        self.waiting_rank = waiting_rank
        super().__init__(phase, [])

    def describe(self) -> str:
        who = ("rank " if len(self.missing) == 1 else "ranks ") + ",".join(map(str, self.missing))
        return (
            f"{self.phase}: {who} did not reach the phase's agreement within {self.timeout:.0f} s "
            f"(seen from rank {self.waiting_rank}; runtime.phase_timeout); ending the job"
        )


def describe_error(exc: BaseException) -> str:
    """One line for an expected problem (ValueError), the type and message otherwise; the traceback in debug mode."""
    if debug_enabled():
        return traceback.format_exc()
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (FEDMPI_DEBUG=1 shows the traceback)"


def collective(comm: Communicator, phase: str, work: Callable[[], T], *, warmup: bool = False) -> T:
    """Run ``work`` on every rank; if it raised anywhere, raise RankFailure everywhere.

    Raises PhaseTimeout where a rank waited longer than ``comm.phase_timeout`` (times
    WARMUP_FACTOR when ``warmup``) for another to arrive.
    """
    try:
        result, error = work(), None
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        result, error = None, describe_error(exc)
    if comm.phase_timeout is not None:
        timeout = comm.phase_timeout * (WARMUP_FACTOR if warmup else 1.0)
        missing = comm.missing_after(timeout)
        if missing:
            raise PhaseTimeout(phase, missing, timeout, waiting_rank=comm.rank)
    errors = comm.allgather(error)
    failures = [(rank, msg) for rank, msg in enumerate(errors) if msg is not None]
    if failures:
        raise RankFailure(phase, failures)
    return result  # type: ignore[return-value]


__all__ = [
    "Communicator", "LocalComm", "PhaseTimeout", "RankFailure", "collective", "create_comm", "debug_enabled",
    "alone_in_world_message", "describe_error", "launched_by_mpi", "launcher_rank", "launcher_size", "pickled_size",
]
