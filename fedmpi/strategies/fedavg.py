"""Baseline B1: FedAvg over every trainable parameter (paper Eq. 5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.aggregation import fedavg
from fedmpi.payload import ClientUpdate, densify


@dataclass(frozen=True)
class FedAvg:
    name: str = "fedavg"
    needs_importance: bool = False
    mask_timing: str = "post_train"
    sparsity: float = 0.0

    def choose_mask(self, scores: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
        return None

    def aggregate(
        self, global_params: np.ndarray, updates: list[ClientUpdate], head_index: np.ndarray, server_lr: float
    ) -> np.ndarray:
        deltas = [densify(u, head_index) for u in updates]
        return fedavg(global_params, deltas, np.array([u.num_samples for u in updates]), server_lr)
