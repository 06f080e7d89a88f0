"""Head pruning: the paper's method (importance pruning + Eq. 8) and baseline B2 (random pruning).

Each client keeps the top (1 - sparsity) share of its heads by confidence (Eq. 7; one
threshold over all of its heads), or a uniformly random share of them (B2); pruned heads'
B slices are not uploaded. The server combines each head over the clients that kept it,
weighted by their importance scores (Eq. 8) or by their sample counts (B2's FedAvg), and
everything no head owns by Eq. 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.aggregation import headwise
from fedmpi.payload import ClientUpdate, densify


def num_kept_heads(num_heads: int, sparsity: float) -> int:
    """Heads a client keeps: round(H * (1 - sparsity)), at least one (144 at 90% -> 14)."""
    return max(1, int(round(num_heads * (1.0 - sparsity))))


def top_heads(scores: np.ndarray, num_kept: int) -> np.ndarray:
    """Mask of the ``num_kept`` highest scores; ties go to the lower head id (stable sort)."""
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[order[:num_kept]] = True
    return mask


@dataclass(frozen=True)
class HeadPruning:
    num_heads_total: int
    sparsity: float = 0.9
    pruning: str = "importance"  # "importance" (Eq. 7) | "random" (B2)
    weighting: str = "importance"  # "importance" (Eq. 8) | "samples"
    mask_timing: str = "post_train"
    eps: float = 1e-8
    name: str = "head_pruning"

    @property
    def needs_importance(self) -> bool:
        return self.pruning == "importance"

    def choose_mask(self, scores: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
        kept = num_kept_heads(self.num_heads_total, self.sparsity)
        if self.pruning == "random":
            mask = np.zeros(self.num_heads_total, dtype=bool)
            mask[rng.choice(self.num_heads_total, size=kept, replace=False)] = True
            return mask
        if scores is None:
            raise ValueError("importance pruning needs the client's head scores")
        return top_heads(scores, kept)

    def aggregate(
        self, global_params: np.ndarray, updates: list[ClientUpdate], head_index: np.ndarray, server_lr: float
    ) -> np.ndarray:
        num_samples = np.array([u.num_samples for u in updates], dtype=np.float64)
        masks = np.stack([u.head_mask for u in updates]).astype(np.float64)
        if self.weighting == "importance":
            head_weights = np.stack([u.scores for u in updates]).astype(np.float64) * masks
        else:
            head_weights = masks * num_samples[:, None]
        deltas = [densify(u, head_index) for u in updates]
        return headwise(global_params, deltas, num_samples, head_weights, head_index, server_lr, self.eps)
