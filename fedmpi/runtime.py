"""Where a rank computes: its device and its share of the node's CPU threads.

A rank's threads follow the launcher's allocation, first match wins:
``runtime.num_threads``; ``SLURM_CPUS_PER_TASK`` (Slurm's --cpus-per-task); ``OMP_NUM_THREADS``;
else the cores this rank may run on (its affinity set) shared with the other ranks of the
node that may run on them too. When srun or mpirun pins each rank to its own cores,
nobody shares them and a rank takes them all; when every rank sees the whole node, the
node's cores are divided by its ranks. A rank's GPU follows its node-local rank; a run
without GPUs uses the CPU.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import torch

from fedmpi.comm import Communicator
from fedmpi.config import RuntimeConfig

THREAD_VARIABLES = ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")  # in precedence order


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return frozenset(range(os.cpu_count() or 1))


def threads_per_rank(
    num_threads: int | None, environ: Mapping[str, str], mine: frozenset[int], node_ranks: list[frozenset[int]]
) -> int:
    """This rank's thread count. ``node_ranks``: the CPU sets of every rank on this node, this one included."""
    if num_threads is not None:
        return num_threads
    for var in THREAD_VARIABLES:
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    sharing = sum(1 for cpus in node_ranks if cpus & mine) or 1
    return max(1, len(mine) // sharing)


def node_cpu_sets(comm: Communicator, mine: frozenset[int]) -> list[frozenset[int]]:
    """The CPU sets of the ranks on this node (found by host name)."""
    host = socket.gethostname()
    return [cpus for other, cpus in comm.allgather((host, mine)) if other == host]


def select_device(cfg: RuntimeConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("runtime.device=cuda but no CUDA device is visible to this rank")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def configure(cfg: RuntimeConfig, comm: Communicator) -> tuple[torch.device, int]:
    """Set this rank's thread count; return its device and that count."""
    mine = usable_cpus()
    threads = threads_per_rank(cfg.num_threads, os.environ, mine, node_cpu_sets(comm, mine))
    torch.set_num_threads(threads)
    return select_device(cfg, comm.local_rank), threads
