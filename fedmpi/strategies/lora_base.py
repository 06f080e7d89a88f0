"""What the federated-LoRA strategies share: the model's LoRA factors, client weights p_c, the eta step.

Each LoRA strategy is built from its config section and the run's model: it finds every
LoRA module's A and B in the flat vector (``fedmpi/models/lora_factors.py``) and the groups
it masks. p_c is |D_c| / sum |D| (``weighting: samples``) or 1 / C (``uniform``). The
server step is x + eta * (rule(x, updates) - x): at eta = 1 (the default) the global vector
is exactly the rule's result.

With ``strategy.head_pruning`` set, the strategy holds a ``LoraHeadPruning``
(``fedmpi/strategies/lora_pruning.py``): its groups replace ``lora_groups``, the strategy's factor
mask (``factor_train_mask``) is pruned by head, and ``head_weights`` hands the rule each head's
weights over the clients that kept it. Strategies that define their own masks (HetLoRA's ranks,
FedSA-LoRA's upload) do not take the option (the config refuses it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedmpi.lora_rules import client_weights
from fedmpi.models.groups import GroupMap
from fedmpi.models.lora_factors import LoraFactors, lora_factors
from fedmpi.payload import ClientUpdate, densify
from fedmpi.strategies.base import ClientContext, Strategy
from fedmpi.strategies.lora_combine import HeadWeights, mean_delta
from fedmpi.strategies.lora_pruning import LoraHeadPruning


class LoraStrategy(Strategy):
    factors: tuple[LoraFactors, ...] = ()
    pruning: LoraHeadPruning | None = None  # strategy.head_pruning, when set

    @classmethod
    def lora_groups(cls, factors: tuple[LoraFactors, ...], numel: int) -> GroupMap:
        """The groups this strategy masks; default: none (every element trains and is sent)."""
        return GroupMap.empty(numel)

    @classmethod
    def for_run(cls, cfg: Any, bundle: Any, run: Any) -> Strategy:
        factors = lora_factors(bundle.model, bundle.layout)
        options = getattr(cfg, "head_pruning", None)
        pruning = None if options is None else LoraHeadPruning(options, bundle.groups, factors)
        groups = cls.lora_groups(factors, bundle.layout.numel) if pruning is None else pruning.groups
        strategy = cls(cfg, groups, run)
        strategy.pruning = pruning
        strategy.setup(factors, bundle.model, seed=run.seed, num_clients=run.num_clients)
        return strategy

    def setup(self, factors: tuple[LoraFactors, ...], model: Any, *, seed: int, num_clients: int) -> None:
        """Bind the model's factors (and whatever else a strategy needs from the run)."""
        self.factors = factors
        self.seed = seed

    def client_weights(self, updates: list[ClientUpdate]) -> np.ndarray:
        return client_weights(np.array([u.num_samples for u in updates]), uniform=self.cfg.weighting == "uniform")

    def head_weights(self, updates: list[ClientUpdate]) -> HeadWeights | None:
        """Head pruning's per-head weights of this round's clients, or None without pruning."""
        return None if self.pruning is None else self.pruning.head_weights(updates, self.client_weights(updates))

    # ---- client side: the factors that train, pruned by head when strategy.head_pruning is set ----
    def factor_train_mask(self, ctx: ClientContext) -> np.ndarray | None:
        """The factors clients train and send this round, over ``factor_groups`` (None: both)."""
        return None

    def train_mask(self, ctx: ClientContext, score: Callable[[], np.ndarray]) -> np.ndarray | None:
        factors = self.factor_train_mask(ctx)
        return factors if self.pruning is None else self.pruning.train_mask(ctx, factors, score)

    def upload_mask(self, ctx: ClientContext, scores: np.ndarray | None, trained: np.ndarray | None) -> np.ndarray | None:
        return trained if self.pruning is None else self.pruning.upload_mask(ctx, scores, trained)

    def group_scores(self, scores: np.ndarray | None) -> np.ndarray | None:
        return scores if self.pruning is None else self.pruning.group_scores(scores)

    def realised_sparsity(self, ctx: ClientContext, mask: np.ndarray | None) -> float:
        """The share of the heads the client pruned (``strategy.head_pruning``), else 0: an A that stays frozen
        or is not sent, a private B or a client's lower rank is the method, not pruning."""
        return 0.0 if self.pruning is None else self.pruning.realised_sparsity(self.factor_train_mask(ctx), mask)

    @property
    def importance(self) -> str | None:  # type: ignore[override]
        return None if self.pruning is None else self.pruning.importance

    @property
    def needs_confidence(self) -> bool:
        return self.pruning is not None and self.pruning.needs_confidence

    @property
    def importance_exclude(self) -> str:  # type: ignore[override]
        return "eos" if self.pruning is None else self.pruning.options.importance_exclude

    @property
    def skip_first_queries(self) -> int:  # type: ignore[override]
        return 0 if self.pruning is None else self.pruning.options.skip_first_queries

    @property
    def scores_uploaded(self) -> bool:  # type: ignore[override]
        return self.pruning is not None and self.pruning.options.score_on == "uploaded"

    def deltas(self, updates: list[ClientUpdate]) -> list[np.ndarray]:
        return [densify(u, self.groups.group_index) for u in updates]

    @staticmethod
    def eta_step(params: np.ndarray, combined: np.ndarray, server_lr: float) -> np.ndarray:
        """x + eta (combined - x), float32; exactly ``combined`` at eta = 1."""
        if server_lr == 1.0:
            return combined.astype(np.float32)
        return (params + server_lr * (combined.astype(np.float64) - params)).astype(np.float32)

    def mean_step(self, params: np.ndarray, updates: list[ClientUpdate], server_lr: float) -> np.ndarray:
        """x + eta sum_c p_c delta_c: FedAvg of the factors (and the task head); B's rows by head when pruning."""
        combined = mean_delta(self.deltas(updates), self.client_weights(updates), self.head_weights(updates))
        return (params + server_lr * combined).astype(np.float32)
