"""FedEx-LoRA (Singhal et al. 2025): FedIT's means, plus the residual that makes the frozen weight exact.

The residual s (sum_c p_c B_c A_c - B_mean A_mean) of every LoRA layer is added to its
frozen weight, so frozen + s B_mean A_mean is exactly the mean of the clients' weights.
The residual is full size: so is the download it costs.
"""

from __future__ import annotations

import numpy as np

from fedmpi.config import FedExLoraConfig
from fedmpi.payload import ClientUpdate
from fedmpi.strategies import lora_combine
from fedmpi.strategies.frozen_base import FrozenWeightLora


class FedExLora(FrozenWeightLora):
    name = "fedex_lora"
    cfg: FedExLoraConfig

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        combined, residual = lora_combine.fedex_lora(
            params, self.factors, self.deltas(updates), self.client_weights(updates), self.head_weights(updates)
        )
        self.add_to_frozen(residual, server_lr)
        return self.eta_step(params, combined, server_lr)
