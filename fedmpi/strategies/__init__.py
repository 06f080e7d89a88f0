"""Federated strategies, one per file, looked up by ``strategy.name`` in ``STRATEGIES``.

Each strategy's config section lives in ``fedmpi.config_strategies`` (one member of the
``StrategyConfig`` union, also importable from ``fedmpi.config``); a test checks that the union and this registry name the same
strategies.
"""

from __future__ import annotations

from typing import Any

from fedmpi.models.groups import GroupMap
from fedmpi.strategies.base import ClientBudget, ClientContext, LocalHooks, RunInfo, Strategy
from fedmpi.strategies.fedara import FedAra
from fedmpi.strategies.fedavg import FedAvg
from fedmpi.strategies.fedex_lora import FedExLora
from fedmpi.strategies.fedit import FedIT
from fedmpi.strategies.fedsa_lora import FedSALora
from fedmpi.strategies.ffa_lora import FFALora
from fedmpi.strategies.flexlora import FlexLora
from fedmpi.strategies.flora import FLora
from fedmpi.strategies.head_pruning import HeadPruning
from fedmpi.strategies.hetlora import HetLora
from fedmpi.strategies.layer_finetuning import LayerFinetuning
from fedmpi.strategies.rolora import RoLora

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, HeadPruning, LayerFinetuning, FedAra, FedIT, FFALora, RoLora, FLora, FedExLora, HetLora, FlexLora, FedSALora)
}


def build_strategy(cfg: Any, groups: GroupMap, run: RunInfo | None = None) -> Strategy:
    """The strategy named by ``cfg.name``, built from its section, the run's groups and shape."""
    if cfg.name not in STRATEGIES:
        raise ValueError(f"strategy.name: unknown strategy {cfg.name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[cfg.name](cfg, groups, run)


__all__ = ["STRATEGIES", "ClientBudget", "ClientContext", "LocalHooks", "RunInfo", "Strategy", "build_strategy"]
