"""The mpi4py implementation of ``Communicator``; the only module that imports mpi4py.

It works on a private duplicate of COMM_WORLD (mpi4py's advice for libraries), uses the
uppercase buffer collectives (Bcast, Gatherv) for arrays and the pickling ones for small
objects, and finds node-local ranks with a shared-memory split, which works under
mpirun, mpiexec and srun alike.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
from mpi4py import MPI


class MPIComm:
    def __init__(self) -> None:
        self._comm = MPI.COMM_WORLD.Dup()
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        self.local_size = node.Get_size()
        node.Free()
        self.bytes_moved = 0

    def _count_pickle(self, obj: Any, copies: int) -> None:
        self.bytes_moved += copies * len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

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

    def abort(self, code: int = 1) -> None:
        MPI.COMM_WORLD.Abort(code)
