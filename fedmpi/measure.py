"""Measured cost of one client-round: wall seconds, peak memory, and the activations autograd keeps.

Three figures, each chosen for what it can and cannot see:

- **seconds**: ``time.perf_counter`` around the local training (CUDA synchronised at both ends).
- **device seconds** (CUDA only, NaN on the CPU): CUDA events recorded on the current stream
  at both ends, the GPU's own time for the window's work.
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
  (exact tensor bytes). CPU torch keeps no allocator statistics, and ``resource.getrusage``'s
  peak RSS only ever grows over a process, so on CPU a thread samples the process's resident
  memory (``/proc/self/statm``, every ``interval_s``) and reports the peak seen inside the
  window. RSS includes the allocator's retained free memory: a later client-round in the same
  process can reuse pages an earlier one grew, so compare RSS peaks across fresh processes
  (as ``benchmarks/layer_finetuning.py`` does), not across client-rounds of one process.
- **saved-activation bytes**: the bytes of the non-parameter tensors autograd saves for
  backward during one forward (``torch.autograd.graph.saved_tensors_hooks``, unique storages),
  the largest over the window's forwards. Exact on any device, and exactly what layer
  finetuning's no-grad prefix and FedARA's module pruning should shrink.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Usage:
    seconds: float
    peak_memory_bytes: float  # CUDA: max allocated; CPU: peak RSS inside the window (see the module doc)
    memory_source: str  # "cuda_max_allocated" | "cpu_peak_rss"
    start_memory_bytes: float  # the same figure when the window opened (CUDA: allocated; CPU: RSS)
    saved_activation_bytes: int  # largest bytes autograd kept for backward over one forward
    device_seconds: float = math.nan  # CUDA-event seconds of the window (NaN on the CPU)


def resident_bytes() -> int:
    """The process's resident memory now (Linux ``/proc/self/statm``; 0 where it is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return 0


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = resident_bytes()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.peak = max(self.peak, resident_bytes())

    def finish(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, resident_bytes())


class ClientRoundMeter:
    """``with ClientRoundMeter(model, device) as meter: train(...)``; then ``meter.usage``."""

    def __init__(
        self, model: nn.Module, device: torch.device, interval_s: float = 0.001, extra_parameters: tuple = ()
    ) -> None:
        self.model = model
        self.extra_parameters = extra_parameters  # trained tensors outside the model (batched.py's stacks): not activations
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.usage: Usage | None = None

    # -- saved activations: one forward = from one top-level forward call to the next
    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._param_storages and key not in self._step_storages:
            self._step_storages.add(key)
            self._step_bytes += storage.nbytes()
        return tensor

    def _new_forward(self, *_args) -> None:
        self._max_saved = max(self._max_saved, self._step_bytes)
        self._step_storages, self._step_bytes = set(), 0

    def __enter__(self) -> ClientRoundMeter:
        params = [*self.model.parameters(), *self.extra_parameters]
        self._param_storages = {p.untyped_storage().data_ptr() for p in params}
        self._step_storages, self._step_bytes, self._max_saved = set(), 0, 0
        self._hook = self.model.register_forward_pre_hook(self._new_forward)
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._saved.__enter__()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._sampler = None
            self._start_memory = float(torch.cuda.memory_allocated(self.device))
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        else:
            self._sampler = _RssSampler(self.interval_s)
            self._start_memory = float(self._sampler.peak)
            self._sampler.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        device_seconds = math.nan
        if self.device.type == "cuda":
            self._events[1].record()
            torch.cuda.synchronize(self.device)
            device_seconds = self._events[0].elapsed_time(self._events[1]) / 1000.0
        seconds = time.perf_counter() - self._start
        self._saved.__exit__(*exc)
        self._hook.remove()
        self._new_forward()
        if self._sampler is None:
            peak, source = float(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated"
        else:
            peak, source = float(self._sampler.finish()), "cpu_peak_rss"
        self.usage = Usage(seconds, peak, source, self._start_memory, self._max_saved, device_seconds)
