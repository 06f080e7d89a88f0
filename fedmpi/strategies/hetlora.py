"""HetLoRA (Cho et al. 2024): heterogeneous client ranks, zero-padded to the global rank and summed.

Client c's rank r_c comes from the device classes in ``strategy.ranks`` / ``strategy.shares``
(``fedmpi/lora_ranks.py``: seeded, the same on every rank). It trains as peft trains a rank-r_c
adapter with the run's alpha: at scaling s_c = alpha / r_c (its LoRA layers' scaling is set to
that while it trains, ``ClientScaling``), from the global factors' first r_c ranks with B times
r_c / r_max, so that W0 + s_c B A is the global model's first r_c ranks read at s = alpha / r_max
(``client_view``); the other ranks are 0 and do not train (rank groups: row i of A with column i
of B), and it uploads its r_c ranks. The server brings every client's factors back to s
(B times r_max / r_c), zero-pads them to the global rank (``peft.lora.rank``) and takes sum_c p_c
of A and of B (``fedmpi/lora_rules.py``): a rank only large clients hold is shrunk by the small
clients' share, as published, and with one rank for every client HetLoRA is FedIT. The task head
follows FedAvg.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmpi.config import HetLoraConfig
from fedmpi.lora_ranks import client_ranks
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import ADAPTER, LoraFactors, client_scaling, client_view, rank_groups, rank_mask
from fedmpi.payload import ClientUpdate
from fedmpi.strategies import lora_combine
from fedmpi.strategies.base import ClientContext, LocalHooks
from fedmpi.strategies.lora_base import LoraStrategy


class ClientScaling(LocalHooks):
    """While a client of rank r trains, every LoRA layer's peft scaling is alpha / r (restored on exit)."""

    def __init__(self, layers: list[Any], scalings: list[float]) -> None:
        self.layers, self.scalings, self.saved = layers, scalings, []

    def __enter__(self) -> ClientScaling:
        self.saved = [layer.scaling[ADAPTER] for layer in self.layers]
        for layer, s in zip(self.layers, self.scalings):
            layer.scaling[ADAPTER] = s
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, s in zip(self.layers, self.saved):
            layer.scaling[ADAPTER] = s


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
        modules = dict(model.named_modules())
        self.layers = [modules[f.module] for f in factors]

    def client_params(self, ctx: ClientContext, params: np.ndarray) -> np.ndarray:
        return client_view(params, self.factors, int(self.client_rank[ctx.client]))

    def train_mask(self, ctx: ClientContext, score) -> np.ndarray:
        return rank_mask(self.factors, int(self.client_rank[ctx.client]))

    def lora_rank(self, ctx: ClientContext) -> int:
        return int(self.client_rank[ctx.client])

    def local_hooks(self, ctx: ClientContext, trained: np.ndarray | None) -> LocalHooks:
        r = int(self.client_rank[ctx.client])
        return ClientScaling(self.layers, [client_scaling(f, r) for f in self.factors])

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
