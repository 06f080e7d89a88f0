"""RoLoRA (Chen et al. 2024): alternate rounds train and average only B (odd rounds) or only A (even).

The factor not trained is the same on every client, so each round's average is exact.
The server's message says which factor trains; the other one gets no gradient and is
not uploaded. The task head trains and is averaged every round.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import RoLoraConfig
from fedmpi.lora_rules import rolora_factor
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, factor_groups, factor_mask
from fedmpi.payload import ClientUpdate
from fedmpi.strategies.base import ClientContext
from fedmpi.strategies.lora_base import LoraStrategy


class RoLora(LoraStrategy):
    name = "rolora"
    cfg: RoLoraConfig

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        return factor_groups(factors, numel)

    def round_message(self, round_: int, selected: np.ndarray) -> str:
        return rolora_factor(round_)

    def factor_train_mask(self, ctx: ClientContext) -> np.ndarray:
        return factor_mask(self.factors, ctx.message)

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        return self.mean_step(params, updates, server_lr)
