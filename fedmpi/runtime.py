"""Where a rank computes: its device, its share of the node's CPU threads, and how it is measured.

Ranks on one node split its cores (threads = usable cores / ranks on the node) and its
GPUs (``device_index``: contiguous blocks of node-local ranks share a GPU when there are
more ranks than GPUs); a run without GPUs uses the CPU. ``DeviceMeter`` records the device
seconds and peak device memory of a piece of work.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import AbstractContextManager, nullcontext

import torch

from fedmpi.comm import Communicator
from fedmpi.config import RuntimeConfig

# cuBLAS needs a fixed workspace for deterministic results (PyTorch's reproducibility notes).
CUBLAS_WORKSPACE = ":4096:8"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(cfg: RuntimeConfig, local_size: int) -> int:
    if cfg.num_threads is not None:
        return cfg.num_threads
    return max(1, usable_cores() // max(1, local_size))


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


def configure(cfg: RuntimeConfig, comm: Communicator) -> torch.device:
    """Set this rank's threads, determinism and current device; return the device."""
    torch.set_num_threads(threads_per_rank(cfg, comm.local_size))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before any cuBLAS call
        torch.use_deterministic_algorithms(True)
    device = select_device(cfg, comm.local_rank, comm.local_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so stray allocations and kernels land on this rank's GPU
    return device


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The forward's precision: bf16 autocast, or nothing (fp32). Parameters stay float32."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"runtime.precision must be fp32 or bf16, got {precision!r}")


class DeviceMeter:
    """Device seconds and peak device memory of the work between ``start`` and ``stop``.

    On CUDA: CUDA events around the work and ``torch.cuda.max_memory_allocated`` since
    ``start``. On the CPU the device is the host: wall seconds, and NaN peak memory (the
    process's peak RSS never goes down, so a per-client figure cannot be had from it).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start_time = 0.0
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._start_time = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        """(device seconds, peak device bytes or NaN)."""
        if self.device.type == "cuda":
            begin, end = self._events
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1000.0, float(torch.cuda.max_memory_allocated(self.device))
        return time.perf_counter() - self._start_time, math.nan
