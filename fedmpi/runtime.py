"""Where a rank computes: its device and its share of the node's CPU threads.

Ranks on one node split its cores (threads = usable cores / ranks on the node) and its
GPUs (a rank's GPU follows its node-local rank); a run without GPUs uses the CPU.
"""

from __future__ import annotations

import os

import torch

from fedmpi.comm import Communicator
from fedmpi.config import RuntimeConfig


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(cfg: RuntimeConfig, local_size: int) -> int:
    if cfg.num_threads is not None:
        return cfg.num_threads
    return max(1, usable_cores() // max(1, local_size))


def select_device(cfg: RuntimeConfig, local_rank: int) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("runtime.device=cuda but no CUDA device is visible to this rank")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def configure(cfg: RuntimeConfig, comm: Communicator) -> torch.device:
    """Set this rank's thread count and return its device."""
    torch.set_num_threads(threads_per_rank(cfg, comm.local_size))
    return select_device(cfg, comm.local_rank)
