"""Federated strategies, one per file, looked up by name in ``STRATEGIES``."""

from __future__ import annotations

from typing import Callable

from fedmpi.config import StrategyConfig
from fedmpi.strategies.base import Strategy
from fedmpi.strategies.fedavg import FedAvg
from fedmpi.strategies.head_pruning import HeadPruning

STRATEGIES: dict[str, Callable[[StrategyConfig, int], Strategy]] = {
    "fedavg": lambda cfg, num_heads: FedAvg(),
    "head_pruning": lambda cfg, num_heads: HeadPruning(
        num_heads_total=num_heads,
        sparsity=cfg.sparsity,
        pruning=cfg.pruning,
        weighting=cfg.weighting,
        mask_timing=cfg.mask_timing,
        eps=cfg.eps,
    ),
}


def build_strategy(cfg: StrategyConfig, num_heads_total: int) -> Strategy:
    if cfg.name not in STRATEGIES:
        raise ValueError(f"strategy.name: unknown strategy {cfg.name!r}; known: {sorted(STRATEGIES)}")
    if cfg.name != "fedavg" and num_heads_total == 0:
        raise ValueError(f"strategy.name={cfg.name} needs LoRA adapters that map to attention heads")
    return STRATEGIES[cfg.name](cfg, num_heads_total)


__all__ = ["STRATEGIES", "Strategy", "build_strategy"]
