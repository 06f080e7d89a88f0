"""Head pruning: the paper's method (importance pruning + Eq. 8) and baseline B2 (random pruning).

Each client keeps the top (1 - sparsity) share of its heads by confidence (Eq. 7; one
threshold over all of its heads), or a uniformly random share of them (B2); pruned heads'
slices are not uploaded. With ``mask_timing=pre_train`` the client scores the received
model first and trains only the kept heads; with ``post_train`` (Algorithm 1's order) it
trains everything and chooses from this round's scores. The server combines each head
over the clients that kept it, weighted by their importance scores (Eq. 8) or by their
sample counts (B2's FedAvg), and everything no head owns by Eq. 5.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmpi.aggregation import groupwise
from fedmpi.config import HeadPruningConfig, HeadPruningOptions
from fedmpi.models.groups import GroupMap
from fedmpi.payload import ClientUpdate, densify
from fedmpi.strategies.base import ClientContext, RunInfo, Strategy


def num_kept(num_groups: int, sparsity: float) -> int:
    """Groups a client keeps: round(G * (1 - sparsity)), at least one (144 heads at 90% -> 14)."""
    return max(1, int(round(num_groups * (1.0 - sparsity))))


def top_groups(scores: np.ndarray, kept: int) -> np.ndarray:
    """Mask of the ``kept`` highest scores; ties go to the lower group id (stable sort)."""
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(scores.shape[0], dtype=bool)
    mask[order[:kept]] = True
    return mask


def choose_groups(
    options: HeadPruningOptions, num_groups: int, rng: np.random.Generator, scores: np.ndarray | None
) -> np.ndarray:
    """The groups a client keeps: its top scores (Eq. 7), or a uniformly random share (B2) from ``rng``."""
    kept = num_kept(num_groups, options.sparsity)
    if options.pruning == "random":
        mask = np.zeros(num_groups, dtype=bool)
        mask[rng.choice(num_groups, size=kept, replace=False)] = True
        return mask
    if scores is None:
        raise ValueError("importance pruning needs the client's head scores")
    return top_groups(scores, kept)


class HeadPruning(Strategy):
    name = "head_pruning"
    cfg: HeadPruningConfig

    def __init__(self, cfg: HeadPruningConfig, groups: GroupMap, run: RunInfo | None = None) -> None:
        if groups.num_groups == 0:
            raise ValueError("strategy.name=head_pruning needs trainable parameters that map to attention heads")
        super().__init__(cfg, groups, run)
        self.num_kept = num_kept(groups.num_groups, cfg.sparsity)

    @property
    def importance(self) -> str | None:  # type: ignore[override]
        """Confidence is recorded while training only when the mask is chosen after it."""
        return "confidence" if self.cfg.pruning == "importance" and self.cfg.mask_timing == "post_train" else None

    @property
    def importance_exclude(self) -> str:  # type: ignore[override]
        return self.cfg.importance_exclude

    @property
    def skip_first_queries(self) -> int:  # type: ignore[override]
        return self.cfg.skip_first_queries

    @property
    def scores_uploaded(self) -> bool:  # type: ignore[override]
        return self.cfg.score_on == "uploaded"

    @property
    def removes_untrained(self) -> bool:  # type: ignore[override]
        return self.cfg.pruned_heads == "removed"

    @property
    def needs_confidence(self) -> bool:
        return self.cfg.pruning == "importance"  # while training (post_train) or of the received model (pre_train)

    def _choose(self, ctx: ClientContext, scores: np.ndarray | None) -> np.ndarray:
        return choose_groups(self.cfg, self.groups.num_groups, ctx.rng, scores)

    def train_mask(self, ctx: ClientContext, score: Callable[[], np.ndarray]) -> np.ndarray | None:
        if self.cfg.mask_timing == "post_train":
            return None
        return self._choose(ctx, score() if self.cfg.pruning == "importance" else None)

    def upload_mask(self, ctx: ClientContext, scores: np.ndarray | None, trained: np.ndarray | None) -> np.ndarray | None:
        return trained if self.cfg.mask_timing == "pre_train" else self._choose(ctx, scores)

    def aggregate(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        num_samples = np.array([u.num_samples for u in updates], dtype=np.float64)
        masks = np.stack([u.group_mask for u in updates]).astype(np.float64)
        if self.cfg.weighting == "importance":
            group_weights = np.stack([u.scores for u in updates]).astype(np.float64) * masks
        else:
            group_weights = masks * num_samples[:, None]
        index = self.groups.group_index
        deltas = [densify(u, index) for u in updates]
        return groupwise(params, deltas, num_samples, group_weights, index, server_lr, self.cfg.eps)
