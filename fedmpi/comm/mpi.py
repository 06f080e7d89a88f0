"""The mpi4py implementation of ``Communicator``; the only module that imports mpi4py.

It works on a private duplicate of COMM_WORLD (mpi4py's advice for libraries), uses the
uppercase buffer collectives (Bcast, Gatherv) for arrays and the pickling ones for small
objects, and finds node-local ranks with a shared-memory split, which works under
mpirun, mpiexec and srun alike. ``missing_after`` is a barrier with a deadline, built from
non-blocking point-to-point messages on a second private communicator, so rank 0 can name
the ranks that never arrived instead of waiting for them forever.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from fedmpi.comm.base import pickled_size


class MPIComm:
    def __init__(self) -> None:
        self._comm = MPI.COMM_WORLD.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self._arrivals = MPI.COMM_WORLD.Dup()  # only the deadline barrier's messages travel here
        self._arrival_count = 0
        self._token = np.zeros(1, np.int8)
        self.bytes_moved = 0
        self.phase_timeout: float | None = None

    def _count_pickle(self, obj: Any, copies: int) -> None:
        self.bytes_moved += copies * pickled_size(obj)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        if self.rank == root:
            self._count_pickle(obj, self.size - 1)
        return self._comm.bcast(obj, root=root)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        gathered = self._comm.gather(obj, root=root)
        if gathered is not None:
            for i, item in enumerate(gathered):
                if i != root:
                    self._count_pickle(item, 1)
        return gathered

    def allgather(self, obj: Any) -> list[Any]:
        return self._comm.allgather(obj)

    def bcast_array(self, array: np.ndarray, root: int = 0) -> None:
        if not array.flags.c_contiguous:
            raise ValueError("bcast_array needs a C-contiguous array")
        self._comm.Bcast(array, root=root)
        if self.rank == root:
            self.bytes_moved += array.nbytes * (self.size - 1)

    def gather_arrays(self, array: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        array = np.ascontiguousarray(array)
        if array.ndim != 1:
            raise ValueError("gather_arrays takes 1-D arrays")
        lengths = self._comm.gather(array.size, root=root)
        if self.rank != root:
            self._comm.Gatherv(array, None, root=root)
            return None
        recv = np.empty(sum(lengths), dtype=array.dtype)
        self._comm.Gatherv(array, (recv, lengths), root=root)
        self.bytes_moved += (sum(lengths) - lengths[root]) * array.itemsize
        bounds = np.cumsum([0, *lengths])
        return [recv[bounds[i] : bounds[i + 1]] for i in range(self.size)]

    def missing_after(self, timeout: float) -> list[int]:
        # Every rank calls this in the same order, so the call count is a tag both sides agree on.
        tag = self._arrival_count % _MAX_TAG
        self._arrival_count += 1
        if self.size == 1:
            return []
        if self.rank == 0:
            buffers = {r: np.empty(1, np.int8) for r in range(1, self.size)}
            pending = {r: self._arrivals.Irecv(buffers[r], source=r, tag=tag) for r in buffers}

            def everyone_arrived() -> bool:
                for r in [r for r, request in pending.items() if request.Test()]:
                    del pending[r]
                return not pending

            _poll(everyone_arrived, timeout)
            if pending:
                return sorted(pending)
            MPI.Request.Waitall([self._arrivals.Isend(self._token, dest=r, tag=tag) for r in buffers])
            return []
        sent = self._arrivals.Isend(self._token, dest=0, tag=tag)
        self._reply = np.empty(1, np.int8)  # kept alive while the receive is pending
        confirmed = self._arrivals.Irecv(self._reply, source=0, tag=tag)
        # Rank 0 waits ``timeout`` for the others and then names them: give it time to do so.
        if not _poll(confirmed.Test, timeout * 1.25 + 5):
            return [0]
        sent.Wait()
        return []

    def abort(self, code: int = 1) -> None:
        MPI.COMM_WORLD.Abort(code)


_MAX_TAG = 32767  # the smallest MPI_TAG_UB the standard allows


def _poll(done: Any, timeout: float) -> bool:
    """Call ``done()`` until it is true or ``timeout`` seconds pass, sleeping a little longer each time.

    The sleeps keep a waiting rank off the CPU (a blocking MPI wait spins at full load) and
    stay short, so a phase that all ranks reach together costs at most a few milliseconds.
    """
    deadline, pause = time.monotonic() + timeout, 1e-4
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
    return True
