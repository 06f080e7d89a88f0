"""Where a rank computes: its device and its share of the node's CPU threads.

A rank's threads follow the launcher's allocation, first match wins:
``runtime.num_threads``; ``SLURM_CPUS_PER_TASK`` (Slurm's --cpus-per-task); ``OMP_NUM_THREADS``;
else the cores this rank may run on (its affinity set) shared with the other ranks of the
node that may run on them too. When srun or mpirun pins each rank to its own cores,
nobody shares them and a rank takes them all; when every rank sees the whole node, the
node's cores are divided by its ranks. A rank's GPU follows its node-local rank
(``device_index``: contiguous blocks of node-local ranks share a GPU when there are more
ranks than GPUs) and is made current; a run without GPUs uses the CPU. ``autocast`` is the
forward's precision (``runtime.precision``); ``runtime.deterministic`` asks torch for
deterministic algorithms.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext

import torch

from fedmpi.comm import Communicator
from fedmpi.config import RuntimeConfig

THREAD_VARIABLES = ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")  # in precedence order
# cuBLAS needs a fixed workspace for deterministic results (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


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


def device_index(local_rank: int, local_size: int, num_devices: int) -> int:
    """The GPU of node-local rank ``local_rank`` of ``local_size``: one GPU each while they last,
    else contiguous blocks of ranks per GPU (4 ranks, 2 GPUs -> 0, 0, 1, 1)."""
    if num_devices < 1:
        raise ValueError(f"no device to place rank {local_rank} on (num_devices={num_devices})")
    if not 0 <= local_rank < local_size:
        raise ValueError(f"local rank {local_rank} is not in [0, {local_size})")
    if local_size <= num_devices:
        return local_rank
    return local_rank * num_devices // local_size


def select_device(cfg: RuntimeConfig, local_rank: int, local_size: int = 1) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("runtime.device=cuda but no CUDA device is visible to this rank")
    return torch.device("cuda", device_index(local_rank, local_size, torch.cuda.device_count()))


def configure(cfg: RuntimeConfig, comm: Communicator) -> tuple[torch.device, int]:
    """Set this rank's thread count, determinism and current device; return the device and the count."""
    mine = usable_cpus()
    threads = threads_per_rank(cfg.num_threads, os.environ, mine, node_cpu_sets(comm, mine))
    torch.set_num_threads(threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before any cuBLAS call
        torch.use_deterministic_algorithms(True)
    device = select_device(cfg, comm.local_rank, comm.local_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so stray allocations and kernels land on this rank's GPU
    return device, threads


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The forward's precision: bf16 autocast, or nothing (fp32). Parameters stay float32."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"runtime.precision must be fp32 or bf16, got {precision!r}")
