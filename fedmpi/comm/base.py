"""The communication interface every role talks through, and its single-process stand-in.

The round loop only ever sees a ``Communicator``: small Python objects move with the
lowercase calls (pickled), large numeric arrays with the ``*_array`` calls (raw buffers).
``LocalComm`` implements it for one process, so the same loop runs in a unit test and
under mpirun. Every implementation counts the bytes that really crossed process
boundaries in ``bytes_moved``.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, runtime_checkable

import numpy as np


def pickled_size(obj: Any) -> int:
    """Bytes one rank receives when ``obj`` is broadcast by the pickling ``bcast`` (``bytes_moved`` per copy)."""
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


@runtime_checkable
class Communicator(Protocol):
    rank: int
    size: int
    local_rank: int  # rank among the processes of this node (picks the GPU)
    local_size: int  # processes on this node (divides the cores)
    bytes_moved: int
    phase_timeout: float | None  # seconds a rank waits at a phase's agreement (None: forever)

    def bcast(self, obj: Any, root: int = 0) -> Any: ...
    def gather(self, obj: Any, root: int = 0) -> list[Any] | None: ...
    def allgather(self, obj: Any) -> list[Any]: ...
    def bcast_array(self, array: np.ndarray, root: int = 0) -> None:
        """Overwrite ``array`` on every rank with root's; shape and dtype agree everywhere."""

    def gather_arrays(self, array: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Gather one 1-D array per rank (lengths may differ); root gets them in rank order."""

    def missing_after(self, timeout: float) -> list[int]:
        """Wait until every rank has called this, at most ``timeout`` seconds; the ranks that did not.

        Rank 0 names every rank it did not hear from; another rank names rank 0 when rank 0
        did not confirm in time. An empty list: all ranks are here.
        """

    def abort(self, code: int = 1) -> None: ...


class LocalComm:
    """One process plays every rank: collectives are identities and move no bytes."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def __init__(self) -> None:
        self.bytes_moved = 0
        self.phase_timeout: float | None = None

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def bcast_array(self, array: np.ndarray, root: int = 0) -> None:
        return None

    def gather_arrays(self, array: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        return [np.ascontiguousarray(array)]

    def missing_after(self, timeout: float) -> list[int]:
        return []

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)
