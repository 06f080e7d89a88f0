"""Federated strategies, one per file, looked up by ``strategy.name`` in ``STRATEGIES``.

Each strategy's config section lives in ``fedmpi.config`` (one member of the
``StrategyConfig`` union); a test checks that the union and this registry name the same
strategies.
"""

from __future__ import annotations

from typing import Any

from fedmpi.models.groups import GroupMap
from fedmpi.strategies.base import ClientContext, Strategy
from fedmpi.strategies.fedavg import FedAvg
from fedmpi.strategies.head_pruning import HeadPruning

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, HeadPruning)}


def build_strategy(cfg: Any, groups: GroupMap) -> Strategy:
    """The strategy named by ``cfg.name``, built from its section and the run's groups."""
    if cfg.name not in STRATEGIES:
        raise ValueError(f"strategy.name: unknown strategy {cfg.name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[cfg.name](cfg, groups)


__all__ = ["STRATEGIES", "ClientContext", "Strategy", "build_strategy"]
