"""The per-rank role: train this rank's share of a round's clients, evaluate its share of batches.

One model instance per rank; clients train one after another, each starting from the
global vector. The strategy's client hooks decide, from the client's context and the
server's message for the round, which groups train and which are uploaded; the trainer
records the importance the strategy asks for.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from collections.abc import Callable
from typing import Any

from fedmpi import seeding
from fedmpi.client import LocalTrainer
from fedmpi.data import Partition, TokenizedSplit
from fedmpi.evaluation import evaluate_batches
from fedmpi.payload import ClientUpdate, make_update, realised_sparsity
from fedmpi.models.groups import GroupMap
from fedmpi.strategies import ClientContext, Strategy


def assign_clients(selected: np.ndarray, worker_ranks: list[int]) -> dict[int, list[int]]:
    """Deal the round's clients (ascending ids) round-robin over the ranks that train."""
    plan: dict[int, list[int]] = {r: [] for r in worker_ranks}
    for i, client in enumerate(selected.tolist()):
        plan[worker_ranks[i % len(worker_ranks)]].append(client)
    return plan


class UploadSizer:
    """The paper's communication figure: fp32 bytes of the adapter parameters a client sends."""

    def __init__(self, groups: GroupMap, task_head: np.ndarray) -> None:
        index = groups.group_index
        self.dense = int(((index < 0) & ~task_head).sum())
        self.per_group = groups.group_sizes()
        # What a client downloads in the same convention: every adapter element of the global model.
        self.download = 4 * int((~task_head).sum())

    def __call__(self, group_mask: np.ndarray | None) -> int:
        kept = self.per_group.sum() if group_mask is None else self.per_group[group_mask].sum()
        return 4 * (self.dense + int(kept))


class Worker:
    def __init__(
        self,
        trainer: LocalTrainer,
        strategy: Strategy,
        partition: Partition,
        eval_split: TokenizedSplit,
        *,
        rank: int,
        seed: int,
        ops_per_sample: Callable[[float], float],
        num_epochs: int,
    ) -> None:
        self.trainer = trainer
        self.strategy = strategy
        self.partition = partition
        self.eval_split = eval_split
        self.rank = rank
        self.seed = seed
        self.ops_per_sample = ops_per_sample  # the paper's analytic OPs of one sequence, given the sparsity
        self.num_epochs = num_epochs
        self.groups = strategy.groups
        self.upload_size = UploadSizer(self.groups, trainer.bundle.layout.element_task_head_mask())

    def train_client(self, client: int, params: np.ndarray, round_: int, message: Any = None) -> ClientUpdate:
        indices = self.partition.client_indices(client)
        strategy, trainer = self.strategy, self.trainer
        ctx = ClientContext(client, round_, int(indices.size), seeding.rng(self.seed, seeding.PRUNE, round_, client), message)
        measured: dict[str, np.ndarray] = {}
        params = strategy.client_params(ctx, params)

        def score() -> np.ndarray:  # the received model's importance, for masks chosen before training
            measured["scores"] = trainer.measure_importance(indices, params)
            return measured["scores"]

        trained = strategy.train_mask(ctx, score)
        recorded = strategy.importance == "confidence"
        result = trainer.train(
            indices, params, round_, client, trained_groups=trained, remove_untrained=strategy.removes_untrained,
            record_importance=recorded and not strategy.scores_uploaded, score_uploaded=recorded and strategy.scores_uploaded,
            hooks=strategy.local_hooks(ctx, trained),
        )  # fmt: skip
        scores = result.scores if result.scores is not None else measured.get("scores")
        mask = strategy.upload_mask(ctx, scores, trained)
        return make_update(
            result.delta,
            self.groups.group_index,
            mask,
            scores,
            client=client,
            rank=self.rank,
            num_samples=int(indices.size),
            train_loss=result.train_loss,
            seconds=result.seconds,
            ops=self.ops_per_sample(realised_sparsity(mask)) * indices.size * self.num_epochs,
            paper_bytes=strategy.upload_bytes(self.upload_size, mask),
            peak_memory_bytes=result.usage.peak_memory_bytes,
            saved_activation_bytes=result.usage.saved_activation_bytes,
            **dataclasses.asdict(strategy.client_budget(ctx)),
        )

    def train_clients(self, clients: list[int], params: np.ndarray, round_: int, message: Any = None) -> list[ClientUpdate]:
        return [self.train_client(c, params, round_, message) for c in clients]

    def evaluate(self, bounds: list[tuple[int, int]], params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        bundle = self.trainer.bundle
        bundle.layout.set_flat(bundle.model, torch.from_numpy(params))
        return evaluate_batches(
            bundle.model,
            self.eval_split,
            bounds,
            pad_token_id=bundle.pad_token_id,
            device=self.trainer.device,
            tokenizer=bundle.tokenizer,
        )
