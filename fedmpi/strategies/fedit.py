"""FedIT (Zhang et al. 2024): FedAvg of A and of B separately, with the task head.

The product of the means is not the mean of the products: FedIT is inexact by design
(``fedex_lora`` corrects it). With ``weighting: samples`` it is B1 FedAvg over the adapters.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import FedITConfig
from fedmpi.payload import ClientUpdate
from fedmpi.strategies.lora_base import LoraStrategy


class FedIT(LoraStrategy):
    name = "fedit"
    cfg: FedITConfig

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        return self.mean_step(params, updates, server_lr)
