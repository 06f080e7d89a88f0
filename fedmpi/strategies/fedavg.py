"""Baseline B1: FedAvg over every trainable parameter (paper Eq. 5)."""

from __future__ import annotations

import numpy as np

from fedmpi.aggregation import fedavg
from fedmpi.config import FedAvgConfig
from fedmpi.payload import ClientUpdate, densify
from fedmpi.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"
    cfg: FedAvgConfig

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        deltas = [densify(u, self.groups.group_index) for u in updates]
        return fedavg(params, deltas, np.array([u.num_samples for u in updates]), server_lr)
