"""What the federated-LoRA strategies share: the model's LoRA factors, client weights p_c, the eta step.

Each LoRA strategy is built from its config section and the run's model: it finds every
LoRA module's A and B in the flat vector (``fedmpi/models/lora_factors.py``) and the groups
it masks. p_c is |D_c| / sum |D| (``weighting: samples``) or 1 / C (``uniform``). The
server step is x + eta * (rule(x, updates) - x): at eta = 1 (the default) the global vector
is exactly the rule's result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmpi.lora_rules import client_weights
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, lora_factors
from fedmpi.payload import ClientUpdate, densify
from fedmpi.strategies.base import Strategy
from fedmpi.strategies.lora_combine import mean_delta


class LoraStrategy(Strategy):
    factors: tuple[LoraFactors, ...] = ()

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        """The groups this strategy masks; default: none (every element trains and is sent)."""
        return GroupMap.empty(numel)

    @classmethod
    def for_run(cls, cfg: Any, bundle: Any, run: Any) -> Strategy:
        factors = lora_factors(bundle.model, bundle.layout)
        strategy = cls(cfg, cls.lora_groups(factors, bundle.layout.numel), run)
        strategy.setup(factors, bundle.model, seed=run.seed, num_clients=run.num_clients)
        return strategy

    def setup(self, factors: tuple[LoraFactors, ...], model: Any, *, seed: int, num_clients: int) -> None:
        """Bind the model's factors (and whatever else a strategy needs from the run)."""
        self.factors = factors
        self.seed = seed

    def client_weights(self, updates: list[ClientUpdate]) -> np.ndarray:
        return client_weights(np.array([u.num_samples for u in updates]), uniform=self.cfg.weighting == "uniform")

    def deltas(self, updates: list[ClientUpdate]) -> list[np.ndarray]:
        return [densify(u, self.groups.group_index) for u in updates]

    @staticmethod
    def eta_step(params: np.ndarray, combined: np.ndarray, server_lr: float) -> np.ndarray:
        """x + eta (combined - x), float32; exactly ``combined`` at eta = 1."""
        if server_lr == 1.0:
            return combined.astype(np.float32)
        return (params + server_lr * (combined.astype(np.float64) - params)).astype(np.float32)

    def mean_step(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        """x + eta sum_c p_c delta_c: FedAvg of the factors (and the task head)."""
        return (params + server_lr * mean_delta(self.deltas(updates), self.client_weights(updates))).astype(np.float32)
