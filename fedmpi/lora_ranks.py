"""Per-client LoRA ranks for HetLoRA and FlexLoRA, drawn from device classes.

A device class is a LoRA rank and the share of clients that have such a device
(e.g. ranks (2, 4, 8) with shares (0.5, 0.3, 0.2)). Every client's class is one draw from
the stream keyed by (seed, "lora_rank"), made for all clients at once from the seed alone,
so every rank computes the same table and the result does not depend on the rank count.
"""

from __future__ import annotations

import numpy as np

from fedmpi import seeding


def client_ranks(seed: int, num_clients: int, ranks: tuple[int, ...], shares: tuple[float, ...]) -> np.ndarray:
    """int64 per client: its LoRA rank."""
    ranks_arr = np.asarray(ranks, dtype=np.int64)
    shares_arr = np.asarray(shares, dtype=np.float64)
    if ranks_arr.size == 0 or ranks_arr.shape != shares_arr.shape:
        raise ValueError(f"device classes need one share per rank, got ranks {ranks} and shares {shares}")
    if (ranks_arr < 1).any() or (shares_arr < 0).any() or not np.isclose(shares_arr.sum(), 1.0):
        raise ValueError(f"device classes: ranks must be >= 1 and shares >= 0 summing to 1, got {ranks} / {shares}")
    draws = seeding.rng(seed, seeding.LORA_RANK).choice(ranks_arr.size, size=num_clients, p=shares_arr)
    return ranks_arr[draws]
