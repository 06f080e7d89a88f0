"""The strategies that move the frozen weights under LoRA (FLoRA, FedEx-LoRA): that state and its travel.

Rank 0 keeps the frozen weights of every LoRA layer as one float32 buffer (``base_weights``
order). After each aggregation it adds the round's update, the round loop broadcasts the
buffer, and every rank writes it into its model, so training and evaluation on every rank
see the same weights; the buffer is part of the checkpoint, so a resumed run restores it
exactly. Each client downloads the update at full size (counted in the paper convention).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedmpi.models.lora_factors import LoraFactors, base_weights, set_base_weights
from fedmpi.strategies.lora_base import LoraStrategy

FROZEN_KEY = "frozen_weights"


class FrozenWeightLora(LoraStrategy):
    moves_frozen_weights = True
    steps_by_delta = False  # part of the round's result goes to the frozen weights, outside the trainable vector
    frozen: np.ndarray

    def setup(self, factors: tuple[LoraFactors, ...], model: Any, *, seed: int, num_clients: int) -> None:
        super().setup(factors, model, seed=seed, num_clients=num_clients)
        self.frozen = base_weights(model, factors)

    def add_to_frozen(self, update: np.ndarray, server_lr: float) -> None:
        self.frozen = (self.frozen + server_lr * update).astype(np.float32)

    def frozen_weights(self) -> np.ndarray:
        return self.frozen

    def set_frozen_weights(self, model: Any, frozen: np.ndarray) -> None:
        set_base_weights(model, self.factors, frozen)

    def download_bytes(self, client: int, adapter_bytes: int) -> int:
        return adapter_bytes + 4 * self.frozen.size

    def state(self) -> dict[str, np.ndarray]:
        return {FROZEN_KEY: self.frozen.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        frozen = np.asarray(state[FROZEN_KEY], dtype=np.float32)
        if frozen.shape != self.frozen.shape:
            raise ValueError(f"output.resume: the checkpoint's frozen weights have {frozen.size} values, the model {self.frozen.size}")
        self.frozen = frozen.copy()
