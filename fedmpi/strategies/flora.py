"""FLoRA (Wang et al. 2024): stack the clients' factors, merge s sum p_c B_c A_c into the frozen weight, restart.

Stacking [p_1 B_1 ... p_C B_C] [A_1; ...; A_C] is the exact mean of the clients' updates.
It is added to every LoRA layer's frozen weight; then the adapters restart, B = 0 and a
fresh A drawn as peft draws it from the stream (seed, "lora_init", round), the same on
every rank. The task head follows FedAvg.
"""

from __future__ import annotations

import numpy as np

from fedmpi import seeding
from fedmpi.config import FLoraConfig
from fedmpi.payload import ClientUpdate
from fedmpi.strategies import lora_combine
from fedmpi.strategies.frozen_base import FrozenWeightLora


class FLora(FrozenWeightLora):
    name = "flora"
    cfg: FLoraConfig
    _round = 0

    def round_message(self, round_: int, selected: np.ndarray) -> None:
        self._round = round_  # the fresh adapters of this round's aggregation are keyed by it
        return None

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        fresh = lora_combine.lora_init_a(self.factors, seeding.rng(self.seed, seeding.LORA_INIT, self._round))
        combined, update = lora_combine.flora(
            params, self.factors, self.deltas(updates), self.client_weights(updates), fresh, self.head_weights(updates)
        )
        self.add_to_frozen(update, server_lr)
        out = self.eta_step(params, combined, server_lr)
        for f in self.factors:  # the restart is not scaled by eta
            out[f.a], out[f.b] = combined[f.a], 0.0
        return out
