"""HetLoRA (Cho et al. 2024): heterogeneous client ranks, zero-padded to the global rank and summed.

Client c's rank r_c comes from the device classes in ``strategy.ranks`` / ``strategy.shares``
(``fedmpi/lora_ranks.py``: seeded, the same on every rank). It receives the global factors'
first r_c ranks, the others set to 0 (``client_params``), trains only those (rank groups:
row i of A with column i of B) and uploads them. The server zero-pads every client to the
global rank (``peft.lora.rank``) and takes sum_c p_c of A and of B (``fedmpi/lora_rules.py``):
a rank only large clients hold is shrunk by the small clients' share, as published.
The task head follows FedAvg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmpi.config import HetLoraConfig
from fedmpi.lora_ranks import client_ranks
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, rank_groups, rank_mask, truncated_view
from fedmpi.payload import ClientUpdate
from fedmpi.strategies import lora_combine
from fedmpi.strategies.base import ClientContext
from fedmpi.strategies.lora_base import LoraStrategy


class RankedLora(LoraStrategy):
    """Per-client ranks: the client view, rank masks, download; subclasses define the server rule."""

    client_rank: np.ndarray

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        return rank_groups(factors, numel)

    def setup(self, factors: tuple[LoraFactors, ...], model: Any, *, seed: int, num_clients: int) -> None:
        super().setup(factors, model, seed=seed, num_clients=num_clients)
        global_rank = min(f.rank for f in factors)
        if max(self.cfg.ranks) > global_rank:
            raise ValueError(f"strategy.ranks: the largest client rank {max(self.cfg.ranks)} exceeds peft.lora.rank {global_rank}")
        self.client_rank = client_ranks(seed, num_clients, self.cfg.ranks, self.cfg.shares)

    def client_params(self, ctx: ClientContext, params: np.ndarray) -> np.ndarray:
        return truncated_view(params, self.factors, int(self.client_rank[ctx.client]))

    def train_mask(self, ctx: ClientContext, score) -> np.ndarray:
        return rank_mask(self.factors, int(self.client_rank[ctx.client]))

    def download_bytes(self, client: int, adapter_bytes: int) -> int:
        """Only the first r_c ranks of every module travel to client c."""
        r = int(self.client_rank[client])
        return adapter_bytes - 4 * sum((f.rank - r) * (f.d_in + f.d_out) for f in self.factors)

    def ranks_of(self, updates: list[ClientUpdate]) -> np.ndarray:
        return self.client_rank[[u.client for u in updates]]


class HetLora(RankedLora):
    name = "hetlora"
    cfg: HetLoraConfig

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        combined = lora_combine.hetlora(params, self.factors, self.deltas(updates), self.client_weights(updates), self.ranks_of(updates))
        return self.eta_step(params, combined, server_lr)
