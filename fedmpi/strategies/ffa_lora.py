"""FFA-LoRA (Sun et al. 2024): A stays frozen at its random initialisation and is never sent; B is averaged.

With A common to every client, the mean of the B's gives exactly the mean of the products,
at half the upload. A is one group per module that never trains (no gradient, no optimizer
state) and is never uploaded.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import FFALoraConfig
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, factor_groups, factor_mask
from fedmpi.payload import ClientUpdate
from fedmpi.strategies.base import ClientContext
from fedmpi.strategies.lora_base import LoraStrategy


class FFALora(LoraStrategy):
    name = "ffa_lora"
    cfg: FFALoraConfig

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        return factor_groups(factors, numel)

    def factor_train_mask(self, ctx: ClientContext) -> np.ndarray:
        return factor_mask(self.factors, "B")

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        return self.mean_step(params, updates, server_lr)

    def download_bytes(self, client: int, adapter_bytes: int) -> int:
        """A is fixed from the shared seed: a client receives only the B's (and the task head)."""
        return adapter_bytes - 4 * sum(f.rank * f.d_in for f in self.factors)
