"""The skeleton every federated strategy shares.

A strategy decides three things: whether clients must measure head importance, which
heads a client keeps (its upload mask), and how the server combines the updates. The
round loop calls only these; adding a strategy is one file and one registry line.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedmpi.payload import ClientUpdate


class Strategy(Protocol):
    name: str
    needs_importance: bool  # clients measure head confidence (Eq. 6)
    mask_timing: str  # "post_train" (Algorithm 1) or "pre_train" (mask before training)
    sparsity: float  # share of heads pruned; 0 for dense strategies

    def choose_mask(self, scores: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
        """A client's kept heads (bool per global head), or None to send everything."""
        ...

    def aggregate(
        self, global_params: np.ndarray, updates: list[ClientUpdate], head_index: np.ndarray, server_lr: float
    ) -> np.ndarray:
        """The next global trainable vector from updates given in client id order."""
        ...
